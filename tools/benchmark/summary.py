"""``RunSummary``: the stable names the compare and tune engineers read from ``runs.summary``.

Rename nothing here without changing its readers: add fields instead. All times are seconds, memory
MiB (server-reported ``peak_memory_mb`` keeps the server's MB). Latency figures cover successful
measured requests only; failed ones are counted under ``failures`` and kept row by row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from omnitune.tools.benchmark.client import Outcome
from omnitune.tools.benchmark.stats import LatencyStats, latency_stats, mean
from omnitune.tools.benchmark.telemetry import TelemetrySummary
from omnitune.tools.benchmark.workload import RequestSpec

RunStatus = Literal["running", "completed", "failed", "cancelled"]


class ServerReported(BaseModel):
    """What the server said about its own work (``metrics`` of images, the job or X- headers of videos)."""

    inference_time_s: LatencyStats | None = Field(default=None,
                                                  description="Server inference time over measured requests.")
    peak_memory_mb_max: float | None = None
    peak_memory_mb_mean: float | None = None
    stage_durations_mean_s: dict[str, float] = Field(default_factory=dict, description="Mean per stage name.")
    requests_with_metrics: int = 0


class RepeatSummary(BaseModel):
    repeat: int
    requests_ok: int
    requests_failed: int
    wall_s: float = Field(description="First measured send to last measured completion.")
    latency: LatencyStats | None = None
    throughput_requests_per_s: float | None = None


class VideoTiming(BaseModel):
    """Client-side split of video latency: completion seen (poll or sync) and content download."""

    detected_s: LatencyStats | None = None
    download_s_mean: float | None = None
    polls_mean: float | None = None


class FailureSummary(BaseModel):
    count: int = Field(default=0, description="Failed requests, warm-up and measured.")
    measured: int = 0
    warmup: int = 0
    by_kind: dict[str, int] = Field(default_factory=dict, description="http_500, timeout, connection, undecodable...")
    examples: list[dict[str, Any]] = Field(default_factory=list, description="Up to 20: idx, phase, kind, error.")


class RunSummary(BaseModel):
    run_id: str
    status: RunStatus
    task: str
    base_url: str
    server_id: str | None = None
    model: str | None = None
    config_key: str | None = None
    requests_measured: int = Field(0, description="Measured requests sent (ok + failed).")
    requests_ok: int = 0
    requests_failed: int = 0
    latency: LatencyStats | None = Field(None, description="End-to-end latency of successful measured requests.")
    cold_latency_s: float | None = Field(None, description="The run's first successful request (compiles, fills "
                                                           "caches); never part of `latency` unless warmup=0.")
    cold_latency_by_size_s: dict[str, float] = Field(default_factory=dict,
                                                     description="First successful request per size.")
    warmup_latencies_s: list[float] = Field(default_factory=list)
    measured_wall_s: float = Field(0.0, description="Sum over repeats of first send to last completion.")
    throughput_requests_per_s: float | None = None
    throughput_images_per_s: float | None = Field(None, description="Images (n per request) per second.")
    throughput_video_s_per_s: float | None = Field(None, description="Seconds of video produced per second.")
    repeats: list[RepeatSummary] = Field(default_factory=list)
    server: ServerReported = Field(default_factory=ServerReported)
    video: VideoTiming | None = None
    gpus: TelemetrySummary | None = None
    failures: FailureSummary = Field(default_factory=FailureSummary)
    outputs_saved: int = 0
    aborted_reason: str | None = Field(None, description="Why the run ended early (failure policy, dead server).")
    warnings: list[str] = Field(default_factory=list)


@dataclass
class Record:
    """One request as the runner saw it (also written to the ``requests`` table)."""

    idx: int
    phase: str
    repeat: int
    spec: RequestSpec
    outcome: Outcome
    sent: float   # perf_counter at send
    done: float   # perf_counter at completion
    extra: dict[str, Any] = field(default_factory=dict)


def _video_seconds(rec: Record) -> float:
    frames = rec.outcome.media[0].get("frames") if rec.outcome.media else None
    fps = rec.spec.params.get("fps") or 16.0
    return float(frames or rec.spec.params.get("num_frames") or 0) / float(fps)


def _latencies(records: list[Record]) -> list[float]:
    """The latencies the records have (a successful request always has one)."""
    return [r.outcome.latency_s for r in records if r.outcome.latency_s is not None]


def summarize(base: dict[str, Any], records: list[Record], telemetry: TelemetrySummary | None, status: RunStatus,
              is_video: bool, aborted: str | None, warnings: list[str], outputs_saved: int) -> RunSummary:
    measured = [r for r in records if r.phase == "measured"]
    ok = [r for r in measured if r.outcome.ok]
    failed = [r for r in records if not r.outcome.ok]
    s = RunSummary(status=status, **base, requests_measured=len(measured), requests_ok=len(ok),
                   requests_failed=len([r for r in measured if not r.outcome.ok]),
                   latency=latency_stats(_latencies(ok)), gpus=telemetry, aborted_reason=aborted,
                   warnings=warnings, outputs_saved=outputs_saved)
    firsts = [r for r in records if r.outcome.ok]
    if firsts:
        s.cold_latency_s = firsts[0].outcome.latency_s
    for r in firsts:
        if r.outcome.latency_s is not None:
            s.cold_latency_by_size_s.setdefault(r.spec.size, r.outcome.latency_s)
    s.warmup_latencies_s = [r.outcome.latency_s for r in records if r.phase == "warmup" and r.outcome.latency_s]
    for rep in sorted({r.repeat for r in measured}):
        mine = [r for r in measured if r.repeat == rep]
        wall = max(r.done for r in mine) - min(r.sent for r in mine)
        good = [r for r in mine if r.outcome.ok]
        s.repeats.append(RepeatSummary(repeat=rep, requests_ok=len(good), requests_failed=len(mine) - len(good),
                                       wall_s=wall, latency=latency_stats(_latencies(good)),
                                       throughput_requests_per_s=len(good) / wall if wall > 0 else None))
    s.measured_wall_s = sum(r.wall_s for r in s.repeats)
    if s.measured_wall_s > 0:
        s.throughput_requests_per_s = len(ok) / s.measured_wall_s
        if is_video:
            s.throughput_video_s_per_s = sum(_video_seconds(r) for r in ok) / s.measured_wall_s
        else:
            s.throughput_images_per_s = sum(len(r.outcome.outputs) for r in ok) / s.measured_wall_s
    server = [r.outcome.server for r in ok if r.outcome.server]
    peaks = [float(m["peak_memory_mb"]) for m in server if isinstance(m.get("peak_memory_mb"), (int, float))]
    stages: dict[str, list[float]] = {}
    for m in server:
        for name, value in (m.get("stage_durations") or {}).items():
            if isinstance(value, (int, float)):
                stages.setdefault(name, []).append(float(value))
    s.server = ServerReported(
        inference_time_s=latency_stats(float(m["inference_time_s"]) for m in server
                                       if isinstance(m.get("inference_time_s"), (int, float))),
        peak_memory_mb_max=max(peaks) if peaks else None, peak_memory_mb_mean=mean(peaks),
        stage_durations_mean_s={k: sum(v) / len(v) for k, v in sorted(stages.items())},
        requests_with_metrics=len(server))
    if is_video:
        timings = [r.outcome.timing for r in ok if r.outcome.timing]
        s.video = VideoTiming(detected_s=latency_stats(t["detected_s"] for t in timings),
                              download_s_mean=mean(t["download_s"] for t in timings),
                              polls_mean=mean(t["polls"] for t in timings))
    kinds = Counter(r.outcome.error_kind or "unknown" for r in failed)
    s.failures = FailureSummary(count=len(failed), measured=s.requests_failed,
                                warmup=len([r for r in failed if r.phase == "warmup"]), by_kind=dict(kinds),
                                examples=[{"idx": r.idx, "phase": r.phase, "kind": r.outcome.error_kind,
                                           "error": r.outcome.error} for r in failed[:20]])
    return s
