"""Measure one pair in a worker: decode both outputs once, compute every metric, write its picture.

Kept apart from ``compare.py`` so that a spawned worker process imports only numpy, Pillow, PyAV and
scikit-image (scipy.ndimage holds the GIL, so SSIM at 1024x1024 only scales across processes, not threads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnitune.tools.compare import metrics as m
from omnitune.tools.compare import pictures
from omnitune.tools.compare.pairing import Output


@dataclass(frozen=True)
class PairJob:
    index: int
    base: Output
    cand: Output
    amplify: float
    picture: Path | None    # where to write the full-size side-by-side (None: not drawn)
    tile_width: int | None  # width of the contact-sheet tile returned (None: metrics only, no tile)


def quiet_stdout() -> None:
    """Worker initializer: fd 1 is the MCP stdio channel in the parent, so a worker's stray output goes to stderr."""
    import os
    import sys
    sys.stdout.flush()
    os.dup2(2, 1)


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def measure_pair(job: PairJob) -> tuple[dict, np.ndarray | None]:
    """(metrics, contact-sheet tile) of one pair; metrics hold ``error`` when the pair cannot be compared."""
    drawn = job.picture is not None or job.tile_width is not None
    try:
        if job.base.kind == "video":
            fa, fb = m.load_video(job.base.path), m.load_video(job.cand.path)
            if not fa or not fb or len(fa) != len(fb) or fa[0].shape != fb[0].shape:
                return {"error": f"videos differ in shape: {len(fa)} frames of {fa[0].shape if fa else None} vs "
                                 f"{len(fb)} of {fb[0].shape if fb else None}"}, None
            r = m.video_metrics(fa, fb)
            tile = pictures.frame_strip(fa, fb, job.amplify, include=r["worst_frame"]) if drawn else None
        else:
            a, b = m.load_image(job.base.path), m.load_image(job.cand.path)
            if a.shape != b.shape:
                return {"error": f"pictures differ in shape: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}"
                        }, None
            r = m.image_metrics(a, b)
            tile = pictures.side_by_side(a, b, job.amplify) if drawn else None
    except (OSError, ValueError) as exc:  # unreadable or undecodable file (PIL and PyAV raise these)
        return {"error": f"could not decode {job.base.path.name} / {job.cand.path.name}: {exc}"}, None
    if job.picture is not None and tile is not None:
        job.picture.write_bytes(pictures.png(tile))
    for k in ("psnr_db", "psnr_db_mean"):
        if k in r:
            r[f"{k}_raw"] = r[k]
            r[k] = _finite(r[k])
    if "frame_psnr_db" in r:
        r["frame_psnr_db"] = [_finite(v) for v in r["frame_psnr_db"]]
    if tile is None or job.tile_width is None:
        return r, None
    return r, pictures.resize_to_width(tile, job.tile_width) if tile.shape[1] > job.tile_width else tile
