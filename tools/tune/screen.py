"""The concurrent :class:`~tools.tune.trial.TrialRunner`: a stage's screening batch side by side on disjoint GPU
sets of this host (``parallel.ParallelRunner``), or as tasks on a Ray cluster (``ray_cluster.RayTrials``).

Figures measured side by side share the host (CPU, PCIe, memory bandwidth), so no decision rests on them
unchecked: the finalists of a batch (its best result and every one within the noise of it) that ran beside
another trial are launched again alone, and their alone figures are what the policy compares. Once a finalist's
alone figure has agreed with its side-by-side one within the noise (shown by measurement), later batches'
side-by-side figures are trusted; a disagreement re-arms the check and widens that batch's finalists by the
interference seen. Extra launches are charged to the ledger and never exceed the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from omnitune.tools.servers import get_server
from omnitune.tools.tune.models import Outcome
from omnitune.tools.tune.parallel import ParallelRunner, Placement, ServerSweeper, TrialsCancelled, agree, finalists
from omnitune.tools.tune.trial import SP_INERT, LaunchTrials, Trial, ignored_flags

TRUST_AFTER = 3  # finalists in a row whose alone figure agreed before side-by-side figures are trusted
# Finalists: every screened result within this factor of the batch's best (and within the noise, if wider).
# Interference between side-by-side trials is not symmetric (up to ~30% seen on a loaded 2-core host with the
# emulator): a candidate slowed by its neighbour must still get its alone measurement.
FINALIST_BAND = 1.25


class ParallelTrials:
    """Wraps the sequential runner: ``run_many`` concurrent, finalists re-measured alone; the rest delegates."""

    def __init__(self, inner: LaunchTrials, ledger: Any, max_parallel: int | None,
                 cancelled: Callable[[], bool] = lambda: False, ray_address: str | None = None) -> None:
        self.inner, self.ledger = inner, ledger
        self.ray = None
        if ray_address:
            from omnitune.tools.tune.ray_cluster import RayTrials
            self.ray = RayTrials(inner.launcher.settings, inner.ws, ray_address, cancelled=cancelled)
        self.runner: ParallelRunner[Trial, Outcome] = ParallelRunner(
            inner.run, name_of=lambda t: t.name, on_error=self._error, workspace_root=inner.ws.root,
            sweeper=ServerSweeper(inner.launcher), max_parallel=max_parallel, cancelled=cancelled)
        self.max_parallel = max_parallel
        self.agreed = 0  # finalists in a row whose alone figure agreed with the side-by-side one
        self.notes: list[str] = []
        self.concurrency = self.width(2)  # TrialRunner.concurrency: 2-GPU trials a batch runs at once

    @property
    def timeline(self) -> list[Placement]:
        return [*self.runner.timeline, *(self.ray.timeline if self.ray else [])]

    def width(self, gpus: int) -> int:
        """How many trials of ``gpus`` GPUs run at once (the policy screens that many together)."""
        if self.ray:
            from omnitune.tools.tune.ray_cluster import cluster_gpus, connect
            fit = sum(n // max(1, gpus) for n in cluster_gpus(connect(self.ray.address)).values())
        else:
            fit = len(self.runner.report.gpus) // max(1, gpus)
        return max(1, min(fit, self.max_parallel or fit))

    # -- the TrialRunner interface ------------------------------------------------------------------
    def run(self, trial: Trial, gpus: list[int]) -> Outcome:
        return self.run_many([(trial, gpus)])[0]

    def session(self, trial: Trial, gpus: list[int]) -> AbstractContextManager:
        return self.inner.session(trial, gpus)  # request variants inside one server: on this host

    def reuse(self, trial: Trial, run_id: str) -> Outcome:
        return self.inner.reuse(trial, run_id)

    def run_many(self, batch: list[tuple[Trial, list[int]]]) -> list[Outcome]:
        from omnitune.tools.tune.decide import Cancelled
        try:
            return self._run_many(batch)
        except TrialsCancelled:  # every server already stopped; the policy's own cancellation from here
            raise Cancelled() from None

    def _run_many(self, batch: list[tuple[Trial, list[int]]]) -> list[Outcome]:
        if self.ray:
            outs = [self._remote(t, res) for (t, _), res in zip(batch, self.ray.run_many(
                [(t.name, t.config, len(g)) for t, g in batch], self.inner.req.model, self.inner.workload,
                labels={"tune_job": self.inner.job_id}, skip_inert_sp=self.inner.skips_inert_sp), strict=True)]
            places = self._ray_places(len(batch))
        elif len(batch) < 2 or self.width(min(len(g) for _, g in batch)) < 2:  # one at a time, in the timeline
            return self.runner.run_many([(t, len(g)) for t, g in batch], alone=True)
        else:
            outs = self.runner.run_many([(t, len(g)) for t, g in batch])
            places = self.runner.timeline[-len(batch):]
        if len(batch) > 1:
            self._alone(batch, outs, places)
        return outs

    # -- internals -----------------------------------------------------------------------------------
    @staticmethod
    def _error(trial: Trial, gpus: list[int], exc: BaseException) -> Outcome:
        return Outcome.model_validate({"name": trial.name, "stage": trial.stage, "kind": trial.kind,
                                       "status": "failed", "cause": "crashed", "config": trial.config,
                                       "reason": f"{type(exc).__name__}: {exc}", "gpus": gpus,
                                       "launched": bool(gpus), "estimate_mib": trial.estimate_mib})

    def _remote(self, trial: Trial, res: dict) -> Outcome:
        """A Ray task's result (its run and server log already imported here) as the policy's outcome."""
        warnings = ignored_flags(get_server(self.inner.ws.store, res["server_id"])) if res.get("server_id") else []
        if res.get("inert"):  # the node saw at load that the server applied no SP, and did not benchmark it
            out = Outcome(name=trial.name, stage=trial.stage, kind=trial.kind, status="inert", config=trial.config,
                          reason=SP_INERT,
                          request_settings=dict(trial.request), estimate_mib=trial.estimate_mib, launched=True)
        elif not res.get("run_id"):
            out = self._error(trial, res.get("gpus") or [], RuntimeError(res.get("error") or "no result"))
            out.reason, out.launched = res.get("error"), bool(res.get("launched"))
            out.cause = "out_of_memory" if "out_of_memory" in (res.get("error") or "") else out.cause
            out.cause = "node_lost" if res.get("node_lost") else out.cause  # the cluster's failure, not the trial's
        else:
            out = self.inner.read(trial, res["run_id"])
            self.inner.judge(out, trial)
            out.launched = True
        n = len(trial.config.get("gpus") or [0])
        out.gpu_seconds = float(res.get("seconds") or 0.0) * n
        out.gpus, out.started_at, out.ended_at = res.get("gpus") or [], res.get("started_at"), res.get("ended_at")
        out.server_warnings = warnings
        return out

    def _ray_places(self, n: int) -> list[Placement]:
        """The last batch on the cluster; alone = no other trial on its node at the same time."""
        assert self.ray is not None
        ran = self.ray.timeline
        for p in ran[-n:]:
            p.beside = [q.trial for q in ran if q is not p and q.node == p.node and q.started_at and q.ended_at
                        and p.started_at and p.ended_at and q.started_at < p.ended_at and p.started_at < q.ended_at]
            p.alone = not p.beside and p.status == "done"
        return ran[-n:]

    def _again(self, items: list[tuple[Trial, list[int]]]) -> list[Outcome]:
        if self.ray:  # one task at a time
            return [o for item in items for o in self._run_many([item])]
        return self.runner.remeasure_alone([(t, len(g)) for t, g in items])

    def _alone(self, batch: list[tuple[Trial, list[int]]], outs: list[Outcome], places: list[Placement]) -> None:
        """Finalists that ran beside another trial, re-measured alone (unless trust was shown by measurement)."""
        scores = [(o.p50_s, o.p50_se_s) if o.p50_s and o.status == "measured" else None for o in outs]
        best = min((sc[0] for sc in scores if sc), default=None)
        near = [k for k, sc in enumerate(scores) if sc and best and sc[0] <= best * FINALIST_BAND]
        ranked = list(dict.fromkeys([*finalists(scores, keep=1), *sorted(near, key=lambda k: scores[k][0])]))  # type: ignore[arg-type,index]
        chosen = [k for k in ranked if not places[k].alone]
        if not chosen:
            return
        if self.agreed >= TRUST_AFTER:
            for k in chosen:
                outs[k].reason = ((outs[k].reason or "") + "; measured beside " + ", ".join(places[k].beside) +
                                  f" (side-by-side figures agreed with alone ones {self.agreed}x before)").lstrip("; ")
            return
        budget = self.ledger.budget_left() if self.ledger else len(chosen)
        factor, again_n = 1.0, 0
        for _round in range(2):
            chosen = chosen[:budget - again_n]
            if not chosen:
                break
            for k, alone in zip(chosen, self._again([batch[k] for k in chosen]), strict=True):
                side = outs[k]
                again_n += 1
                if not (alone.p50_s and side.p50_s):  # the re-measure failed: the screened figure stands, noted
                    if self.ledger:
                        self.ledger.spend(int(alone.launched), alone.gpu_seconds)
                    side.reason = ((side.reason or "") + f"; re-measuring it alone failed: {alone.reason}").lstrip("; ")
                    continue
                if self.ledger:  # the side-by-side launch counts too (its GPU time rides on the recorded outcome)
                    self.ledger.spend(int(side.launched), 0.0)
                alone.gpu_seconds += side.gpu_seconds
                same = agree((side.p50_s, side.p50_se_s), (alone.p50_s, alone.p50_se_s))
                self.agreed = self.agreed + 1 if same else 0
                factor = max(factor, side.p50_s / alone.p50_s)
                alone.reason = ((alone.reason or "") + f"; screened beside {', '.join(places[k].beside)}: p50 "
                                f"{side.p50_s:.4f} s (run {side.run_id}), re-measured alone: {alone.p50_s:.4f} s, "
                                f"{'within' if same else 'beyond'} the noise of it").lstrip("; ")
                outs[k] = alone
            if self.agreed or factor <= 1.0:
                break
            best = min((o.p50_s for o in outs if o.p50_s), default=0.0)
            chosen = [k for k, o in enumerate(outs) if k not in chosen and o.p50_s and not places[k].alone
                      and o.status == "measured" and o.p50_s / factor < best * 1.02]
        self.notes.append(f"{len(batch)} trials screened side by side; {again_n} finalist(s) re-measured alone")


def runner_for(inner: LaunchTrials, ledger: Any, cancelled: Callable[[], bool]) -> Any:
    """A Ray cluster when one is set; trials side by side and ahead of the search on this host when the request
    allows more than one at a time and the host has more than one GPU (``ahead.AheadTrials``); else one at a
    time."""
    limit = inner.req.max_parallel_trials
    address = inner.launcher.settings.ray_address
    if address:
        return ParallelTrials(inner, ledger, limit, cancelled, address)
    if limit == 1:
        return inner
    from omnitune.tools.gpus import detect_gpus
    from omnitune.tools.tune.ahead import AheadTrials
    report = detect_gpus(inner.ws.root)
    return AheadTrials(inner, ledger, limit, cancelled, report) if len(report.gpus) > 1 else inner
