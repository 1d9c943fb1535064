"""Per-GPU memory and utilisation during a run, sampled with NVML in a background thread.

Memory is read at ``hz`` (default 200) so that a short spike (a VAE decode, a compile buffer) is seen:
a 50 ms spike spans about ten samples. Utilisation is NVML's own average over its last sample window
(1/6 s to 1 s), so it is read at a tenth of that rate. The thread measures its own CPU time, so the
sampler's cost is part of every run's record. All NVML access goes through ``tools.nvml``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from pydantic import BaseModel, Field

from omnitune.tools import nvml

log = logging.getLogger(__name__)
MIB = 1024 * 1024


class GpuTelemetry(BaseModel):
    index: int = Field(description="Physical NVML index.")
    name: str | None = None
    memory_start_mib: float | None = Field(None, description="Used MiB at the first sample (before warm-up).")
    memory_peak_mib: float | None = Field(None, description="Highest used MiB while measured requests ran.")
    memory_mean_mib: float | None = Field(None, description="Mean used MiB while measured requests ran.")
    memory_peak_all_mib: float | None = Field(None, description="Highest used MiB over the whole run (warm-up too).")
    utilization_mean_percent: float | None = Field(None, description="Mean GPU utilisation while measured.")
    utilization_max_percent: float | None = None
    samples: int = 0


class TelemetrySummary(BaseModel):
    available: bool = Field(description="False when NVML or the GPUs could not be read; `reason` says why.")
    reason: str | None = None
    target_hz: float
    rate_hz: float | None = Field(None, description="Memory samples per second achieved (all GPUs read each tick).")
    samples: int = 0
    cpu_share: float | None = Field(None, description="CPU time of the sampler thread / wall time (1.0 = one core).")
    gpus: list[GpuTelemetry] = Field(default_factory=list)


class _Acc:
    __slots__ = ("n", "total", "peak", "peak_all", "u_n", "u_total", "u_max", "start")

    def __init__(self) -> None:
        self.n: int = 0
        self.total: float = 0.0
        self.peak: float | None = None
        self.peak_all: float | None = None
        self.u_n: int = 0
        self.u_total: float = 0.0
        self.u_max: float | None = None
        self.start: float | None = None


class GpuSampler:
    """``start()`` / ``phase(name)`` / ``stop()``; stats are kept for the ``measured`` phase."""

    def __init__(self, indices: list[int], hz: float = 200.0, util_every: int = 10,
                 timeline_path: Path | None = None, keep_timeline: bool = False) -> None:
        self.indices = list(indices)
        self.hz = hz
        self.util_every = max(1, util_every)
        self.timeline_path = timeline_path
        self.keep_timeline = keep_timeline or timeline_path is not None
        self.started_wall: float | None = None  # time.time() of the first tick: timeline t_s is relative to it
        self._phase = "idle"
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._acc = {i: _Acc() for i in self.indices}
        self._names: dict[int, str | None] = {}
        self._timeline: list[tuple] = []
        self._reason: str | None = None if self.indices else "no GPU indices given for this server"
        self._ticks = 0
        self._wall = 0.0
        self._cpu = 0.0

    def start(self) -> GpuSampler:
        if self.indices:
            self._thread = threading.Thread(target=self._run, name="omnitune-nvml-sampler", daemon=True)
            self._thread.start()
            self._ready.wait(10.0)
        return self

    @property
    def ticks(self) -> int:
        """Samples taken so far (each reads every GPU)."""
        return self._ticks

    def phase(self, name: str) -> None:
        self._phase = name

    def _run(self) -> None:
        try:
            with nvml.session() as nv:
                handles = []
                for i in self.indices:
                    h = nv.nvmlDeviceGetHandleByIndex(i)
                    handles.append(h)
                    name = nvml.query(nv.nvmlDeviceGetName, h)
                    self._names[i] = nvml.text(name) if name is not None else None
                self._loop(nv, handles)
        except nvml.NvmlUnavailable as exc:
            self._reason = str(exc)
        except Exception as exc:  # an index NVML refuses, a driver error: telemetry is lost, the run is not
            log.warning("GPU sampler stopped: %s", exc)
            self._reason = f"NVML sampling failed: {nvml.describe(exc)}"
        finally:
            self._ready.set()

    def _loop(self, nv, handles: list) -> None:
        period = 1.0 / self.hz
        mem_info, util_rates = nv.nvmlDeviceGetMemoryInfo, nv.nvmlDeviceGetUtilizationRates
        util_ok = True
        cpu0, t0 = time.thread_time(), time.perf_counter()
        self.started_wall = time.time()
        next_t = t0
        self._ready.set()
        keep = self.keep_timeline
        while not self._stop.is_set():
            now = time.perf_counter()
            phase = self._phase
            measured = phase == "measured"
            read_util = util_ok and self._ticks % self.util_every == 0
            row = []
            for i, h in zip(self.indices, handles):
                used = mem_info(h).used / MIB
                acc = self._acc[i]
                if acc.start is None:
                    acc.start = used
                if acc.peak_all is None or used > acc.peak_all:
                    acc.peak_all = used
                if measured:
                    acc.n += 1
                    acc.total += used
                    if acc.peak is None or used > acc.peak:
                        acc.peak = used
                if read_util:
                    try:
                        u = float(util_rates(h).gpu)
                    except Exception:
                        util_ok = False
                        u = None
                    if u is not None and measured:
                        acc.u_n += 1
                        acc.u_total += u
                        acc.u_max = u if acc.u_max is None else max(acc.u_max, u)
                row.append(used)
            if keep:
                self._timeline.append((now - t0, phase, row))
            self._ticks += 1
            next_t += period
            delay = next_t - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -period:  # fell behind (a stalled process): do not burst to catch up
                next_t = time.perf_counter()
        self._wall = time.perf_counter() - t0
        self._cpu = time.thread_time() - cpu0

    def stop(self) -> TelemetrySummary:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        summary = TelemetrySummary(available=self._reason is None and self._ticks > 0,
                                   reason=self._reason or (None if self._ticks else "no sample was taken"),
                                   target_hz=self.hz, samples=self._ticks,
                                   rate_hz=self._ticks / self._wall if self._wall > 0 else None,
                                   cpu_share=self._cpu / self._wall if self._wall > 0 else None)
        if self._ticks:
            for i in self.indices:
                a = self._acc[i]
                summary.gpus.append(GpuTelemetry(
                    index=i, name=self._names.get(i), memory_start_mib=a.start, memory_peak_mib=a.peak,
                    memory_mean_mib=a.total / a.n if a.n else None, memory_peak_all_mib=a.peak_all,
                    utilization_mean_percent=a.u_total / a.u_n if a.u_n else None,
                    utilization_max_percent=a.u_max, samples=a.n))
        self._write_timeline()
        return summary

    def timeline(self) -> list[tuple[float, str, list[float]]]:
        """(seconds since the first tick, phase, used MiB per GPU) for every tick, when kept."""
        return list(self._timeline)

    def _write_timeline(self) -> None:
        if self.timeline_path is None or not self._timeline:
            return
        try:
            with open(self.timeline_path, "w") as f:
                f.write("t_s,phase," + ",".join(f"gpu{i}_used_mib" for i in self.indices) + "\n")
                for t, phase, row in self._timeline:
                    f.write(f"{t:.4f},{phase}," + ",".join(f"{v:.1f}" for v in row) + "\n")
        except OSError as exc:
            log.warning("could not write %s: %s", self.timeline_path, exc)
