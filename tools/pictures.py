"""Pictures an agent can be shown: a typed selector, its ``omnitune://pictures/...`` URI, and the PNG bytes.

Claude Code hands the model only a tool's structured content, so pictures cannot ride beside it: structured
results carry :class:`PictureLink` s, and the picture itself comes from the ``show_picture`` tool (image content
only, no output schema) or from the same URI read as an ``image/png`` resource. Both go through :func:`load`.

Every picture is found from the workspace database (a comparison's folder, a tune's folder, a run's outputs),
never from a path the agent gives, and is scaled down to a size a model can look at.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from omnitune.tools.errors import InvalidRequestError, NotFoundError
from omnitune.tools.workspace import Workspace, inside

PictureKind = Literal["contact_sheet", "worst_pair", "pair", "pareto", "run_grid"]
URI_PREFIX = "omnitune://pictures/"
URI_TEMPLATE = URI_PREFIX + "{id}/{picture}"
MAX_SIDE = 1568  # Claude's vision input: larger pictures are scaled down anyway (and cost more tokens)
MAX_BYTES = 3_500_000  # under the 5 MB an image block may take once base64-encoded
GRID_TILES, GRID_TILE = 16, 384
TITLES = {"contact_sheet": "contact sheet: baseline | candidate | difference, worst pairs first",
          "worst_pair": "the worst pair at viewing size", "pair": "one pair: baseline | candidate | difference",
          "pareto": "Pareto plot: p50 latency against quality", "run_grid": "the run's outputs as a grid"}


class PictureLink(BaseModel):
    """Where a picture is: pass ``picture``, ``id`` (and ``pair``) to show_picture, or read ``uri``."""

    picture: PictureKind
    id: str = Field(description="The comparison id, tune job id or benchmark run id the picture belongs to.")
    pair: int | None = Field(None, description="For picture='pair': the pair index (PairResult.index).")
    uri: str = Field(description="The same picture as an MCP resource (image/png).")
    title: str


def link(picture: PictureKind, id: str, pair: int | None = None) -> PictureLink:
    name = f"pair-{pair}" if picture == "pair" else picture
    return PictureLink(picture=picture, id=id, pair=pair, uri=f"{URI_PREFIX}{id}/{name}",
                       title=TITLES[picture] + (f" #{pair}" if pair is not None else ""))


def parse_name(name: str) -> tuple[PictureKind, int | None]:
    """The URI's last segment: contact_sheet, worst_pair, pareto, run_grid or pair-N."""
    if m := re.fullmatch(r"pair-(\d{1,6})", name):
        return "pair", int(m.group(1))
    if name in ("contact_sheet", "worst_pair", "pareto", "run_grid"):
        return name, None  # type: ignore[return-value]
    raise InvalidRequestError(f"no picture named {name!r}.",
                              "use contact_sheet, worst_pair, pair-N, pareto or run_grid (links come in results).")


def comparison_links(comparison_id: str, pictured: list[int]) -> list[PictureLink]:
    """The contact sheet, the worst pair, then each pair that has a picture."""
    return [link("contact_sheet", comparison_id), link("worst_pair", comparison_id),
            *(link("pair", comparison_id, i) for i in pictured)]


def job_links(job_id: str, kind: str, result: dict | None) -> list[PictureLink]:
    """A finished job's pictures: a tune's Pareto plot, a benchmark's outputs."""
    if not result:
        return []
    if kind == "tune" and result.get("pareto_png"):
        return [link("pareto", job_id)]
    if kind == "benchmark" and result.get("run_id") and (result.get("summary") or {}).get("outputs_saved"):
        return [link("run_grid", result["run_id"])]
    return []


def _comparison_dir(ws: Workspace, comparison_id: str) -> Path:
    row = ws.store.query_one("SELECT dir FROM comparisons WHERE id = ?", (comparison_id,))
    if row is None:
        raise NotFoundError(f"no comparison {comparison_id!r}.", "use the `id` compare_outputs returned.")
    return inside(ws.runs_dir, Path(row["dir"]))


def _drawn(ws: Workspace, comparison_id: str) -> Path:
    """The comparison's folder, if its pictures were drawn (a tune's screening judges without them)."""
    folder = _comparison_dir(ws, comparison_id)
    saved = folder / "comparison.json"
    done = json.loads(saved.read_text()) if saved.is_file() and not (folder / "contact-sheet.png").is_file() else {}
    if done and done.get("contact_sheet") is None:
        raise NotFoundError(f"comparison {comparison_id} was judged without pictures (a tune's screening).",
                            f"compare_outputs(baseline_run={done['baseline_run']!r}, candidate_run="
                            f"{done['candidate_run']!r}) compares the same runs and draws them.")
    return folder


def _file(ws: Workspace, picture: PictureKind, id: str, pair: int | None) -> Path:
    if picture == "contact_sheet":
        return _drawn(ws, id) / "contact-sheet.png"
    if picture in ("worst_pair", "pair"):
        folder = _drawn(ws, id)
        if picture == "worst_pair":
            if (folder / "worst.png").is_file():
                return folder / "worst.png"  # written only when the worst pair differs
            pair = json.loads((folder / "comparison.json").read_text())["worst"]["index"]
        if pair is None:
            raise InvalidRequestError("picture='pair' needs pair=<index>.",
                                      "pass one of the comparison's pair indices.")
        path = folder / f"pair-{pair:03d}.png"
        if not path.is_file():
            raise NotFoundError(f"comparison {id} has no picture of pair {pair}.",
                                "use a pair index from its `pictures` links (pictures may be capped).")
        return path
    if picture == "pareto":
        row = ws.store.query_one("SELECT kind, status FROM jobs WHERE id = ?", (id,))
        if row is None or row["kind"] != "tune":
            raise NotFoundError(f"no tune job {id!r}.", "use the id tune_start returned.")
        path = inside(ws.runs_dir, ws.runs_dir / id / "pareto.png")
        if not path.is_file():
            raise NotFoundError(f"tune {id} has no Pareto plot yet (it is {row['status']}).",
                                "the plot is drawn when the tune ends: job_wait, then show it.")
        return path
    return _run_grid(ws, id)


def _run_grid(ws: Workspace, run_id: str) -> Path:
    """The run's distinct measured outputs, captioned, in a grid (a video shows its middle frame); cached."""
    from omnitune.tools.compare import pictures
    from omnitune.tools.compare.metrics import load_image, load_video
    from omnitune.tools.compare.pairing import load_run
    run = load_run(ws.store, run_id)
    row = ws.store.query_one("SELECT status FROM runs WHERE id = ?", (run_id,))
    path = inside(ws.runs_dir, run.run_dir / "outputs-grid.png")
    if path.is_file() and row is not None and row["status"] != "running":
        return path
    tiles = []
    for (prompt, seed, size, n), out in list(run.outputs.items())[:GRID_TILES]:
        if out.kind == "video":
            frames = load_video(out.path)
            img, extra = frames[len(frames) // 2], f" frame {len(frames) // 2}/{len(frames)}"
        else:
            img, extra = load_image(out.path), ""
        caption = f"seed {seed} {size}{f' #{n}' if n else ''}{extra} | {prompt[:40]}"
        tiles.append(pictures.captioned(pictures.thumbnail(img, GRID_TILE), caption))
    legend = f"run {run_id}: {len(tiles)} of {len(run.outputs)} distinct outputs"
    sheet = pictures.captioned(pictures.contact_sheet(tiles, columns=4, width=4 * GRID_TILE + 12), legend)
    path.write_bytes(pictures.png(sheet, compress_level=3))
    return path


def viewable(data: bytes, max_side: int = MAX_SIDE) -> bytes:
    """PNG bytes no larger than ``max_side`` on either side and MAX_BYTES in all (scaled down, never up)."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as img:
        side = max(img.size)
        if side <= max_side and len(data) <= MAX_BYTES:
            return data
        scale = min(1.0, max_side / side)
        while True:
            small = img.convert("RGB").resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                              Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            small.save(buf, format="PNG", optimize=True)
            if buf.tell() <= MAX_BYTES or scale < 0.1:
                return buf.getvalue()
            scale *= 0.7


def load(ws: Workspace, picture: PictureKind, id: str, pair: int | None = None, max_side: int = MAX_SIDE) -> bytes:
    """The picture's PNG bytes at viewing size; a clear error when it does not exist."""
    path = _file(ws, picture, id, pair)
    if not path.is_file():
        raise NotFoundError(f"the {picture} picture of {id} is missing ({path.name}).",
                            "compare or benchmark again; its folder may have been cleaned up.")
    return viewable(path.read_bytes(), max_side)
