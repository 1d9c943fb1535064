"""The speed/quality trade-off of two benchmark runs, read from their ``runs.summary`` (RunSummary names in
``tools/benchmark/summary.py``), and the one-line text an agent reads first.

Summary keys are read defensively (a failed or older run may lack any of them): a missing figure is None,
never an exception. Peak memory is NVML's highest used MiB over the run's GPUs while measured requests ran
(summed over GPUs too, since a parallel configuration spreads the model); without NVML it falls back to the
server-reported ``peak_memory_mb``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class RunFigures(BaseModel):
    run_id: str
    config: dict[str, Any] | None = Field(None, description="The server configuration the run measured.")
    p50_s: float | None = Field(None, description="Median end-to-end latency of measured requests, seconds.")
    p90_s: float | None = None
    inference_p50_s: float | None = Field(None, description="Server-reported inference time, median, seconds.")
    throughput: float | None = Field(None, description="Images/s (image runs) or seconds of video per second.")
    throughput_unit: str | None = None
    peak_memory_mib: float | None = Field(None, description="Highest per-GPU used MiB while measured.")
    total_peak_memory_mib: float | None = Field(None, description="Sum over the run's GPUs of their peak used MiB.")
    memory_source: str | None = Field(None, description="nvml or server (server-reported peak_memory_mb).")
    gpus: int | None = None
    requests_ok: int | None = None
    requests_failed: int | None = None


class TradeOff(BaseModel):
    baseline: RunFigures
    candidate: RunFigures
    speedup_p50: float | None = Field(None, description="baseline p50 / candidate p50 (> 1: candidate faster).")
    speedup_inference_p50: float | None = Field(None, description="Same with the server-reported inference time.")
    throughput_ratio: float | None = Field(None, description="candidate / baseline throughput (> 1: more output/s).")
    memory_change_mib: float | None = Field(None, description="candidate - baseline peak per-GPU MiB (< 0: less).")
    total_memory_change_mib: float | None = Field(None, description="Same, summed over each run's GPUs.")
    verdict: str = Field(description="The quality verdict of the candidate against the baseline.")
    # flat copies kept for older readers
    baseline_p50_s: float | None = None
    candidate_p50_s: float | None = None
    baseline_peak_memory_mib: float | None = None
    candidate_peak_memory_mib: float | None = None


def _get(d: Any, *path: str) -> Any:
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


def figures(run_id: str, summary: dict, data: dict | None = None) -> RunFigures:
    gpus = [g for g in (_get(summary, "gpus", "gpus") or []) if isinstance(g, dict)]
    peaks = [float(g["memory_peak_mib"]) for g in gpus if isinstance(g.get("memory_peak_mib"), (int, float))]
    server_peak = _get(summary, "server", "peak_memory_mb_max")
    images = summary.get("throughput_images_per_s")
    video = summary.get("throughput_video_s_per_s")
    return RunFigures(
        run_id=run_id, config=_get(data or {}, "config"), p50_s=_get(summary, "latency", "p50_s"),
        p90_s=_get(summary, "latency", "p90_s"), inference_p50_s=_get(summary, "server", "inference_time_s", "p50_s"),
        throughput=images if images is not None else video,
        throughput_unit="images/s" if images is not None else ("video s/s" if video is not None else None),
        peak_memory_mib=max(peaks) if peaks else server_peak, total_peak_memory_mib=sum(peaks) if peaks else None,
        memory_source="nvml" if peaks else ("server" if server_peak is not None else None),
        gpus=len(gpus) or None, requests_ok=summary.get("requests_ok"), requests_failed=summary.get("requests_failed"))


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num and den else None


def _minus(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def trade_off(base: RunFigures, cand: RunFigures, verdict: str) -> TradeOff:
    same_source = base.memory_source == cand.memory_source
    return TradeOff(
        baseline=base, candidate=cand, speedup_p50=_ratio(base.p50_s, cand.p50_s),
        speedup_inference_p50=_ratio(base.inference_p50_s, cand.inference_p50_s),
        throughput_ratio=_ratio(cand.throughput, base.throughput),
        memory_change_mib=_minus(cand.peak_memory_mib, base.peak_memory_mib) if same_source else None,
        total_memory_change_mib=_minus(cand.total_peak_memory_mib, base.total_peak_memory_mib), verdict=verdict,
        baseline_p50_s=base.p50_s, candidate_p50_s=cand.p50_s, baseline_peak_memory_mib=base.peak_memory_mib,
        candidate_peak_memory_mib=cand.peak_memory_mib)


def headline(verdict: str, pairs: int, counts: dict[str, int], t: TradeOff, worst_psnr: float | None,
             worst_ssim: float) -> str:
    """One line: the verdict, the pair counts, the speed-up and the memory change."""
    speed = f"{t.speedup_p50:.2f}x faster at p50" if t.speedup_p50 else "speed-up unknown (no p50 in a summary)"
    if t.throughput_ratio:
        speed += f", throughput x{t.throughput_ratio:.2f}"
    memory = (f", peak memory {t.memory_change_mib:+.0f} MiB per GPU" if t.memory_change_mib is not None else "")
    spread = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    psnr = "inf" if worst_psnr is None else f"{worst_psnr:.2f}"
    return (f"verdict {verdict} over {pairs} pairs ({spread}); {speed}{memory}; worst pair PSNR {psnr} dB, "
            f"SSIM {worst_ssim:.4f}.")
