"""One benchmark run: warm-up at the measured shapes, measured requests, telemetry, everything recorded live.

Each request's row (and its outputs) is written as soon as it completes, so a cancelled or crashed run
keeps everything measured so far. The first request of the run is its cold latency and is never mixed
into steady-state figures. Failures are rows like any other (``ok = 0`` with the error), never dropped.

``requests.server_metrics`` holds the server's ``inference_time_s`` / ``peak_memory_mb`` /
``stage_durations`` (and ``metrics`` when asked for) plus a ``client`` object: repeat, error kind,
decoded output sizes, and for videos ``detected_s`` / ``download_s`` / ``polls``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from omnitune.tools.benchmark.client import OmniClient
from omnitune.tools.benchmark.records import UNWRITTEN, close_orphaned_runs, server_process
from omnitune.tools.benchmark.summary import Record, RunStatus, RunSummary, summarize
from omnitune.tools.benchmark.target import BenchmarkTarget, Resolved, config_key, resolve
from omnitune.tools.benchmark.telemetry import GpuSampler
from omnitune.tools.benchmark.watchdog import watch
from omnitune.tools.benchmark.workload import RequestSpec, Workload
from omnitune.tools.errors import BenchmarkError
from omnitune.tools.owner import me, process_problem
from omnitune.tools.store import dumps, now
from omnitune.tools.workspace import Workspace, new_id

log = logging.getLogger(__name__)
Progress = Callable[[float, float | None, str], None]
CANCEL_GRACE_S = 2.0


class PlannedRequest(BaseModel):
    phase: str = Field(description="warmup or measured.")
    method: str
    path: str
    content_type: str = Field(description="application/json (images) or multipart/form-data (videos).")
    params: dict[str, Any] = Field(description="The exact fields sent.")


class BenchmarkResult(BaseModel):
    run_id: str | None = Field(description="None for a dry run.")
    status: RunStatus | Literal["dry_run"]
    run_dir: str | None = Field(None, description="Folder with outputs/ (PNG/MP4), summary.json, workload.json, "
                                                  "telemetry.csv.")
    summary: RunSummary | None = Field(None, description="None only while the run is still going (see job_id) "
                                                         "or for a dry run.")
    job_id: str | None = Field(None, description="The background job running it (follow with job_wait/job_status).")
    plan: list[PlannedRequest] | None = Field(None, description="Dry run: the requests that would be sent, in order "
                                                                "(the measured cycle shown once).")


def plan(workload: Workload) -> list[PlannedRequest]:
    """What a run sends, without sending it: warm-up, then one cycle of the measured requests."""
    if workload.is_video:
        method_path, ctype = ("/v1/videos/sync" if workload.video_mode == "sync" else "/v1/videos"), \
            "multipart/form-data"
    else:
        method_path, ctype = "/v1/images/generations", "application/json"
    out = [PlannedRequest(phase="warmup", method="POST", path=method_path, content_type=ctype, params=s.params)
           for s in workload.warmup_plan()]
    cycle = len(workload.sizes) * len(workload.prompt_list) * len(workload.seeds)
    count = min(cycle, workload.measured or cycle)
    measured = workload.measured_plan()
    out += [PlannedRequest(phase="measured", method="POST", path=method_path, content_type=ctype,
                           params=next(measured).params) for _ in range(count)]
    return out


class _Run:
    """State shared by the dispatcher and the worker threads of one run."""

    def __init__(self, ws: Workspace, target: Resolved, workload: Workload, run_id: str, run_dir: Path,
                 progress: Progress | None, cancel: threading.Event) -> None:
        self.ws, self.target, self.w, self.run_id, self.run_dir = ws, target, workload, run_id, run_dir
        self.progress, self.cancel = progress, cancel
        self.lock = threading.Lock()
        self.records: list[Record] = []
        self.saved: set[tuple] = set()
        self.outputs_saved = 0
        self.next_idx = 0
        self.failures = 0
        self.aborted: str | None = None
        self.write_failures: list[str] = []
        self.inflight: dict[int, tuple[RequestSpec, str, float]] = {}  # sent, not answered yet: idx -> spec
        self.closed = False
        self.stop = threading.Event()
        self.repeat = 0
        per_repeat = workload.measured if workload.duration_s is None else None
        self.total = (len(workload.sizes) * workload.warmup + per_repeat * workload.repeats) if per_repeat else None
        self.client = OmniClient(target.base_url, workload.timeout_s, workload.concurrency)
        self.with_size = len(workload.sizes) > 1

    # -- one request ----------------------------------------------------------------------------
    def take_idx(self) -> int:
        with self.lock:
            self.next_idx += 1
            return self.next_idx - 1

    def send(self, spec: RequestSpec, phase: str, idx: int) -> Record:
        started = now()
        sent = time.perf_counter()
        with self.lock:
            self.inflight[idx] = (spec, phase, started)
        if self.w.is_video:
            out = self.client.video(spec.params, self.w.video_mode, self.w.poll_initial_s, self.w.poll_max_s,
                                    self.cancel)
        else:
            out = self.client.image(spec.params)
        done = time.perf_counter()
        rec = Record(idx=idx, phase=phase, repeat=self.repeat, spec=spec, outcome=out, sent=sent, done=done,
                     extra={"started_at": started})
        self.record(rec)
        return rec

    def record(self, rec: Record) -> None:
        out = rec.outcome
        with self.lock:
            self.inflight.pop(rec.idx, None)
            if self.closed:  # finished after a cancel's grace period: the run is already final
                return
            self.records.append(rec)
            try:
                self._write_request(rec)
                if out.ok and rec.phase == "measured" and self.w.save_outputs:
                    self._save_outputs(rec)
            except Exception as exc:  # a lost row is never silent: the run ends failed with the reason
                self._write_failed(rec.idx, exc)
            out.outputs = [b""] * len(out.outputs)  # saved or not needed: keep the count, not megabytes per request
            if self.progress:  # under the lock: progress values reach the client in increasing order
                what = f"{out.latency_s:.3f} s" if out.ok else f"failed ({out.error_kind})"
                self.progress(len(self.records), self.total, f"{rec.phase} request {rec.idx} (size "
                              f"{rec.spec.size}, repeat {rec.repeat + 1}/{self.w.repeats}): {what}")
            if not out.ok and out.error_kind != "cancelled":
                self.failures += 1
                self._apply_failure_policy(rec)

    def _write_request(self, rec: Record) -> None:
        out = rec.outcome
        client = {"repeat": rec.repeat, "size": rec.spec.size, "error_kind": out.error_kind,
                  "media": out.media, **out.timing}
        self.ws.store.insert("requests", {
            "run_id": self.run_id, "idx": rec.idx, "phase": rec.phase, "prompt_index": rec.spec.prompt_index,
            "prompt": rec.spec.params["prompt"], "seed": rec.spec.seed, "params": rec.spec.params,
            "started_at": rec.extra["started_at"], "latency_s": out.latency_s, "ok": int(out.ok),
            "error": f"{out.error_kind}: {out.error}" if not out.ok else None,
            "server_metrics": dumps({**out.server, "client": client})})

    def _write_failed(self, idx: int, exc: Exception) -> None:
        reason = f"request {idx} could not be recorded ({exc})"
        log.error("benchmark %s: %s", self.run_id, reason)
        self.write_failures.append(reason)
        self.abort(reason)

    def record_unanswered(self, why: str) -> None:
        """Requests sent but never answered when the run ends (cancel grace over, server unresponsive): rows
        with ok = 0, so every request sent is in the store."""
        with self.lock:
            for idx, (spec, phase, started) in sorted(self.inflight.items()):
                from omnitune.tools.benchmark.client import Outcome
                out = Outcome(ok=False).fail("unanswered", why)
                rec = Record(idx=idx, phase=phase, repeat=self.repeat, spec=spec, outcome=out, sent=0.0, done=0.0,
                             extra={"started_at": started})
                self.records.append(rec)
                try:
                    self._write_request(rec)
                except Exception as exc:
                    self._write_failed(idx, exc)
            self.inflight.clear()

    def _save_outputs(self, rec: Record) -> None:
        kind = "video" if self.w.is_video else "image"
        for n_index, data in enumerate(rec.outcome.outputs):
            key = (rec.spec.prompt_index, rec.spec.seed, rec.spec.size, n_index)
            if key in self.saved:
                continue
            rel = rec.spec.output_name(n_index, rec.outcome.ext, self.with_size)
            path = self.run_dir / rel
            try:
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(data)
            except OSError as exc:
                log.warning("could not save %s: %s", path, exc)
                continue
            media = rec.outcome.media[n_index] if n_index < len(rec.outcome.media) else {}
            self.ws.store.insert("outputs", {
                "run_id": self.run_id, "request_idx": rec.idx, "n_index": n_index,
                "prompt_index": rec.spec.prompt_index, "seed": rec.spec.seed, "kind": kind, "path": rel,
                "width": media.get("width", rec.spec.width), "height": media.get("height", rec.spec.height),
                "frames": media.get("frames") if self.w.is_video else 1})
            self.saved.add(key)
            self.outputs_saved += 1

    def _apply_failure_policy(self, rec: Record) -> None:
        out = rec.outcome
        if out.error_kind == "connection" and not self.client.healthy(timeout_s=2.0):
            self.abort(f"the server at {self.target.base_url} stopped answering (request {rec.idx}: {out.error})")
        elif self.w.on_failure == "stop":
            self.abort(f"request {rec.idx} failed and on_failure is 'stop': {out.error_kind}: {out.error}")
        elif self.w.max_failures is not None and self.failures >= self.w.max_failures:
            self.abort(f"{self.failures} failed requests reached max_failures={self.w.max_failures}")

    def abort(self, reason: str) -> None:
        if self.aborted is None:
            self.aborted = reason
            log.warning("benchmark %s ends early: %s", self.run_id, reason)
        self.stop.set()

    def halted(self) -> bool:
        return self.stop.is_set() or self.cancel.is_set()

    # -- phases ---------------------------------------------------------------------------------
    def warmup(self, sampler: GpuSampler) -> None:
        """Warm-up requests one at a time, each in a worker thread so a frozen server cannot hold the run."""
        sampler.phase("warmup")
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"warm-{self.run_id[-6:]}")
        try:
            for spec in self.w.warmup_plan():
                if self.halted():
                    return
                future = pool.submit(self.send, spec, "warmup", self.take_idx())
                while not self.halted():
                    done, _ = wait([future], timeout=0.1)
                    if done:
                        self._check(future)
                        break
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _check(self, future: Future) -> None:
        """A request thread's own exception (a bug, or a write that failed outside record) ends the run."""
        exc = future.exception()
        if exc is not None:
            log.error("benchmark %s: request thread failed: %r", self.run_id, exc)
            self.abort(f"a request thread failed: {type(exc).__name__}: {exc}")

    def waiting_s(self) -> float:
        """How long the oldest request in flight has waited for its answer (0 if none)."""
        with self.lock:
            oldest = min((started for _, _, started in self.inflight.values()), default=None)
        return 0.0 if oldest is None else now() - oldest

    def measure(self, sampler: GpuSampler) -> None:
        plan = self.w.measured_plan()
        for repeat in range(self.w.repeats):
            if self.halted():
                return
            self.repeat = repeat
            sampler.phase("measured")
            self._dispatch(plan, repeat)
            sampler.phase("between")

    def _dispatch(self, plan: Iterator[RequestSpec], repeat: int) -> None:
        w = self.w
        rng = random.Random(w.arrival_seed + repeat)
        start = time.perf_counter()
        next_arrival = start
        sent = 0
        inflight: set[Future] = set()
        pool = ThreadPoolExecutor(max_workers=w.concurrency, thread_name_prefix=f"bench-{self.run_id[-6:]}")
        try:
            while not self.halted():
                if w.measured is not None and sent >= w.measured:
                    break
                if w.duration_s is not None and time.perf_counter() - start >= w.duration_s:
                    break
                while len(inflight) >= w.concurrency and not self.halted():
                    done, inflight = wait(inflight, timeout=0.1, return_when=FIRST_COMPLETED)
                    for f in done:
                        self._check(f)
                if w.request_rate:
                    delay = next_arrival - time.perf_counter()
                    if delay > 0 and self.cancel.wait(delay):
                        break
                    next_arrival += rng.expovariate(w.request_rate)
                if self.halted():
                    break
                inflight.add(pool.submit(self.send, next(plan), "measured", self.take_idx()))
                sent += 1
            bound = CANCEL_GRACE_S if self.halted() else w.timeout_s + 30
            deadline = time.perf_counter() + bound
            while inflight and time.perf_counter() < deadline:
                if self.halted():  # cancelled, or ended (unresponsive server, failed write): a short grace only
                    deadline = min(deadline, time.perf_counter() + CANCEL_GRACE_S)
                done, inflight = wait(inflight, timeout=0.1)
                for f in done:
                    self._check(f)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def _final_status(run: _Run) -> RunStatus:
    """completed only when the run is whole: not cancelled, not ended early, every row recorded, and at least one
    measured request answered (a run whose every request failed measured nothing)."""
    if run.cancel.is_set():
        return "cancelled"
    if run.aborted or run.write_failures:
        return "failed"
    measured = [r for r in run.records if r.phase == "measured"]
    if not any(r.outcome.ok for r in measured):
        run.abort(f"every measured request failed ({len(measured)} of {len(measured)})")
        return "failed"
    return "completed"


def run_benchmark(ws: Workspace, target: BenchmarkTarget, workload: Workload, progress: Progress | None = None,
                  cancel: threading.Event | None = None, run_id: str | None = None) -> BenchmarkResult:
    """Measure ``target`` under ``workload``; returns when done, cancelled, or ended by the failure policy."""
    close_orphaned_runs(ws)
    resolved = resolve(ws.store, target)
    cancel = cancel or threading.Event()
    pid, pid_start = server_process(ws, resolved)
    frozen = process_problem(pid, pid_start)
    if frozen:
        raise BenchmarkError(f"the server at {resolved.base_url} is unresponsive: {frozen}.",
                             "list_servers shows its state; stop_server ends it, launch_server starts a new one.")
    probe = OmniClient(resolved.base_url, 10.0)
    try:
        if not probe.healthy(timeout_s=10.0):
            raise BenchmarkError(f"the server at {resolved.base_url} is not healthy (GET /health != 200).",
                                 "wait until it has loaded (launch_server returns when healthy), or check "
                                 "server_logs; a crashed server must be launched again.")
        version = probe.version()
    finally:
        probe.close()
    run_id = run_id or new_id("bench")
    run_dir = ws.new_run_dir(run_id)
    (run_dir / "workload.json").write_text(workload.model_dump_json(indent=2))
    owner_pid, owner_start = me()
    ws.store.insert("runs", {
        "id": run_id, "created_at": now(), "kind": "benchmark", "status": "running", "server_id": resolved.server_id,
        "model": resolved.model, "config_key": None, "workload": workload.model_dump(mode="json"),
        "run_dir": str(run_dir), "data": {"base_url": resolved.base_url, "gpus": resolved.gpus, "version": version,
                                          "owner_pid": owner_pid, "owner_start_time": owner_start,
                                          "config": resolved.config}})
    sampler = GpuSampler(resolved.gpus, timeline_path=run_dir / "telemetry.csv").start()
    run = _Run(ws, resolved, workload, run_id, run_dir, progress, cancel)
    warnings = []
    if workload.warmup == 0:
        warnings.append("warmup=0: measured latencies include compilation (torch.compile compiles per shape); "
                        "cold_latency_s is the first measured request")
    if not resolved.gpus:
        warnings.append("no GPU indices known: GPU memory and utilisation were not sampled")
    status: RunStatus = "failed"
    watcher = watch(run, pid, pid_start)
    try:
        run.warmup(sampler)
        run.measure(sampler)
        status = _final_status(run)
    finally:
        telemetry = sampler.stop()
        run.stop.set()
        if run.inflight:
            run.record_unanswered("no answer before the run ended (" + (
                "cancelled" if cancel.is_set() else run.aborted or "run over") + ")")
        with run.lock:
            run.closed = True
            records = sorted(run.records, key=lambda r: r.idx)
        watcher.join(timeout=1.0)
        run.client.close()
        key = config_key(resolved.model, resolved.config, version, [g.name for g in telemetry.gpus]) \
            if resolved.server_id else None
        base = {"run_id": run_id, "task": workload.task, "base_url": resolved.base_url,
                "server_id": resolved.server_id, "model": resolved.model, "config_key": key}
        if status == "completed" and run.write_failures:  # a write failed after the status was decided
            status = "failed"
        summary = summarize(base, records, telemetry, status, workload.is_video, run.aborted, warnings,
                            run.outputs_saved)
        final = {"status": status, "finished_at": now(), "config_key": key, "summary": summary.model_dump(mode="json")}
        try:
            ws.store.update("runs", {"id": run_id}, final)
        except Exception:  # kept and written again by the next close_orphaned_runs (each start, each benchmark)
            UNWRITTEN[run_id] = final
            raise
        (run_dir / "summary.json").write_text(summary.model_dump_json(indent=2))
    return BenchmarkResult(run_id=run_id, status=status, run_dir=str(run_dir), summary=summary, job_id=None, plan=None)
