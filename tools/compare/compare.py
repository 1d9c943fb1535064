"""Compare two benchmark runs: pair outputs, measure, judge, draw, and join the speed/quality trade-off.

Verdicts (thresholds are parameters; defaults from vLLM-Omni's own tests and quantization tool):
identical (same pixels) > lossless-equivalent (PSNR >= 40 dB) > acceptable (PSNR >= 30 dB and SSIM >= 0.90)
> degraded. A run's verdict is its worst pair's.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tools.compare import metrics as m
from tools.compare import pictures
from tools.compare.pairing import Output, load_run, pair
from tools.store import now
from tools.workspace import Workspace, new_id

Verdict = Literal["identical", "lossless-equivalent", "acceptable", "degraded"]
ORDER = ["identical", "lossless-equivalent", "acceptable", "degraded"]


class Thresholds(BaseModel):
    lossless_psnr_db: float = Field(40.0, description="PSNR at or above which a pair counts as lossless-equivalent.")
    acceptable_psnr_db: float = Field(30.0, description="Minimum PSNR for 'acceptable'.")
    acceptable_ssim: float = Field(0.90, ge=0, le=1, description="Minimum SSIM for 'acceptable'.")


class PairResult(BaseModel):
    prompt: str
    seed: int
    size: str
    n_index: int
    kind: str
    psnr_db: float | None = Field(description="dB; None for identical (infinite). Videos: worst frame.")
    ssim: float = Field(description="Luma SSIM; videos: worst frame.")
    ms_ssim: float | None = None
    psnr_db_mean: float | None = Field(None, description="Videos: mean over frames.")
    ssim_mean: float | None = None
    temporal_diff: float | None = Field(None, description="Videos: mean |Δframe baseline - Δframe candidate| (0-255).")
    verdict: Verdict
    picture: str | None = Field(None, description="Side-by-side PNG (baseline | candidate | difference x amplify).")


class TradeOff(BaseModel):
    baseline_p50_s: float | None = None
    candidate_p50_s: float | None = None
    speedup_p50: float | None = Field(None, description="baseline p50 / candidate p50 (> 1 = candidate faster).")
    throughput_ratio: float | None = None
    baseline_peak_memory_mib: float | None = None
    candidate_peak_memory_mib: float | None = None
    memory_change_mib: float | None = None


class Comparison(BaseModel):
    id: str
    baseline_run: str
    candidate_run: str
    verdict: Verdict
    pairs: int
    counts: dict[str, int] = Field(description="Pairs per verdict.")
    psnr_db_min: float | None = None
    psnr_db_mean: float | None = None
    ssim_min: float
    ssim_mean: float
    worst: PairResult
    trade_off: TradeOff
    thresholds: Thresholds
    folder: str = Field(description="Folder with the pictures and comparison.json.")
    contact_sheet: str
    pair_results: list[PairResult] = Field(description="Every pair (also in comparison.json).")


def judge(psnr_db: float, ssim: float, identical: bool, t: Thresholds) -> Verdict:
    if identical:
        return "identical"
    if psnr_db >= t.lossless_psnr_db:
        return "lossless-equivalent"
    if psnr_db >= t.acceptable_psnr_db and ssim >= t.acceptable_ssim:
        return "acceptable"
    return "degraded"


def _measure(base: Output, cand: Output, t: Thresholds, folder: Path, index: int, amplify: float,
             draw: bool) -> tuple[PairResult, object]:
    if base.kind == "video":
        fa, fb = m.load_video(base.path), m.load_video(cand.path)
        r = m.video_metrics(fa, fb)
        tile = pictures.frame_strip(fa, fb, amplify) if len(fa) == len(fb) and fa else None
    else:
        a, b = m.load_image(base.path), m.load_image(cand.path)
        r = m.image_metrics(a, b)
        tile = pictures.side_by_side(a, b, amplify)
    pic = None
    if draw and tile is not None:
        pic = folder / f"pair-{index:03d}.png"
        pic.write_bytes(pictures.png(tile))
    verdict = judge(r["psnr_db"], r["ssim"], r["identical"], t)
    finite = lambda v: None if v is None or not math.isfinite(v) else v  # noqa: E731
    return PairResult(prompt=base.prompt, seed=base.seed, size=base.size, n_index=base.n_index, kind=base.kind,
                      psnr_db=finite(r["psnr_db"]), ssim=r["ssim"], ms_ssim=r.get("ms_ssim"),
                      psnr_db_mean=finite(r.get("psnr_db_mean")), ssim_mean=r.get("ssim_mean"),
                      temporal_diff=r.get("temporal_diff"), verdict=verdict,
                      picture=str(pic) if pic else None), (pictures.thumbnail(tile, 900) if tile is not None else None)


def _p50(summary: dict) -> float | None:
    lat = summary.get("latency") or {}
    return lat.get("p50_s")


def _throughput(summary: dict) -> float | None:
    return summary.get("throughput_images_per_s") or summary.get("throughput_video_s_per_s")


def _peak(summary: dict) -> float | None:
    gpus = (summary.get("gpus") or {}).get("gpus") or []
    peaks = [g.get("memory_peak_mib") for g in gpus if g.get("memory_peak_mib") is not None]
    return max(peaks) if peaks else (summary.get("server") or {}).get("peak_memory_mb_max")


def trade_off(base: dict, cand: dict) -> TradeOff:
    bp, cp = _p50(base), _p50(cand)
    bt, ct = _throughput(base), _throughput(cand)
    bm, cm = _peak(base), _peak(cand)
    return TradeOff(baseline_p50_s=bp, candidate_p50_s=cp, speedup_p50=bp / cp if bp and cp else None,
                    throughput_ratio=ct / bt if bt and ct else None, baseline_peak_memory_mib=bm,
                    candidate_peak_memory_mib=cm, memory_change_mib=cm - bm if bm is not None and cm is not None
                    else None)


def compare_runs(workspace: Workspace, baseline_run: str, candidate_run: str, thresholds: Thresholds | None = None,
                 across_steps: bool = False, amplify: float = 8.0, max_pictures: int = 8) -> Comparison:
    t = thresholds or Thresholds()
    base, cand = load_run(workspace.store, baseline_run), load_run(workspace.store, candidate_run)
    pairs = pair(base, cand, across_steps)
    cmp_id = new_id("cmp")
    folder = workspace.new_run_dir(cmp_id)
    workers = min(len(pairs), os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(lambda ip: _measure(*ip[1], t, folder, ip[0], amplify, ip[0] < max_pictures),
                             enumerate(pairs)))
    results = [r for r, _ in done]
    worst = max(results, key=lambda r: (ORDER.index(r.verdict), -(r.psnr_db or math.inf), -r.ssim))
    verdict = worst.verdict
    # the contact sheet: the worst pairs first, so the agent looks at what matters
    ranked = sorted(range(len(results)), key=lambda i: (-ORDER.index(results[i].verdict),
                                                        results[i].psnr_db or math.inf))
    tiles = [done[i][1] for i in ranked[:4] if done[i][1] is not None]
    sheet = folder / "contact-sheet.png"
    sheet.write_bytes(pictures.png(pictures.contact_sheet(tiles)))
    psnrs = [r.psnr_db for r in results if r.psnr_db is not None]
    comparison = Comparison(
        id=cmp_id, baseline_run=baseline_run, candidate_run=candidate_run, verdict=verdict, pairs=len(results),
        counts={v: sum(r.verdict == v for r in results) for v in ORDER},
        psnr_db_min=min(psnrs) if psnrs else None, psnr_db_mean=sum(psnrs) / len(psnrs) if psnrs else None,
        ssim_min=min(r.ssim for r in results), ssim_mean=sum(r.ssim for r in results) / len(results), worst=worst,
        trade_off=trade_off(base.summary, cand.summary), thresholds=t, folder=str(folder), contact_sheet=str(sheet),
        pair_results=results)
    (folder / "comparison.json").write_text(comparison.model_dump_json(indent=1))
    summary = comparison.model_dump(mode="json", exclude={"pair_results"})
    workspace.store.insert("comparisons", {"id": cmp_id, "created_at": now(), "baseline_run": baseline_run,
                                           "candidate_run": candidate_run, "verdict": verdict, "summary": summary,
                                           "dir": str(folder)})
    return comparison
