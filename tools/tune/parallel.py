"""Trials side by side on disjoint GPU sets of one host, each in its own thread with its own server.

``ParallelRunner.run_many`` takes a batch of (trial, GPU count) in priority order and a function that runs one
trial on given GPUs (launch on exactly those GPUs, benchmark, stop). It starts every trial that fits as soon as
GPUs are free (``placement``), never gives one GPU to two trials, never uses a GPU another omnitune server
holds, and records where and when each trial ran (``Placement``, for the report).

Whatever happens (a trial raising, the job being cancelled) every server a trial started is stopped: after a
trial ends, any live server this process launched on its GPUs since it started is stopped (so a trial that
forgot its ``finally`` leaks nothing); on cancel the servers of the trials still running are stopped at once,
which ends their benchmarks, and no new trial starts.

Figures measured side by side share the host (CPU, PCIe, memory bandwidth). Decisions are taken on figures
measured alone: ``remeasure_alone`` runs the finalists one at a time and ``agree`` says whether side-by-side
and alone figures agree within the noise.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from omnitune.tools.gpus import GpuReport, detect_gpus
from omnitune.tools.tune.placement import Ask, Topology, fits_now, usable_gpus
from omnitune.tools.tune.stats import NOISE, agree

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
CANCEL_WAIT_S = 60.0  # how long cancelled trials get to return once their servers are stopped


class Placement(BaseModel):
    """Where and when one trial ran."""

    trial: str
    gpus: list[int] = Field(default_factory=list)
    node: str = Field(default="local", description="Host (Ray node id on a cluster).")
    nvlink: bool | None = Field(default=None, description="Every pair of its GPUs on NVLink (None: one GPU).")
    started_at: float | None = Field(default=None, description="Unix time.")
    ended_at: float | None = None
    status: str = Field(default="pending", description="pending, running, done, failed, cancelled, not_placed; "
                        "not_used (started ahead, never asked for by the search).")
    error: str | None = None
    alone: bool = Field(default=False, description="Ran with no other trial of this tune at the same time.")
    beside: list[str] = Field(default_factory=list, description="Trials that overlapped it in time.")
    ahead: bool = Field(default=False, description="Started ahead of the search, on GPUs nothing asked for needed.")
    bench_beside: list[str] | None = Field(default=None, description="Trials whose benchmark ran while this one's "
                                           "did (None: not tracked; empty: measured with no other benchmark).")


class TrialsCancelled(Exception):
    """The batch was cancelled; every server is stopped. ``done`` holds the results of trials that finished."""

    def __init__(self, done: dict[int, Any]) -> None:
        super().__init__("trials cancelled")
        self.done = done


class ServerSweeper:
    """Stops live servers this process launched on given GPUs since a time: the safety net under every trial."""

    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher

    def __call__(self, gpus: Sequence[int], since: float) -> list[str]:
        from omnitune.tools.servers import list_server_records
        stopped = []
        for record in list_server_records(self.launcher.store):
            if record.owner_pid != os.getpid() or record.status not in ("running", "starting") or \
                    record.created_at < since - 1.0 or not set(record.gpus) & set(gpus) or record.pgid is None:
                continue
            try:
                self.launcher.stop(record.id, grace_s=5.0)
                stopped.append(record.id)
            except Exception:
                log.exception("could not stop server %s on GPUs %s", record.id, record.gpus)
        return stopped

    def held(self) -> set[int]:
        """GPUs of live omnitune servers (any owner): never given to a trial. Read only: ``Launcher.list``
        would record a server being stopped by a trial thread as 'exited' under that thread's feet."""
        from omnitune.tools.launch.process import group_members
        from omnitune.tools.servers import list_server_records
        return {g for r in list_server_records(self.launcher.store) if r.status in ("running", "starting")
                and (r.pgid is None or group_members(r.pgid, r.proc_start_time)) for g in r.gpus}


class ParallelRunner(Generic[T, R]):
    """Runs batches of trials concurrently on disjoint GPU sets; ``timeline`` says where and when each ran."""

    def __init__(self, run_one: Callable[[T, list[int]], R], *, name_of: Callable[[T], str],
                 on_error: Callable[[T, list[int], BaseException], R], report: GpuReport | None = None,
                 workspace_root: Any = None, sweeper: ServerSweeper | None = None,
                 max_parallel: int | None = None, cancelled: Callable[[], bool] = lambda: False,
                 memory_of: Callable[[T], int | None] = lambda _: None, poll_s: float = 0.2) -> None:
        self.run_one, self.name_of, self.on_error = run_one, name_of, on_error
        self.report = report or detect_gpus(workspace_root)
        self.topology = Topology.of(self.report)
        self.sweeper, self.max_parallel, self.cancelled = sweeper, max_parallel, cancelled
        self.memory_of, self.poll_s = memory_of, poll_s
        self.timeline: list[Placement] = []
        self._lock = threading.Lock()
        self._leased: set[int] = set()

    # -- one batch ----------------------------------------------------------------------------------
    def run_many(self, batch: Sequence[tuple[T, int]], alone: bool = False) -> list[R]:
        """Results in the batch's order. A trial that raises gives ``on_error``'s result (a failed trial, never
        a failed batch); one that asks more GPUs than can ever be free gives it too, without running.
        ``alone``: one trial at a time (for re-measuring). Raises ``TrialsCancelled`` once cancelled."""
        placements = [Placement(trial=self.name_of(t)) for t, _ in batch]
        self.timeline.extend(placements)
        asks = [Ask(n, self.memory_of(t)) for t, n in batch]
        results: dict[int, R] = {}
        pending = list(range(len(batch)))
        never = self._never_fit(asks)
        for i in never:
            placements[i].status, placements[i].error = "not_placed", never[i]
            results[i] = self.on_error(batch[i][0], [], RuntimeError(never[i]))
            pending.remove(i)
        running: dict[Future, int] = {}
        limit = 1 if alone else self.max_parallel
        pool = ThreadPoolExecutor(max_workers=max(1, min(len(batch), limit or len(batch))), thread_name_prefix="trial")
        try:
            while pending or running:
                if self.cancelled():
                    raise TrialsCancelled(dict(results))
                for i, gpus in self._start_now(asks, pending, limit, len(running)).items():
                    pending.remove(i)
                    placements[i].gpus, placements[i].status = gpus, "running"
                    placements[i].nvlink = self.topology.all_nvlink(gpus) if len(gpus) > 1 else None
                    placements[i].started_at = time.time()
                    running[pool.submit(self._one, batch[i][0], gpus, placements[i])] = i
                if not running:  # nothing fits now: another omnitune server holds the GPUs; look again soon
                    time.sleep(self.poll_s)
                    continue
                done, _ = wait(list(running), timeout=self.poll_s, return_when=FIRST_COMPLETED)
                for fut in done:
                    results[running.pop(fut)] = fut.result()
        except BaseException:
            self._cancel_running(running, placements, pending)
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # every trial has returned, or was waited for (bounded)
        self._mark_overlaps(placements)
        return [results[i] for i in range(len(batch))]

    def remeasure_alone(self, finalists: Sequence[tuple[T, int]]) -> list[R]:
        """The finalists again, one at a time with nothing else of this tune running: the figures decisions use."""
        return self.run_many(finalists, alone=True)

    # -- internals -----------------------------------------------------------------------------------
    def _never_fit(self, asks: list[Ask]) -> dict[int, str]:
        total = len(self.report.gpus)
        return {i: f"needs {a.gpus} GPUs, the host has {total}" for i, a in enumerate(asks) if a.gpus > total}

    def _start_now(self, asks: list[Ask], pending: list[int], limit: int | None, running: int) -> dict[int, list[int]]:
        if not pending or (limit is not None and running >= limit):
            return {}
        held = self.sweeper.held() if self.sweeper else set()
        with self._lock:
            free, _ = usable_gpus(self.report, held | self._leased)
            memory = {g.index: g.memory_free_mib for g in self.report.gpus if g.memory_free_mib is not None}
            chosen = fits_now([asks[i] for i in pending], free, self.topology,
                              None if limit is None else limit - running, memory)
            started = {pending[k]: gpus for k, gpus in chosen.items()}
            for gpus in started.values():
                assert not self._leased & set(gpus), "a GPU was about to be given to two trials"
                self._leased |= set(gpus)
        return started

    def _one(self, trial: T, gpus: list[int], placement: Placement) -> R:
        since = time.time()
        try:
            result = self.run_one(trial, gpus)
            placement.status = "done"
            return result
        except BaseException as exc:  # a failing trial is a failed outcome, never a failed batch
            placement.status, placement.error = "failed", f"{type(exc).__name__}: {exc}"
            log.warning("trial %s on GPUs %s failed: %s", placement.trial, gpus, exc)
            return self.on_error(trial, gpus, exc)
        finally:
            if self.sweeper:
                left = self.sweeper(gpus, since)
                if left:
                    log.warning("trial %s left servers %s running on GPUs %s: stopped", placement.trial, left, gpus)
            placement.ended_at = time.time()
            with self._lock:
                self._leased -= set(gpus)

    def _cancel_running(self, running: dict[Future, int], placements: list[Placement], pending: list[int]) -> None:
        """Stop the servers of trials still running (their benchmarks then end), wait for them, bounded."""
        for i in pending:
            placements[i].status = "cancelled"
        if self.sweeper:
            for fut, i in running.items():
                self.sweeper(placements[i].gpus, placements[i].started_at or 0.0)
        _, stuck = wait(list(running), timeout=CANCEL_WAIT_S)
        for fut, i in running.items():
            if placements[i].status == "running" or fut in stuck:
                placements[i].status = "cancelled"
        if stuck:
            log.error("%d trial(s) did not return within %.0f s of cancel; their servers were stopped",
                      len(stuck), CANCEL_WAIT_S)

    def _mark_overlaps(self, placements: list[Placement]) -> None:
        spans = [(q, q.started_at, q.ended_at) for q in self.timeline if q.started_at and q.ended_at]
        for p in placements:
            if p.started_at and p.ended_at:
                p.beside = [q.trial for q, start, end in spans
                            if q is not p and start < p.ended_at and p.started_at < end]
                p.alone = not p.beside


def finalists(scores: Sequence[tuple[float, float | None] | None], keep: int = 2, noise: float = NOISE) -> list[int]:
    """Positions worth re-measuring alone: the best screened p50 and every other one that is within the noise of
    it (at least ``keep`` if there are that many), best first."""
    ranked = sorted((i for i, s in enumerate(scores) if s and s[0]), key=lambda i: scores[i][0])  # type: ignore[index]
    if not ranked:
        return []
    best = scores[ranked[0]]
    close = [i for i in ranked if agree(scores[i], best, noise)]  # type: ignore[arg-type]
    return ranked[:max(keep, len(close))]


def timeline_markdown(timeline: Sequence[Placement], origin: float | None = None) -> str:
    """Which trial ran where and when (seconds from the first start), for the tune report."""
    rows = [(p, p.started_at) for p in timeline if p.started_at]
    if not rows:
        return ""
    t0 = origin or min(start for _, start in rows)
    lines = ["| trial | node | GPUs | NVLink | start (s) | end (s) | status | ran beside |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p, start in rows:
        end = f"{p.ended_at - t0:.1f}" if p.ended_at else "-"
        link = "-" if p.nvlink is None else ("yes" if p.nvlink else "no")
        beside = ", ".join(p.beside) if p.beside else "alone"
        status = f"{p.status} (ahead)" if p.ahead else p.status
        lines.append(f"| {p.trial} | {p.node} | {','.join(map(str, p.gpus))} | {link} | {start - t0:.1f} | "
                     f"{end} | {status} | {beside} |")
    return "\n".join(lines)


def measure_on(settings: Any, ws: Any, model: str, workload: Any, config: dict[str, Any],
               labels: dict[str, str] | None = None, launcher: Any = None,
               skip_inert_sp: bool = False) -> dict[str, Any]:
    """Launch ``config`` (its ``gpus`` included), benchmark it, stop it: server and run ids, p50, or the error.
    What a trial does on its GPUs, here or on a Ray node. ``skip_inert_sp``: an SP layout whose server logs at
    load that it applied no SP is stopped unbenchmarked (``inert`` in the result)."""
    from omnitune.tools.benchmark import BenchmarkTarget, Workload, run_benchmark
    from omnitune.tools.errors import OmnituneError
    from omnitune.tools.launch import ServeConfig
    from omnitune.tools.launch.launcher import Launcher

    launcher = launcher or Launcher(settings, ws)
    workload = workload if isinstance(workload, Workload) else Workload.model_validate(workload)
    t0 = time.monotonic()
    from omnitune.tools.errors import LaunchError

    out: dict[str, Any] = {"server_id": None, "run_id": None, "p50_s": None, "error": None, "launched": True}
    try:
        server = launcher.launch(ServeConfig(model=model, **config), labels=labels).server
    except LaunchError as exc:  # it started and died (out of memory, a refusal at load, no health): it counts
        out["error"] = f"{exc.cause}: {exc.problem}"
        out["seconds"] = time.monotonic() - t0
        return out
    except OmnituneError as exc:  # refused before anything started
        out["error"], out["launched"], out["seconds"] = str(exc), False, 0.0
        return out
    assert server is not None
    out["server_id"] = server.id
    try:
        if skip_inert_sp:
            from omnitune.tools.tune.trial import sp_ignored
            if sp_ignored(ws, server.id, config) is not None:
                out["inert"] = True
                return out
        result = run_benchmark(ws, BenchmarkTarget(server_id=server.id, base_url=None), workload)
        latency = result.summary.latency if result.summary else None
        out["run_id"], out["p50_s"] = result.run_id, latency.p50_s if latency else None
        if result.status != "completed":
            out["error"] = f"benchmark {result.status}"
    except OmnituneError as exc:
        out["error"] = str(exc)
    finally:
        launcher.stop(server.id)
        out["seconds"] = time.monotonic() - t0
    return out
