"""Compare two benchmark runs: pair outputs, measure, judge, draw, and join the speed/quality trade-off.

Results land in a ``comparisons`` row and a folder under the workspace runs dir: ``comparison.json`` (every
pair), ``pair-NNN.png`` (baseline | candidate | amplified difference, or a frame strip for video),
``contact-sheet.png`` (captioned tiles, worst pairs first) and ``worst.png`` (the worst pair, scaled for viewing).
Pairs are measured in worker processes when there is enough work to pay for starting them.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from omnitune.tools.compare.pairing import load_run, pair
from omnitune.tools.compare.report import TradeOff, figures, headline, trade_off
from omnitune.tools.compare.verdict import ORDER, Thresholds, Verdict, broken, judge, rank, worst
from omnitune.tools.errors import InvalidRequestError
from omnitune.tools.pictures import PictureLink, comparison_links
from omnitune.tools.store import now
from omnitune.tools.workspace import Workspace, new_id

log = logging.getLogger(__name__)
TILE_WIDTH, SHEET_TILES, PREVIEW_WIDTH = 748, 12, 1536
PARALLEL_PIXELS = 4 * 512 * 512  # below this much decoding (pairs x pixels x frames) one process is faster


class PairResult(BaseModel):
    index: int = Field(description="Position in comparison.json and in the pair-NNN.png name.")
    prompt: str
    seed: int
    size: str
    n_index: int
    kind: str
    psnr_db: float | None = Field(description="dB over RGB; None when identical (infinite). Videos: worst frame.")
    ssim: float = Field(description="Luma SSIM (0-1); videos: worst frame.")
    ms_ssim: float | None = Field(None, description="Multi-scale SSIM (smaller side >= 176 px); videos: worst frame.")
    mae: float | None = Field(None, description="Mean absolute pixel difference (0-255); videos: mean over frames.")
    psnr_db_mean: float | None = Field(None, description="Videos: mean PSNR over frames that differ.")
    ssim_mean: float | None = Field(None, description="Videos: mean SSIM over frames.")
    frames: int | None = None
    worst_frame: int | None = Field(None, description="Videos: index of the lowest-SSIM frame.")
    frame_psnr_db: list[float | None] | None = Field(None, description="Videos: PSNR per frame (None = identical).")
    frame_ssim: list[float] | None = None
    temporal_diff: float | None = Field(None, description="Videos: mean |frame-to-frame change of baseline - of "
                                                          "candidate| in pixel values (0 = same motion).")
    motion_ratio: float | None = Field(None, description="Videos: candidate's frame-to-frame change / baseline's "
                                                          "(1 = same; > 1 flicker; < 1 frozen).")
    verdict: Verdict
    broken: bool = Field(False, description="PSNR below thresholds.broken_psnr_db (vLLM-Omni's 20 dB smoke test).")
    picture: str | None = Field(None, description="Side-by-side PNG: baseline | candidate | difference x amplify.")
    baseline_path: str
    candidate_path: str


class Comparison(BaseModel):
    id: str
    baseline_run: str
    candidate_run: str
    verdict: Verdict = Field(description="The worst pair's verdict.")
    summary: str = Field(description="One line: verdict, pair counts, speed-up, memory change, worst pair.")
    pairs: int
    counts: dict[str, int] = Field(description="Pairs per verdict.")
    broken_pairs: int = 0
    psnr_db_min: float | None = Field(None, description="Worst pair's PSNR (dB); None when every pair is identical.")
    psnr_db_mean: float | None = Field(None, description="Mean PSNR over pairs that differ (dB).")
    ssim_min: float
    ssim_mean: float
    ms_ssim_min: float | None = None
    worst: PairResult
    trade_off: TradeOff
    thresholds: Thresholds
    across_steps: bool = False
    folder: str = Field(description="Folder with comparison.json and the pictures.")
    contact_sheet: str | None = Field(description="Captioned grid of the worst pairs (PNG); None: judged without "
                                      "pictures (a tune's screening: compare_outputs on its runs draws them).")
    worst_picture: str | None = Field(None, description="The worst pair's side-by-side scaled for viewing (PNG).")
    elapsed_s: float
    pictures: list[PictureLink] = Field(default_factory=list, description=(
        "Look at them: show_picture(picture, id[, pair]) or read the uri (image/png). The contact sheet, the "
        "worst pair, then the worst pairs one by one (any pictured pair: picture='pair', pair=index)."))
    next_step: str = Field("", description="What to do with this verdict.")
    pair_results: list[PairResult] = Field(description="Every pair (also in comparison.json).")


def _run_jobs(jobs: list, workers: int | None) -> list[tuple[dict, Any]]:
    from omnitune.tools.compare.measure import measure_pair, quiet_stdout
    pixels = sum((j.base.width or 512) * (j.base.height or 512) * (j.base.frames or 1) for j in jobs)
    if workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(len(jobs), cores) if pixels >= PARALLEL_PIXELS else 1
    if workers <= 1:
        return [measure_pair(j) for j in jobs]
    # spawn, not fork: the MCP server has threads (anyio, job workers) that a fork would copy mid-lock.
    # A spawned worker re-imports the caller's __main__; a script without a main guard breaks the pool, and
    # then the pairs are measured here, slower but the same.
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=quiet_stdout) as pool:
            return list(pool.map(measure_pair, jobs))
    except (BrokenProcessPool, OSError) as exc:
        log.warning("measuring in this process: worker processes failed (%s)", exc)
        return [measure_pair(j) for j in jobs]


def _caption(r: PairResult) -> str:
    psnr = "identical" if r.psnr_db is None else f"PSNR {r.psnr_db:.1f} dB"
    frame = f" (frame {r.worst_frame})" if r.worst_frame is not None and r.kind == "video" else ""
    return f"#{r.index} {r.verdict}: {psnr}, SSIM {r.ssim:.3f}{frame} | seed {r.seed} {r.size} | {r.prompt[:48]}"


def _next_step(verdict: Verdict, cmp_id: str) -> str:
    look = f"show_picture(picture='contact_sheet', id='{cmp_id}') shows the pairs, worst first."
    if verdict in ("identical", "lossless-equivalent"):
        return f"the candidate keeps the baseline's pixels (lossless): keep it if trade_off shows a gain. {look}"
    if verdict == "acceptable":
        return f"visible but small differences: keep it only if lossy changes are allowed; look first. {look}"
    return f"quality lost: drop this candidate (or a gentler setting of it). {look}"


def compare_runs(workspace: Workspace, baseline_run: str, candidate_run: str, thresholds: Thresholds | None = None,
                 across_steps: bool = False, amplify: float = 8.0, max_pictures: int | None = None,
                 allow_differences: list[str] | None = None, workers: int | None = None,
                 draw: bool = True) -> Comparison:
    """Pair, measure and judge two runs; draw the pictures; save and return the comparison.

    ``max_pictures`` caps the full-size side-by-side PNGs written (None: one per pair); ``workers`` the
    measuring processes (None: the CPU count when the work is large enough, else in this process); ``draw=False``
    judges without drawing anything (the PNG encoding is most of a comparison's CPU; a tune only needs verdicts).
    """
    from omnitune.tools.compare import pictures
    from omnitune.tools.compare.measure import PairJob

    started = time.perf_counter()
    t = thresholds or Thresholds.model_validate({})
    if baseline_run == candidate_run:
        raise InvalidRequestError(f"run {baseline_run} compared with itself says nothing.",
                                  "compare a candidate configuration's run with the baseline's run.")
    base, cand = load_run(workspace.store, baseline_run), load_run(workspace.store, candidate_run)
    pairs = pair(base, cand, across_steps, allow_differences)
    cmp_id = new_id("cmp")
    folder = workspace.new_run_dir(cmp_id)
    jobs = [PairJob(i, a, b, amplify, folder / f"pair-{i:03d}.png" if draw and (max_pictures is None or
                                                                               i < max_pictures) else None,
                    TILE_WIDTH if draw else None) for i, (a, b) in enumerate(pairs)]
    done = _run_jobs(jobs, workers)
    errors = [f"pair {j.index} ({j.base.path.name}): {r['error']}" for j, (r, _) in zip(jobs, done) if "error" in r]
    if errors:
        more = f" and {len(errors) - 3} more" if len(errors) > 3 else ""
        raise InvalidRequestError(f"runs {baseline_run} and {candidate_run} cannot be compared: "
                                  f"{'; '.join(errors[:3])}{more}.",
                                  "check that both servers returned the requested size and frame count (see "
                                  "outputs/ in each run folder), then benchmark again with the same workload.")
    results = []
    for j, (r, _) in zip(jobs, done):
        raw = r.get("psnr_db_raw", math.inf)
        results.append(PairResult(
            index=j.index, prompt=j.base.prompt, seed=j.base.seed, size=j.base.size, n_index=j.base.n_index,
            kind=j.base.kind, verdict=judge(raw, r["ssim"], r["identical"], t), broken=broken(raw, t),
            picture=str(j.picture) if j.picture else None, baseline_path=str(j.base.path),
            candidate_path=str(j.cand.path), ssim=r["ssim"],
            **{k: r.get(k) for k in ("psnr_db", "ms_ssim", "mae", "psnr_db_mean", "ssim_mean", "frames",
                                     "worst_frame", "frame_psnr_db", "frame_ssim", "temporal_diff", "motion_ratio")}))
    order = sorted(range(len(results)), key=lambda i: (-rank(results[i].verdict), results[i].psnr_db or math.inf,
                                                       results[i].ssim))
    w = results[order[0]]
    sheet = preview = None
    if draw:
        tiles = [pictures.captioned(done[i][1], _caption(results[i]), results[i].verdict)
                 for i in order[:SHEET_TILES]]
        sheet = folder / "contact-sheet.png"
        rows = "rows: baseline / candidate / difference; " if w.kind == "video" else ""
        legend = (f"baseline | candidate | difference x{amplify:g} ({rows}worst pairs first; {len(tiles)} of "
                  f"{len(results)})")
        sheet.write_bytes(pictures.png(pictures.captioned(pictures.contact_sheet(tiles), legend), compress_level=3))
    if draw and w.verdict != "identical" and w.picture:
        from omnitune.tools.compare.metrics import load_image
        preview = folder / "worst.png"
        img = pictures.thumbnail(load_image(Path(w.picture)), PREVIEW_WIDTH)
        preview.write_bytes(pictures.png(pictures.captioned(img, _caption(w), w.verdict), compress_level=3))
    verdict = worst([r.verdict for r in results])
    counts = {v: sum(r.verdict == v for r in results) for v in ORDER}
    psnrs = [r.psnr_db for r in results if r.psnr_db is not None]
    multi = [r.ms_ssim for r in results if r.ms_ssim is not None]
    trade = trade_off(figures(baseline_run, base.summary, base.data), figures(candidate_run, cand.summary, cand.data),
                      verdict)
    comparison = Comparison(
        id=cmp_id, baseline_run=baseline_run, candidate_run=candidate_run, verdict=verdict,
        summary=headline(verdict, len(results), counts, trade, w.psnr_db, w.ssim), pairs=len(results), counts=counts,
        broken_pairs=sum(r.broken for r in results), psnr_db_min=min(psnrs) if psnrs else None,
        psnr_db_mean=sum(psnrs) / len(psnrs) if psnrs else None, ssim_min=min(r.ssim for r in results),
        ssim_mean=sum(r.ssim for r in results) / len(results), ms_ssim_min=min(multi) if multi else None, worst=w,
        trade_off=trade, thresholds=t, across_steps=across_steps, folder=str(folder),
        contact_sheet=str(sheet) if sheet else None, worst_picture=str(preview) if preview else None,
        elapsed_s=time.perf_counter() - started,
        pictures=comparison_links(cmp_id, [i for i in order[:SHEET_TILES] if results[i].picture]) if draw else [],
        next_step=_next_step(verdict, cmp_id), pair_results=results)
    (folder / "comparison.json").write_text(comparison.model_dump_json(indent=1))
    workspace.store.insert("comparisons", {
        "id": cmp_id, "created_at": now(), "baseline_run": baseline_run, "candidate_run": candidate_run,
        "verdict": verdict, "summary": comparison.model_dump(mode="json", exclude={"pair_results"}),
        "dir": str(folder)})
    log.info("comparison %s: %s (%.2f s)", cmp_id, comparison.summary, comparison.elapsed_s)
    return comparison
