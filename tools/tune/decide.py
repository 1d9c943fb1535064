"""The mechanics under the search policy: measuring through the ledger and a trial runner, and the decisions
every stage shares (better beyond the noise, fits the memory, passes the quality gate).

A trial goes: replayed from this job's records (resume) -> reused from a run measured before under the same
key -> skipped when the budget is spent or the memory estimate says it cannot fit -> run. Each outcome is
recorded as it is decided; the cost and memory models learn from every measurement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omnitune.tools.plan import Plan
from omnitune.tools.tune.costmodel import CostModel
from omnitune.tools.tune.ledger import Ledger
from omnitune.tools.tune.memory import MemoryModel
from omnitune.tools.tune.models import ACCEPT, Cancelled, NodeLost, Outcome, TuneRequest
from omnitune.tools.tune.replicas import replicas_of
from omnitune.tools.tune.stats import NOISE as NOISE_REL
from omnitune.tools.tune.stats import noise
from omnitune.tools.tune.trial import Trial, TrialRunner

NOISE = 1 + NOISE_REL  # "faster" must beat the best by more than this factor
Progress = Callable[[float, float | None, str], None]




class Decisions:
    def __init__(self, request: TuneRequest, plan: Plan, runner: TrialRunner, ledger: Ledger,
                 memory: MemoryModel | None = None, cost: CostModel | None = None, progress: Progress | None = None,
                 cancelled: Callable[[], bool] = lambda: False, notes: list[str] | None = None) -> None:
        self.req, self.plan, self.runner, self.ledger = request, plan, runner, ledger
        self.memory, self.cost = memory, cost or CostModel(plan.uses_cfg, plan.nvlink)
        self.progress, self.cancelled = progress, cancelled
        self.outcomes: list[Outcome] = []
        self.baseline: Outcome | None = None
        self.best: Outcome | None = None
        self.reserve = 0  # launches kept back for a later stage (steps and guidance)
        self.notes: list[str] = list(notes or [])
        if ledger.replay or ledger.lost:
            self.notes.append(f"resumed: {len(ledger.replay)} outcome(s) taken from this job's records, "
                              f"{ledger.launches} launch(es) and {ledger.gpu_seconds:.1f} GPU-s already spent"
                              + (f"; {len(ledger.lost)} trial(s) lost with a Ray node left to ask again"
                                 if ledger.lost else ""))

    # -- measuring through the ledger and the runner ------------------------------------------------
    def trial(self, name: str, stage: str, kind: Any, config: dict, floor: str | None = None,
              request: dict | None = None) -> Trial:
        best = self.best
        near = best.p50_s if best and best.p50_s and stage != "baseline" else None
        band = max(NOISE - 1, 2.83 * (best.p50_se_s or 0) / best.p50_s) if best and best.p50_s else NOISE - 1
        if self.req.goal.objective == "throughput":  # queued requests spread their latencies: not noise
            band = NOISE - 1
        return Trial(name=name, stage=stage, kind=kind, config=config, request=request or {}, floor=floor,
                     compare_to=self.baseline.run_id if self.baseline and self.baseline.p50_s else None,
                     repeat_near=near, repeat_band=band,
                     estimate_mib=self.memory.estimate(config) if self.memory else None)

    def measure(self, trial: Trial) -> Outcome:
        return self.measure_many([trial])[0]

    def measure_many(self, trials: list[Trial]) -> list[Outcome]:
        """Replayed, reused, skipped (budget, memory) or run: one outcome per trial, each recorded as decided."""
        if self.cancelled():
            raise Cancelled()
        results: dict[int, Outcome] = {}
        todo: list[tuple[int, Trial, str]] = []
        keys = [self.ledger.key(t.config, t.request) for t in trials]
        ran_ahead = getattr(self.runner, "has", lambda key: False)
        out_ahead = getattr(self.runner, "outstanding", lambda keys: 0)(keys)  # launched ahead, not yet charged
        for i, t in enumerate(trials):
            key = keys[i]
            known = self._known(t, key)
            if known is not None:
                results[i] = known
            elif ran_ahead(key):  # already launched ahead of the search: no new launch
                todo.append((i, t, key))
            elif self.memory and self.memory.doomed(t.config, self.req.goal.vram_limit_mib):
                results[i] = self._skip(t, key, "skipped_memory", "predicted_out_of_memory",
                                        f"estimated {t.estimate_mib:.0f} MiB per GPU: more than it has "
                                        f"({self.memory.capacity or 0:.0f} MiB"
                                        + (f", limit {self.req.goal.vram_limit_mib}" if self.req.goal.vram_limit_mib
                                           else "") + "); not launched")
            elif self.ledger.budget_left() - self.reserve - out_ahead - len(todo) <= 0:
                results[i] = self._skip(t, key, "skipped_budget", "budget", "budget spent")
            else:
                todo.append((i, t, key))
        if todo:
            batch = [(t, list(range(len(t.config.get("gpus") or [0])))) for _, t, _ in todo]
            for (i, _, key), out in zip(todo, self.runner.run_many(batch), strict=True):
                results[i] = self._recorded(out, key)
        lost = [o.name for o in results.values() if o.cause == "node_lost"]
        if lost:  # every result of the batch is recorded first: a resume replays them and re-runs only these
            raise NodeLost(lost)
        return [results[i] for i in range(len(trials))]

    def ahead(self, trials: list[Trial]) -> None:
        """Tell a runner that can start trials ahead (idle GPUs) which ones the search will probably ask for next,
        most likely first; those it would not launch (known, reusable, bound to run out of memory) are left out."""
        hint = getattr(self.runner, "ahead", None)
        if hint is None:
            return
        keep = []
        for t in trials:
            key = self.ledger.key(t.config, t.request)
            if key in self.ledger.replay or self.ledger.reusable_run(key) is not None or \
                    (self.memory and self.memory.doomed(t.config, self.req.goal.vram_limit_mib)):
                continue
            keep.append(t)
        hint(keep, self.reserve)

    def settle(self) -> None:
        """The search has ended: a runner that started trials ahead stops them and charges those never asked for."""
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()
        lost = self.ledger.lost_note()
        if lost:
            self.notes.append(lost)

    def _known(self, t: Trial, key: str) -> Outcome | None:
        """This job's own record (resume), else a run another tune measured with the same key."""
        out = self.ledger.replayed(key)
        if out is not None:
            self._learn(out)
            self.outcomes.append(out)
            self._tell(out)
            return out
        run_id = self.ledger.reusable_run(key)
        if run_id is None:
            return None
        return self._recorded(self.runner.reuse(t, run_id), key)

    def _skip(self, t: Trial, key: str, status: Any, cause: Any, reason: str) -> Outcome:
        return self._recorded(Outcome(name=t.name, stage=t.stage, kind=t.kind, status=status, cause=cause,
                                      config=t.config, reason=reason, request_settings=dict(t.request),
                                      estimate_mib=t.estimate_mib), key)

    def _recorded(self, out: Outcome, key: str) -> Outcome:
        if out.p50_s and self.baseline and self.baseline.p50_s:
            out.speedup_vs_baseline = self.baseline.p50_s / out.p50_s
        self._learn(out)
        launches = int(out.launched) * replicas_of(out.config)  # a replica trial starts one server per replica
        self.ledger.spend(launches, out.gpu_seconds)
        self.ledger.record(out, key, launches)
        self.outcomes.append(out)
        self._tell(out)
        return out

    def _learn(self, out: Outcome) -> None:
        """The memory model learns from every peak measured (and every out-of-memory on the requests)."""
        if self.memory and out.peak_memory_mib and out.status in ("measured", "reused"):
            self.memory.learn(out.config, out.peak_memory_mib)
        elif self.memory and out.cause == "out_of_memory_request":
            self.memory.learn_oom(out.config)

    def _tell(self, out: Outcome) -> None:
        if self.progress:
            self.progress(len(self.outcomes), None, f"{out.name}: {out.status}"
                          + (f", p50 {out.p50_s:.3f} s" if out.p50_s else "")
                          + (f", {out.verdict}" if out.verdict else ""))

    # -- decisions ----------------------------------------------------------------------------------
    def better(self, a: Outcome, b: Outcome | None) -> bool:
        """a beats b by more than the noise: 2%, or the two p50s' combined standard error, if larger. Throughput:
        2% (its requests queue on purpose, so the spread of their latencies is the queue, not noise)."""
        if b is None:
            return True
        if self.req.goal.objective == "throughput":
            return (a.throughput or 0) > (b.throughput or 0) * NOISE
        margin = 1 + max(NOISE - 1, noise(a, b))
        return (a.p50_s or 1e18) < (b.p50_s or 1e18) / margin

    def fits(self, out: Outcome) -> bool:
        """Within the goal's per-GPU memory limit (if any); marks it over_memory otherwise."""
        limit = self.req.goal.vram_limit_mib
        if out.status in ("measured", "reused") and limit and out.peak_memory_mib and out.peak_memory_mib > limit:
            out.status = "over_memory"
            out.reason = f"peak {out.peak_memory_mib:.0f} MiB per GPU is over the limit {limit} MiB"
        return out.status in ("measured", "reused")

    def accept(self, out: Outcome, floor: str) -> bool:
        if not self.fits(out):
            return False
        if out.verdict and out.verdict not in ACCEPT[floor]:
            out.status, out.reason = "rejected_quality", f"verdict {out.verdict} is below {floor}"
            return False
        return True

    def consider(self, out: Outcome, floor: str) -> bool:
        """Accept and keep ``out`` as the best if it beats it; say why not otherwise."""
        if not self.accept(out, floor):
            return False
        if self.better(out, self.best):
            self.best = out
            return True
        best = self.best
        assert best is not None  # better() is True against no best
        if self.req.goal.objective == "throughput":
            fig = f"{out.throughput or 0:.4g} against {best.name}'s {best.throughput or 0:.4g} per s"
        else:
            fig = f"p50 {out.p50_s or 0:.4f} s against {best.name}'s {best.p50_s or 0:.4f} s"
        said = f"{'slower than' if self.better(best, out) else 'within the noise of'} the best so far ({fig})"
        out.status, out.reason = "within_noise", "; ".join(x for x in (said, out.reason) if x)
        return False

    @staticmethod
    def memory_pressure(out: Outcome) -> bool:
        """Out of memory at load or on the requests, or over the goal's limit: offload, FP8 or sharding may help."""
        return out.status in ("over_memory", "skipped_memory") or out.cause in ("out_of_memory",
                                                                               "out_of_memory_request")
