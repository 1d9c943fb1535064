"""The simulated diffusion engine behind the HTTP routes: timing, memory as NVML sees it, faults.

One request occupies the simulated GPUs at a time (others queue), as in a single diffusion engine. Memory
is published in the state file the fake NVML reads, and optionally held for real on a GPU host.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.emulator import gpulog, startlog
from tests.emulator import world as w
from tests.emulator.api_schema import schema_errors

log = logging.getLogger("vllm_omni.emulator")


class Engine:
    """The simulated diffusion engine behind the HTTP routes."""

    def __init__(self, scenario: dict, cfg: w.Config, pipeline: str, served: str, gpus: list[int]) -> None:
        self.world, self.cfg, self.pipeline, self.served, self.gpus = scenario, cfg, pipeline, served, gpus
        self.ready = False
        self.loaded = threading.Event()
        self.lock = threading.Lock()
        self.compiled: set[tuple] = set()
        self.count = 0
        self.batches = 0
        self.count_lock = threading.Lock()
        self.videos: dict[str, dict] = {}
        self.jitter = __import__("random").Random(scenario["cost"]["jitter_seed"])
        self.faults = scenario.get("faults", {})
        sm = scenario["gpus"][gpus[0]]["compute_capability"] if gpus and gpus[0] < len(scenario["gpus"]) else [9, 0]
        self.sm = (int(sm[0]), int(sm[1]))
        self.load_mib = w.load_memory_mib(scenario, cfg)
        self.state_file = Path(os.environ["VLLM_EMU_STATE_DIR"]) / f"{os.getpid()}.json" \
            if os.environ.get("VLLM_EMU_STATE_DIR") else None
        self.held: list = []

    # -- memory as NVML sees it -----------------------------------------------------------------
    def publish_memory(self, mib: int, busy: bool = False) -> None:
        """The state file the fake NVML reads: MiB held per physical GPU, and whether a request is computing."""
        if self.state_file:
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "memory_mib": {str(g): mib for g in self.gpus},
                                       "busy": busy}))
            tmp.replace(self.state_file)
        if os.environ.get("VLLM_EMU_HOLD_GPU_MEMORY") == "1":
            self._hold_real(mib)

    def _hold_real(self, mib: int) -> None:
        """Hold real GPU memory on every visible GPU (GPU hosts only; torch imported here alone).

        Weights stay allocated from load on; what a request adds above them is freed (and returned to the
        driver) when it ends, so NVML sees the same rise and fall as the simulated footprint.
        """
        import torch  # pyright: ignore[reportMissingImports] - only on a GPU host with torch
        devices = range(min(len(self.gpus), torch.cuda.device_count()))  # the first world-size visible GPUs
        if not self.held:
            self.held = [torch.empty(mib * 1024 * 1024, dtype=torch.uint8, device=f"cuda:{d}") for d in devices]
            self.held_mib = mib
            torch.cuda.synchronize()
            return
        self.extra = [torch.empty((mib - self.held_mib) * 1024 * 1024, dtype=torch.uint8, device=f"cuda:{d}")
                      for d in devices] if mib > self.held_mib else []
        if not self.extra:
            torch.cuda.empty_cache()
        torch.cuda.synchronize()

    def clear_memory(self) -> None:
        if self.state_file:
            self.state_file.unlink(missing_ok=True)

    # -- loading --------------------------------------------------------------------------------
    def load(self, model: str, host: str, port: int, float32: bool, listen: Callable[[], None]) -> None:
        """Load as the real server: the GPU worker's start lines, ``cost.startup_s``, the rest of the real start;
        ``listen()`` only after uvicorn's last start line (the port accepts connections only then). Startup faults
        end the process here with the real engine's own logs."""
        began = time.perf_counter()
        faults, pipeline = self.faults, self.pipeline
        if not (faults.get("startup_crash") or faults.get("gpu_load_failure")):
            gpulog.write(gpulog.loading(model, pipeline).rstrip("\n"))
        for name in ("ImageGenerationRequest", "Body_create_video_v1_videos_post",
                     "Body_create_video_sync_v1_videos_sync_post"):  # request validators, built while "loading"
            schema_errors(name, {"prompt": ""})
        time.sleep(max(0.0, float(self.world["cost"]["startup_s"]) - (time.perf_counter() - began)))
        crash = startlog.orchestrator_failure(model, pipeline, None) if faults.get("startup_crash") else \
            gpulog.load_failure(model, pipeline) if faults.get("gpu_load_failure") else None
        if crash:  # no GPU (set_device raises), or the real GPU log: the cause 314 lines above an empty RuntimeError
            self.clear_memory()
            sys.stdout.write(crash)
            sys.stdout.flush()
            os._exit(1)
        if faults.get("startup_hang"):
            return
        self.publish_memory(self.load_mib)
        gib = self.load_mib / 1024
        gpulog.write(gpulog.loaded(model, pipeline, host, port, time.perf_counter() - began, gib, gib, float32)
                     .rstrip("\n"))
        self.ready = True
        listen()
        self.loaded.set()

    # -- generation -----------------------------------------------------------------------------
    def next_index(self) -> int:
        with self.count_lock:
            self.count += 1
            return self.count

    def check_faults(self, index: int) -> str | None:
        f = self.faults
        if f.get("die_after_requests") and index > int(f["die_after_requests"]):
            log.error("simulated engine crash: worker died (EngineDeadError)")
            self.clear_memory()
            os._exit(1)
        if index in f.get("hang_on", []):
            time.sleep(float(f.get("hang_s", 3600)))
        if index in f.get("error_500_on", []):
            return "simulated internal error"
        return None

    def generate(self, width: int, height: int, steps: int, frames: int, guided: bool = True) -> dict:
        """Occupy the simulated GPUs for as long as the request takes; its metrics."""
        mp = width * height / 1e6
        shape = (width, height, frames)
        peak = w.memory_per_gpu_mib(self.world, self.cfg, mp, frames)
        sizes = [self.world["gpus"][g].get("memory_mib", 143771) for g in self.gpus if g < len(self.world["gpus"])]
        total = min(sizes or [143771])
        if peak > total:
            message = (f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
                       f"{(peak - self.load_mib) / 1024:.2f} GiB. GPU 0 has a total capacity of {total / 1024:.2f} GiB")
            log.error("Error in diffusion generation: %s", message)
            raise MemoryError(message)
        queued = time.perf_counter()
        with self.lock:
            waited = time.perf_counter() - queued
            seconds = w.seconds_per_request(self.world, self.cfg, mp, steps, frames, self.sm, guided)
            jitter = self.world["cost"]["jitter"]
            if jitter:
                seconds *= max(0.05, self.jitter.gauss(1.0, jitter))
            compile_s = 0.0
            if not self.cfg.eager and shape not in self.compiled:
                compile_s = self.world["cost"]["compile_penalty_s"]
                self.compiled.add(shape)
            self.publish_memory(peak, busy=True)
            start = time.perf_counter()
            time.sleep(seconds + compile_s)
            elapsed = time.perf_counter() - start
            self.publish_memory(self.load_mib)
        # As observed on a real GPU (0.26.0) and 0.30.0's omni_base: the wait for the engine and the stage's time
        # from submit to output (wait included), in ms. ``_gen_s`` (the compute alone) is for the route's log.
        return {"peak_memory_mb": float(peak),
                "stage_durations": {"queue_wait_ms": waited * 1000, "stage_0_gen_ms": (waited + elapsed) * 1000},
                "_gen_s": elapsed}

    def request_log(self, request_id: str, video: bool, steps: int, seed: int, guidance: float | None,
                    total_s: float, gen_s: float, pixels: int) -> str:
        """The ~40 lines a real server logs per request (stats tables, [OmniTiming], progress bars)."""
        with self.count_lock:
            self.batches += 1
            batch = self.batches
        return gpulog.request_block(request_id=request_id, video=video, steps=steps, seed=seed, guidance=guidance,
                                    total_s=total_s, gen_s=gen_s, batch_id=batch, pixels=pixels,
                                    pipeline=self.pipeline)

    def deviations(self, steps: int, guidance: tuple[float | None, float | None]) -> list[tuple[float, str, object]]:
        """Every pixel deviation of one request: its request-level settings, then this configuration's lossy ones."""
        return [*w.request_deviations(self.world, steps, *guidance),
                (w.pixel_noise(self.world, self.cfg), self.cfg.lossless_key, steps)]
