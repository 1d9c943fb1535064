"""The tune's search policy: which candidates to measure, in which order, and what their outcomes decide.

baseline -> lossless (single GPU, then parallel layouts) -> lossy (gated on quality) -> request-level settings.
The policy launches nothing itself: it asks a :class:`~tools.tune.trial.TrialRunner` (``run`` one trial,
``run_many`` a stage's screening, a ``session`` for request variants inside one server) and keeps its books in
a :class:`~tools.tune.ledger.Ledger` (replay of a resumed job, reuse of runs measured before, budget). So it is
tested in memory against a fake runner (tests/test_tune_policy.py): decisions, not clocks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omnitune.tools.plan import Candidate, Plan
from omnitune.tools.tune.ledger import Ledger
from omnitune.tools.tune.models import ACCEPT, Outcome, TuneRequest
from omnitune.tools.tune.stats import noise, same_pixels
from omnitune.tools.tune.trial import Trial, TrialRunner, request_settings

NOISE = 1.02  # "faster" must beat the best by more than this factor
# A setting whose pixels match the previous one's skips no work, so any speed difference is launch-to-launch
# noise (3.5% seen between two launches of one configuration on an H200): below this factor (or twice the
# measured noise, if larger) it is inert.
INERT = 1.05
Progress = Callable[[float, float | None, str], None]


class Cancelled(Exception):
    """Raised between trials when the job is cancelled (the caller maps it to its job state)."""


class Tuner:
    def __init__(
        self,
        request: TuneRequest,
        plan: Plan,
        runner: TrialRunner,
        ledger: Ledger,
        progress: Progress | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        notes: list[str] | None = None,
    ) -> None:
        self.req, self.plan, self.runner, self.ledger = request, plan, runner, ledger
        self.progress, self.cancelled = progress, cancelled
        self.outcomes: list[Outcome] = []
        self.baseline: Outcome | None = None
        self.best: Outcome | None = None
        self.previous_lossy: Outcome | None = None
        self.notes: list[str] = list(notes or [])
        if ledger.replay:
            self.notes.append(
                f"resumed: {len(ledger.replay)} outcome(s) taken from this job's records, "
                f"{ledger.launches} launch(es) and {ledger.gpu_seconds:.1f} GPU-s already spent"
            )

    # -- measuring through the ledger and the runner ------------------------------------------------
    def trial(
        self, name: str, stage: str, kind: Any, config: dict, floor: str | None = None, request: dict | None = None
    ) -> Trial:
        best = self.best
        near = best.p50_s if best and best.p50_s and stage != "baseline" else None
        band = max(NOISE - 1, 2.83 * (best.p50_se_s or 0) / best.p50_s) if best and best.p50_s else NOISE - 1
        return Trial(
            name=name,
            stage=stage,
            kind=kind,
            config=config,
            request=request or {},
            floor=floor,
            compare_to=self.baseline.run_id if self.baseline else None,
            repeat_near=near,
            repeat_band=band,
        )

    def measure(self, trial: Trial) -> Outcome:
        return self.measure_many([trial])[0]

    def measure_many(self, trials: list[Trial]) -> list[Outcome]:
        """Replayed, reused, skipped (budget) or run: one outcome per trial, each recorded as it is decided."""
        if self.cancelled():
            raise Cancelled()
        results: dict[int, Outcome] = {}
        todo: list[tuple[int, Trial, str]] = []
        for i, t in enumerate(trials):
            key = self.ledger.key(t.config, t.request)
            known = self._known(t, key)
            if known is not None:
                results[i] = known
            elif self.ledger.budget_left() - len(todo) <= 0:
                results[i] = self._skip(t, key, "skipped_budget", "budget", "budget spent")
            else:
                todo.append((i, t, key))
        if todo:
            batch = [(t, list(range(len(t.config.get("gpus") or [0])))) for _, t, _ in todo]
            for (i, _, key), out in zip(todo, self.runner.run_many(batch), strict=True):
                results[i] = self._recorded(out, key)
        return [results[i] for i in range(len(trials))]

    def _known(self, t: Trial, key: str) -> Outcome | None:
        """This job's own record (resume), else a run another tune measured with the same key."""
        out = self.ledger.replayed(key)
        if out is not None:
            self.outcomes.append(out)
            self._tell(out)
            return out
        run_id = self.ledger.reusable_run(key)
        if run_id is None:
            return None
        return self._recorded(self.runner.reuse(t, run_id), key)

    def _skip(self, t: Trial, key: str, status: Any, cause: Any, reason: str) -> Outcome:
        return self._recorded(
            Outcome(
                name=t.name,
                stage=t.stage,
                kind=t.kind,
                status=status,
                cause=cause,
                config=t.config,
                reason=reason,
                request_settings=dict(t.request),
            ),
            key,
        )

    def _recorded(self, out: Outcome, key: str) -> Outcome:
        if out.p50_s and self.baseline and self.baseline.p50_s:
            out.speedup_vs_baseline = self.baseline.p50_s / out.p50_s
        self.ledger.spend(int(out.launched), out.gpu_seconds)
        self.ledger.record(out, key, out.launched)
        self.outcomes.append(out)
        self._tell(out)
        return out

    def _tell(self, out: Outcome) -> None:
        if self.progress:
            self.progress(
                len(self.outcomes),
                None,
                f"{out.name}: {out.status}"
                + (f", p50 {out.p50_s:.3f} s" if out.p50_s else "")
                + (f", {out.verdict}" if out.verdict else ""),
            )

    # -- decisions ----------------------------------------------------------------------------------
    def better(self, a: Outcome, b: Outcome | None) -> bool:
        """a beats b by more than the noise: 2%, or the two p50s' combined standard error, if larger."""
        if b is None:
            return True
        margin = 1 + max(NOISE - 1, noise(a, b))
        if self.req.goal.objective == "throughput":
            return (a.throughput or 0) > (b.throughput or 0) * margin
        return (a.p50_s or 1e18) < (b.p50_s or 1e18) / margin

    def fits(self, out: Outcome) -> bool:
        """Within the goal's per-GPU memory limit (if any); marks it over_memory otherwise."""
        limit = self.req.goal.vram_limit_mib
        if out.status in ("measured", "reused") and limit and out.peak_memory_mib and out.peak_memory_mib > limit:
            out.status, out.reason = (
                "over_memory",
                f"peak {out.peak_memory_mib:.0f} MiB per GPU is over the limit {limit} MiB",
            )
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
        out.status, out.reason = "within_noise", "not faster than the best so far beyond the noise"
        return False

    @staticmethod
    def memory_pressure(out: Outcome) -> bool:
        """Out of memory at load or on the requests, or over the goal's limit: offload, FP8 or sharding may help."""
        return out.status == "over_memory" or out.cause in ("out_of_memory", "out_of_memory_request")

    # -- the search ---------------------------------------------------------------------------------
    def run(self) -> Outcome | None:
        """The search; returns the winner (None: nothing measured fits)."""
        extra = self._baseline()
        if not self.baseline or self.baseline.status not in ("measured", "reused"):
            return None
        self.best = self.baseline
        extra = self._single_gpu(extra)
        if not extra:  # offloaded models stay on one GPU
            flags = {k: v for k, v in self.best.config.items() if k in ("quantization",)}
            for c in self._lossless(multi=True):
                layout = {k: v for k, v in c.config.items() if k not in ("quantization", "enforce_eager")}
                self.consider(
                    self.measure(self.trial(c.name, "lossless", c.kind, {**layout, **flags}, "lossless")), "lossless"
                )
        if self.req.goal.quality == "lossy":
            self._lossy_sweep(self.req.goal.quality_floor)
            self._request_sweep(self.req.goal.quality_floor)
        return self.best

    def _baseline(self) -> dict:
        """Eager on one GPU; under memory pressure the guide's offloads in order, then the fewest GPUs whose tensor
        parallelism shards the weights enough. Returns what every later candidate must keep to fit."""
        base = next(c for c in self.plan.candidates if c.kind == "baseline")
        base_cfg = dict(base.config)
        self.baseline = self.measure(self.trial("baseline", "baseline", "baseline", base_cfg))
        if self.fits(self.baseline) or not self.memory_pressure(self.baseline):
            return {}
        for c in [c for c in self.plan.candidates if c.kind == "offload"]:
            offload = {k: v for k, v in c.config.items() if k != "gpus"}
            trial = self.measure(self.trial(f"baseline + {c.name}", "baseline", "offload", {**base_cfg, **offload}))
            if self.fits(trial):
                self.baseline = trial
                return offload
        for c in self._lossless(multi=True):
            n = c.config.get("tensor_parallel_size")
            if n and not set(c.config) - {"tensor_parallel_size", "gpus", "quantization"}:
                sharded = {"tensor_parallel_size": n, "gpus": c.config["gpus"]}
                trial = self.measure(self.trial(f"baseline (TP {n})", "baseline", "layout", {**base_cfg, **sharded}))
                if self.fits(trial):
                    self.baseline = trial
                    return sharded
        return {}

    def _single_gpu(self, extra: dict) -> dict:
        """The guide's single-GPU recipe (compile + FP8) first where FP8 is native; its parts only if it fails.
        Returns the offload still needed.

        With native FP8 the stacked recipe is the expected winner, so measuring compile alone first would
        spend a launch to learn what the recipe shows anyway. Without native FP8 (weight-only fallback, no
        speed-up) methods are added one at a time and kept only when they help.
        """
        single = self._lossless(multi=False)
        fp8 = [c for c in single if c.config.get("quantization")]
        if extra and fp8:  # FP8 halves the DiT weights: it may fit without what the baseline needed
            label = "on one GPU" if "gpus" in extra else "without offload"
            out = self.measure(
                self.trial(f"{fp8[-1].name} {label}", "lossless", "single_gpu", fp8[-1].config, "lossless")
            )
            if self.consider(out, "lossless"):
                self._not_needed(single, fp8[-1], {})
                return {}
        if self.plan.fp8_native and len(single) > 1:
            stacked = single[-1]
            out = self.measure(
                self.trial(stacked.name, "lossless", stacked.kind, {**stacked.config, **extra}, "lossless")
            )
            if self.consider(out, "lossless"):
                self._not_needed(single, stacked, extra)
                return extra
            single = single[:-1]
        for c in single:
            self.consider(
                self.measure(self.trial(c.name, "lossless", c.kind, {**c.config, **extra}, "lossless")), "lossless"
            )
        return extra

    def _not_needed(self, single: list[Candidate], winner: Candidate, extra: dict) -> None:
        for c in single:
            if c is winner:
                continue
            key = self.ledger.key({**c.config, **extra})
            replayed = self.ledger.replayed(key)
            if replayed is not None:
                self.outcomes.append(replayed)
                continue
            self._recorded(
                Outcome(
                    name=c.name,
                    stage="lossless",
                    kind=c.kind,
                    status="not_needed",
                    config=c.config,
                    reason=f"{winner.name} (which includes it) passed the gate and won",
                ),
                key,
            )

    def _lossy_sweep(self, floor: str) -> None:
        """Server-level lossy settings, gentle to aggressive; stop at the cliff, flag settings that do nothing."""
        assert self.best is not None
        self.previous_lossy = self.best
        for c in [c for c in self.plan.candidates if c.kind == "cache"]:
            cfg = {
                **{k: v for k, v in self.best.config.items() if k not in ("cache_backend", "cache_config")},
                **c.config,
            }
            out = self.measure(self.trial(c.name, "lossy", c.kind, cfg, floor))
            if not self.accept(out, floor):
                if out.status == "rejected_quality":  # the cliff: stronger settings only get worse
                    out.reason = (out.reason or "") + "; sweep stopped at the quality cliff"
                    break
                continue
            previous = self.previous_lossy
            if (
                out.p50_s
                and previous.p50_s
                and same_pixels(out, previous)
                and out.p50_s > previous.p50_s / max(INERT, 1 + 2 * noise(out, previous))
            ):
                out.status, out.reason = "inert", "no speed-up and no change in the pixels: this setting does nothing"
                continue
            if self.better(out, self.best):
                self.best = out
            self.previous_lossy = out

    def _request_sweep(self, floor: str) -> None:
        """Steps and guidance on the best configuration, inside one (re)launched server; steps stop at the cliff."""
        best, steps = self.best, self.req.workload.num_inference_steps
        assert best is not None
        variants: list[tuple[Candidate, dict]] = []
        for c in [c for c in self.plan.candidates if c.kind == "request"]:
            settings = request_settings(c.request, steps)
            if settings is None:
                self.notes.append(f"{c.name}: not measured, the workload sets no num_inference_steps to scale")
            else:
                variants.append((c, settings))
        if not variants:
            return
        gpus = list(range(len(best.config.get("gpus") or [0])))
        with self.runner.session(self.trial(best.name, "lossy", best.kind, best.config, floor), gpus) as session:
            stop_steps, opened = False, False
            for c, settings in variants:
                if self.cancelled():
                    raise Cancelled()
                is_steps = "num_inference_steps" in settings
                if is_steps and stop_steps:
                    continue
                t = self.trial(f"{best.name} + {c.name}", "lossy", "request", best.config, floor, settings)
                key = self.ledger.key(t.config, settings)
                out = self._known(t, key)
                if out is None and not opened and self.ledger.budget_left() <= 0:
                    out = self._skip(t, key, "skipped_budget", "budget", "budget spent")
                elif out is None:
                    opened = True
                    out = self._recorded(session.measure(t), key)
                if out.status in ("measured", "reused") and out.p50_s and best.p50_s and out.p50_s > best.p50_s / INERT:
                    out.status = "inert" if same_pixels(out, best) else "within_noise"
                    out.reason = "no speed-up over the same configuration with default request settings" + (
                        ": this setting does nothing here" if out.status == "inert" else "; pictures change"
                    )
                    continue
                if not self.accept(out, floor):
                    if out.status == "rejected_quality" and is_steps:
                        out.reason = (out.reason or "") + "; fewer steps stopped at the quality cliff"
                        stop_steps = True
                    continue
                if self.better(out, self.best):
                    self.best = out

    def _lossless(self, multi: bool) -> list[Candidate]:
        return [c for c in self.plan.candidates if c.kind == ("layout" if multi else "single_gpu")]
