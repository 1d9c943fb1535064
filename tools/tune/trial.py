"""Trials: one candidate (or the request-level variants of one) measured on its own server.

The policy (``tuner.py``) sees only the small typed interface :class:`TrialRunner`: ``run(trial, gpus)``,
``run_many([(trial, gpus), ...])`` for a stage's screening (sequential here; a concurrent runner on disjoint
GPU sets plugs in without touching the policy), ``session(trial, gpus)`` for request-level variants inside one
server, and ``reuse(trial, run_id)`` for a run measured before. Every result is an :class:`Outcome` with a typed
``cause``; a failed launch or a server that runs out of memory on every request is an outcome, never an error.
This module never imports the policy.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from pydantic import BaseModel, Field

from omnitune.tools.benchmark import BenchmarkTarget, Workload, run_benchmark
from omnitune.tools.benchmark.summary import RunSummary
from omnitune.tools.errors import LaunchError, OmnituneError
from omnitune.tools.launch import ServeConfig
from omnitune.tools.launch.launcher import Launcher
from omnitune.tools.plan import Kind
from omnitune.tools.search_space import replica_gpus
from omnitune.tools.servers import ServerRecord, get_server
from omnitune.tools.tune.costmodel import SP_DIMENSIONS, layout_of
from omnitune.tools.tune.models import ACCEPT, Cancelled, Cause, Outcome, TuneRequest
from omnitune.tools.tune.replicas import Balancer, replicas_of, serve_fields
from omnitune.tools.tune.stats import agree, noisy, p50_se, pooled
from omnitune.tools.workspace import Workspace

# A figure measured beside another trial's benchmark and at most this much slower than the best so far is measured
# again alone on its server: company can only slow a figure, and on a loaded 2-core host a candidate ~5% better
# (CFG parallel over PCIe) lost to one GPU once this way (benchmarks/tune_efficiency.py, comm-bound world).
BESIDE_SLACK = 0.10
# Log lines where vLLM-Omni says it carries on without a flag (the flag is then inert: no other launch needed).
SP_IGNORED = "SP hooks not applied"  # vllm_omni/diffusion/registry.py, at load: no transformer has an _sp_plan
SP_INERT = "the server log says sequence parallelism was not applied: not benchmarked"
IGNORED_MARKERS = (SP_IGNORED, "ignored", "ignoring", "has no effect", "falling back")


class Trial(BaseModel):
    """What the policy asks to measure. ``config``: ServeConfig fields without model and GPUs."""

    name: str
    stage: str
    kind: Kind
    config: dict[str, Any]
    request: dict[str, Any] = Field(default_factory=dict, description="Request-level settings (session only).")
    compare_to: str | None = Field(default=None, description="Run id of the baseline: outputs are judged against it.")
    repeat_near: float | None = Field(
        default=None,
        description="p50 of the best so far: a result within repeat_band of "
        "it is measured again on the same server and pooled.",
    )
    repeat_band: float = 0.02
    floor: str | None = Field(default=None, description="Quality floor: a result below it is not worth repeating.")
    estimate_mib: float | None = None


class Session(Protocol):
    def measure(self, trial: Trial) -> Outcome: ...


class TrialRunner(Protocol):
    """``gpus``: the GPUs a trial would use alone (0..n-1); a concurrent runner may place the members of one
    ``run_many`` batch on other, disjoint sets (``Outcome.gpus`` says where each ran). ``concurrency``: how many
    trials a batch runs at once (the policy screens at least that many together)."""

    concurrency: int

    def run(self, trial: Trial, gpus: list[int]) -> Outcome: ...

    def run_many(self, batch: list[tuple[Trial, list[int]]]) -> list[Outcome]: ...

    def session(self, trial: Trial, gpus: list[int]) -> AbstractContextManager[Session]: ...

    def reuse(self, trial: Trial, run_id: str) -> Outcome: ...


@contextmanager
def serving(launcher: Launcher, config: ServeConfig, labels: dict[str, str]) -> Iterator[ServerRecord]:
    """A launched, healthy server for the ``with`` block; stopped (its whole group) however the block ends."""
    launched = launcher.launch(config, labels=labels)
    assert launched.server is not None
    try:
        yield launched.server
    finally:
        launcher.stop(launched.server.id)


LAUNCH_CAUSES: dict[str, Cause] = {"out_of_memory": "out_of_memory", "timeout": "timeout", "crashed": "crashed"}


def launch_cause(exc: LaunchError) -> Cause:
    """The launcher's classification of a failed start, typed (anything else: the engine refused it)."""
    return LAUNCH_CAUSES.get(exc.cause, "refused")


def tune_workload(workload: Workload, fill: int | None = None) -> Workload:
    """Videos through the sync endpoint: latency to the millisecond, not to the polling step. ``fill`` (the
    throughput objective: the most replicas the GPUs hold) keeps that many requests in flight and measures at
    least that many, so every trial's throughput is measured with the GPUs busy, one server or N replicas."""
    update: dict[str, Any] = {"video_mode": "sync"} if workload.is_video else {}
    if fill and fill > 1:
        update["concurrency"] = max(workload.concurrency, fill)
        if workload.measured is not None:
            update["measured"] = max(workload.measured, update["concurrency"])
    return workload.model_copy(update=update) if update else workload


def replica_workload(workload: Workload, replicas: int) -> Workload:
    """Warm-up once per replica (each compiles its own shapes): requests in a row reach every replica in turn."""
    return workload.model_copy(update={"warmup": workload.warmup * replicas}) if replicas > 1 else workload


def workload_with(workload: Workload, settings: dict[str, Any]) -> Workload:
    """The workload with request-level settings applied (fields it has typed, the rest in extra_body)."""
    typed = {k: v for k, v in settings.items() if k in Workload.model_fields and k != "extra_body"}
    extra = {**workload.extra_body, **{k: v for k, v in settings.items() if k not in typed}}
    return workload.model_copy(update={**typed, "extra_body": extra})


def request_settings(request: dict[str, Any], steps: int | None) -> dict[str, Any] | None:
    """A plan's request-level candidate as concrete request fields (None: cannot be applied)."""
    if "steps_fraction" in request:
        if not steps:
            return None
        fewer = max(1, int(steps * request["steps_fraction"]))
        return {"num_inference_steps": fewer} if fewer < steps else None
    return dict(request)


class LaunchTrials:
    """The real runner: each trial on its own launched server, benchmarked with the tune's workload, one at a time."""

    concurrency = 1

    def __init__(self, workspace: Workspace, launcher: Launcher, request: TuneRequest, job_id: str,
                 cancel: threading.Event | None = None) -> None:
        self.ws, self.launcher, self.req, self.job_id = workspace, launcher, request, job_id
        self.workload = tune_workload(request.workload)  # make_tuner sets the throughput objective's fill
        self.cancel = cancel  # the job's: set at a shutdown or job_cancel, it also stops a benchmark in flight
        # held around every benchmark (``alone``: no other benchmark of this tune beside it): a runner with trials
        # side by side sets it (ahead.BenchSlot), and ``near``, the search's best p50 so far as it last heard it
        self.bench_slot: Callable[..., AbstractContextManager[Any]] = _no_slot
        self.near: Callable[[], float | None] = lambda: None
        # an SP layout whose server said it applied no SP is not benchmarked (True: it is, as a search that reads
        # no log would: benchmarks/tune_efficiency.py's exhaustive grid)
        self.benchmark_inert = False
        # the model drives SP in its own code (the capability report): "SP hooks not applied" does not make it inert
        self.sp_by_hand = False

    @property
    def skips_inert_sp(self) -> bool:
        """Whether an SP layout whose server logs 'SP hooks not applied' is left unbenchmarked (here or on a node)."""
        return not (self.benchmark_inert or self.sp_by_hand)

    def stopped(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    # -- the interface ----------------------------------------------------------------------------
    def run(self, trial: Trial, gpus: list[int]) -> Outcome:
        """Launch, benchmark, stop; then judge the pictures: the GPUs are not held while they are compared."""
        blind = trial.model_copy(update={"compare_to": None})
        with self.session(blind, gpus) as session:
            out = session.measure(blind)
        self.judge(out, trial)
        return out

    def run_many(self, batch: list[tuple[Trial, list[int]]]) -> list[Outcome]:
        return [self.run(trial, gpus) for trial, gpus in batch]

    def session(self, trial: Trial, gpus: list[int]) -> AbstractContextManager[_Session]:
        return _Session(self, trial, gpus)

    def reuse(self, trial: Trial, run_id: str) -> Outcome:
        out = self.read(trial, run_id, "reused", "measured before with the same model, settings, GPUs and workload")
        self.judge(out, trial)
        return out

    # -- reading and judging ----------------------------------------------------------------------
    def read(self, trial: Trial, run_id: str, status: str = "measured", reason: str | None = None) -> Outcome:
        """An outcome from a stored run, read typed (``RunSummary.model_validate``)."""
        row = self.ws.store.query_one(
            "SELECT r.summary, r.data AS run_data, s.data FROM runs r LEFT JOIN servers s ON s.id = r.server_id "
            "WHERE r.id = ?", (run_id,)
        )
        summary = RunSummary.model_validate(json.loads(row["summary"])) if row and row["summary"] else None
        # one server: its record; replicas (measured through the balancer): what the trial wrote on the run
        before = (json.loads(row["data"] or "{}").get("memory_before_mib") or
                  json.loads(row["run_data"] or "{}").get("memory_before_mib") or {}) if row else {}
        out = Outcome(
            name=trial.name,
            stage=trial.stage,
            kind=trial.kind,
            status=status,  # type: ignore[arg-type]
            config=trial.config,
            reason=reason,
            run_id=run_id,
            request_settings=dict(trial.request),
            estimate_mib=trial.estimate_mib,
        )
        if summary is None:
            return out
        lat = [
            r["latency_s"]
            for r in self.ws.store.query(
                "SELECT latency_s FROM requests WHERE run_id = ? AND phase = 'measured' AND ok = 1 "
                "AND latency_s IS NOT NULL",
                (run_id,),
            )
        ]
        if summary.latency:
            out.p50_s, out.std_s, out.p50_se_s = summary.latency.p50_s, summary.latency.std_s, p50_se(lat)
        out.throughput = summary.throughput_images_per_s or summary.throughput_video_s_per_s
        peaks = [
            (g.memory_peak_all_mib or g.memory_peak_mib or 0) - before.get(str(g.index), 0)
            for g in (summary.gpus.gpus if summary.gpus else [])
            if g.memory_peak_all_mib or g.memory_peak_mib
        ]
        out.peak_memory_mib = max(peaks) if peaks else None
        stages = summary.server.stage_durations_mean_s
        if stages and sum(stages.values()) > 0:
            out.vae_share = stages.get("vae_decode", 0.0) / sum(stages.values())
        if not out.p50_s:
            oom = any("out of memory" in str(e.get("error", "")).lower() for e in summary.failures.examples)
            out.status, out.cause = "failed", "out_of_memory_request" if oom else "no_measurement"
            out.reason = (
                "the server loaded but ran out of GPU memory on the requests"
                if oom
                else "no successful measured request"
            )
        return out

    def judge(self, out: Outcome, trial: Trial) -> None:
        """Quality against the baseline run (request-level differences allowed where the trial sets them)."""
        from omnitune.tools.compare import compare_runs

        if out.run_id and trial.compare_to and out.run_id != trial.compare_to and out.p50_s:
            settings = trial.request
            try:
                cmp = compare_runs(self.ws, trial.compare_to, out.run_id,
                                   across_steps="num_inference_steps" in settings,
                                   allow_differences=[k for k in settings if k != "num_inference_steps"] or None,
                                   draw=False)  # verdicts only: drawing is most of a comparison's CPU
            except OmnituneError as exc:  # a comparison that cannot be made leaves the candidate unjudged
                out.reason = "; ".join(x for x in (out.reason, f"not compared: {exc.problem}") if x)
                return
            out.verdict, out.psnr_db_mean = cmp.verdict, cmp.psnr_db_mean

    def worth_repeating(self, out: Outcome, trial: Trial, beside: bool = False) -> str | None:
        """Why ``out`` is measured again on its server (None: it is not): too close to the best so far to call,
        or too noisy to rest anything on. ``beside``: measured beside another benchmark, which can only have
        slowed it, so a figure up to BESIDE_SLACK slower than the best is close too."""
        if not out.p50_s or (trial.floor and out.verdict and out.verdict not in ACCEPT[trial.floor]):
            return None  # nothing measured, or rejected on quality whatever its speed
        if noisy(out):
            return "its requests' spread was too wide to decide on"
        near = min((x for x in (trial.repeat_near, self.near()) if x), default=None)
        if near and abs(out.p50_s / near - 1) < trial.repeat_band:
            return "within the spread of the best so far"
        if near and beside and 1 <= out.p50_s / near < 1 + max(trial.repeat_band, BESIDE_SLACK):
            return "slower than the best so far by less than a benchmark beside it might have cost"
        return None

    def beside_check(self, out: Outcome, alone: Outcome, beside: list[str], why: str) -> None:
        """``out`` was measured beside other trials' benchmarks and is contested (``why``); ``alone`` is the same
        server measured again with no other benchmark running. Agreeing within the noise, the two are pooled;
        otherwise the alone figure is the one, and every later benchmark of this tune runs alone."""
        side = (out.p50_s, out.p50_se_s)
        note = f"measured beside {', '.join(beside)}'s benchmark(s): p50 {out.p50_s or 0:.4f} s (run {out.run_id})"
        if not (out.p50_s and alone.p50_s):
            out.reason = "; ".join(x for x in (out.reason, note, "measuring it again alone failed") if x)
            return
        if agree((out.p50_s, out.p50_se_s), (alone.p50_s, alone.p50_se_s)):
            pooled(out, alone, f"{why}; again alone, within the noise of the figure beside")
            out.reason = f"{out.reason}; {note}"
            return
        for k in ("p50_s", "std_s", "p50_se_s", "throughput", "peak_memory_mib", "vae_share"):
            setattr(out, k, getattr(alone, k))
        out.repeat_run_id = alone.run_id
        out.reason = "; ".join(x for x in (note, f"again alone ({why}): {alone.p50_s:.4f} s, beyond the noise of it: "
                                           "the alone figure is the one") if x)
        revoke = getattr(self.bench_slot, "revoke", None)
        if revoke is not None:
            revoke(f"a figure measured beside another benchmark ({out.name}: {side[0]:.4f} s) disagreed with the "
                   f"same server alone ({alone.p50_s:.4f} s): every later benchmark of this tune ran alone")


class _Session(AbstractContextManager):
    """One server (or one per replica) for a trial and any request-level variants of it; launched on the first
    measurement, every server stopped however the session ends."""

    def __init__(self, runner: LaunchTrials, trial: Trial, gpus: list[int]) -> None:
        self.r, self.trial, self.gpus = runner, trial, gpus
        self.server: ServerRecord | None = None
        self.servers: list[ServerRecord] = []
        self.failed: Outcome | None = None
        self.launch_s, self.measured, self.started = 0.0, 0, 0

    def __exit__(self, *exc: object) -> None:
        self._stop_all()

    def _stop_all(self) -> None:
        """Stop every server of the session; one that fails to stop does not keep the others running."""
        servers, self.servers, self.server = self.servers, [], None
        error: Exception | None = None
        for server in servers:
            try:
                self.r.launcher.stop(server.id)
            except Exception as exc:  # raised once all are stopped
                error = error or exc
        if error is not None:
            raise error

    def _start_all(self, configs: list[ServeConfig]) -> None:
        """Launch every replica at once (each waits for its own health, bounded by its health timeout); if any
        fails, the ones that started are stopped and the first failure is raised."""
        labels = {"tune_job": self.r.job_id}
        if len(configs) == 1:
            launched = self.r.launcher.launch(configs[0], labels=labels)
            assert launched.server is not None
            self.servers, self.started = [launched.server], 1
            return
        with ThreadPoolExecutor(max_workers=len(configs), thread_name_prefix="replica-launch") as pool:
            futures = [pool.submit(self.r.launcher.launch, c, labels={**labels, "replica": f"{i + 1}/{len(configs)}"})
                       for i, c in enumerate(configs)]
            results = [(f.result(), None) if f.exception() is None else (None, f.exception()) for f in futures]
        self.servers = [res.server for res, _ in results if res is not None and res.server is not None]
        self.started = len(self.servers)
        error = next((e for _, e in results if e is not None), None)
        if error is not None:
            self._stop_all()
            raise error

    def start(self) -> None:
        """Launch the server now (the first ``measure`` would), so that a caller can time the two apart."""
        if self.server is None and self.failed is None:
            self._launch()

    def _launch(self) -> None:
        t0 = time.monotonic()
        groups = replica_gpus(self.gpus, replicas_of(self.trial.config))
        fields = serve_fields(self.trial.config)
        try:
            self._start_all([ServeConfig(model=self.r.req.model, **{**fields, "gpus": g}) for g in groups])
            self.server = self.servers[0]
        except LaunchError as exc:
            if self.r.stopped():  # stopped under us by a shutdown or cancel: not this candidate's failure
                raise Cancelled() from exc
            spent = (time.monotonic() - t0) * len(self.gpus)
            self.failed = Outcome(
                name="",
                stage="",
                status="failed",
                config={},
                cause=launch_cause(exc),
                reason=f"{exc.cause}: {exc.problem}",
                gpu_seconds=spent,
                launched=True,
            )
        except OmnituneError as exc:  # refused before anything started (the launch gate): costs nothing
            self.failed = Outcome(name="", stage="", status="failed", config={}, cause="launch_gate", reason=str(exc),
                                  launched=self.started > 0)  # a replica refused after others had started
        self.launch_s = time.monotonic() - t0

    def _benchmark(self, workload: Workload) -> Any:
        """One benchmark run: on the server, or on every replica at once through the balancer."""
        if len(self.servers) == 1:
            target = BenchmarkTarget.model_validate({"server_id": self.servers[0].id})
            return run_benchmark(self.r.ws, target, workload, cancel=self.r.cancel)
        with Balancer([s.base_url for s in self.servers], workload.timeout_s) as balancer:
            target = BenchmarkTarget.model_validate({"base_url": balancer.url, "gpus": self.gpus})
            result = run_benchmark(self.r.ws, target, replica_workload(workload, len(self.servers)),
                                   cancel=self.r.cancel)
            served = list(balancer.served)
        before: dict[str, Any] = {}
        for s in self.servers:
            before.update(s.data.get("memory_before_mib") or {})
        if result.run_id:
            self.r.ws.store.execute(
                "UPDATE runs SET data = json_set(coalesce(data, '{}'), '$.memory_before_mib', json(?), "
                "'$.replica_servers', json(?), '$.replica_requests', json(?)) WHERE id = ?",
                (json.dumps(before), json.dumps([s.id for s in self.servers]), json.dumps(served), result.run_id))
        return result

    def measure(self, trial: Trial) -> Outcome:
        started = time.time()
        self.start()
        if self.failed is not None:
            first = self.measured == 0
            self.measured += 1
            return self.failed.model_copy(
                update={
                    "name": trial.name,
                    "stage": trial.stage,
                    "kind": trial.kind,
                    "config": trial.config,
                    "request_settings": dict(trial.request),
                    "estimate_mib": trial.estimate_mib,
                    "gpus": self.gpus,
                    "gpu_seconds": self.failed.gpu_seconds if first else 0.0,
                    "launched": self.failed.launched and first,
                    "started_at": started,
                    "ended_at": time.time(),
                }
            )
        assert self.server is not None
        inert = self._sp_ignored(trial, started)
        if inert is not None:
            return inert
        t0 = time.monotonic()
        workload = workload_with(self.r.workload, trial.request)
        try:
            with self.r.bench_slot() as window:
                result = self._benchmark(workload)
        except OmnituneError as exc:  # the server died or stopped answering: a failed candidate, not a failed tune
            if self.r.stopped():  # ...unless the tune's own stop took it down: replayed as failed, a winner is lost
                raise Cancelled() from exc
            n = len(self.gpus)
            first, self.measured = self.measured == 0, self.measured + 1
            return Outcome(name=trial.name, stage=trial.stage, kind=trial.kind, status="failed", cause="crashed",
                           config=trial.config, reason=f"benchmark failed: {exc.problem}", launched=first,
                           request_settings=dict(trial.request), estimate_mib=trial.estimate_mib, gpus=self.gpus,
                           gpu_seconds=(time.monotonic() - t0) * n + (self.launch_s * n if first else 0.0),
                           started_at=started, ended_at=time.time())
        if result.status != "completed":  # cancelled or ended early: a truncated run is never a measurement
            if self.r.stopped() or result.status == "cancelled":
                raise Cancelled()
            first, self.measured = self.measured == 0, self.measured + 1
            why = result.summary.aborted_reason if result.summary else None
            # a run whose every request failed is failed: out of memory on each is memory pressure, not noise
            oom = self.r.read(trial, result.run_id) if result.run_id else None
            oom = oom if oom is not None and oom.cause == "out_of_memory_request" else None
            n = len(self.gpus)
            return Outcome(name=trial.name, stage=trial.stage, kind=trial.kind, status="failed",
                           cause=oom.cause if oom else "no_measurement", config=trial.config, run_id=result.run_id,
                           reason=oom.reason if oom else
                           f"benchmark run {result.run_id} {result.status}: {why or 'see the run'}",
                           launched=first, request_settings=dict(trial.request), estimate_mib=trial.estimate_mib,
                           gpus=self.gpus, gpu_seconds=(time.monotonic() - t0) * n + (self.launch_s * n if first
                                                                                      else 0.0),
                           started_at=started, ended_at=time.time())
        reason = ("request-level, measured inside one server: " + json.dumps(trial.request)) if trial.request else None
        out = self.r.read(trial, result.run_id or "", "measured", reason)
        self.r.judge(out, trial)
        beside: list[str] = sorted(getattr(window, "beside", None) or ())
        why = self.r.worth_repeating(out, trial, bool(beside))
        if why:  # too close to call, or too noisy: measure again here (alone, if it had company) and pool
            with self.r.bench_slot(alone=bool(beside)):
                again_id = self._benchmark(workload).run_id
            again = self.r.read(trial, again_id or "")
            if beside:
                self.r.beside_check(out, again, beside, why)
            else:
                pooled(out, again, why)
        elif beside:
            out.reason = "; ".join(x for x in (out.reason, f"measured beside {', '.join(beside)}'s benchmark(s), "
                                               "not close enough to the best so far to change a decision") if x)
        n = len(self.gpus)
        out.gpu_seconds = (time.monotonic() - t0) * n + (self.launch_s * n if self.measured == 0 else 0.0)
        out.launched = self.measured == 0
        out.gpus, out.started_at, out.ended_at = list(self.gpus), started, time.time()
        out.server_warnings = ignored_flags(get_server(self.r.ws.store, self.server.id))
        self.measured += 1
        return out

    def _sp_ignored(self, trial: Trial, started: float) -> Outcome | None:
        """A layout with sequence parallelism whose server said at load that it applied none: what it would measure
        is the rest of the layout on more GPUs, so it is not benchmarked (the search marks SP inert from the
        warning; a real video benchmark takes minutes)."""
        assert self.server is not None
        if self.measured or not self.r.skips_inert_sp:
            return None
        warnings = sp_ignored(self.r.ws, self.server.id, trial.config)
        if warnings is None:
            return None
        self.measured += 1
        n = len(self.gpus)
        return Outcome(name=trial.name, stage=trial.stage, kind=trial.kind, status="inert", config=trial.config,
                       reason=SP_INERT,
                       request_settings=dict(trial.request), estimate_mib=trial.estimate_mib, gpus=list(self.gpus),
                       gpu_seconds=self.launch_s * n, launched=True, started_at=started, ended_at=time.time(),
                       server_warnings=warnings)


def sp_ignored(ws: Workspace, server_id: str, config: dict) -> list[str] | None:
    """The server's ignored-flag warnings if ``config`` asks for sequence parallelism and its log says at load
    that none was applied (then its figure is the rest of the layout on more GPUs); else None."""
    if not set(SP_DIMENSIONS) & set(layout_of(config)):
        return None
    warnings = ignored_flags(get_server(ws.store, server_id))
    return warnings if any(SP_IGNORED in w for w in warnings) else None


@contextmanager
def _no_slot(alone: bool = False) -> Iterator[None]:
    """One trial at a time: every benchmark is alone."""
    yield None


def ignored_flags(server: ServerRecord) -> list[str]:
    """Launch warnings in which the server says it carries on without a setting (e.g. SP without _sp_plan)."""
    from pathlib import Path

    lines: list[str] = []
    log_path = getattr(server, "log_path", None)
    if log_path and Path(log_path).is_file():
        with open(log_path, errors="replace") as f:
            lines = [ln.strip() for ln in f.read(200_000).splitlines()]
    return [ln[-300:] for ln in lines if "warn" in ln.lower() and any(m in ln for m in IGNORED_MARKERS)][:5]
