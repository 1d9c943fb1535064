"""The tune's search policy: which candidates to measure, in which order, and what their outcomes decide.

baseline -> lossless (one GPU, then parallel layouts ranked by the cost model; for the throughput objective,
replicas of the best at each width) -> lossy (each cache backend swept to its quality cliff, then bisected, on one
GPU with the best layout's settings where that was measured, and the best confirmed on the layout) ->
request-level settings (steps, guidance) inside one server.
The policy launches nothing itself: it asks a :class:`~tools.tune.trial.TrialRunner` (``run_many`` for a
stage's screening, a ``session`` for request variants) through :class:`~tools.tune.decide.Decisions`, which
keeps the books in the ledger. So it is tested in memory against a fake runner (tests/test_tune_policy.py).
"""

from __future__ import annotations

import statistics

from omnitune.tools.plan import Candidate
from omnitune.tools.tune.costmodel import LAYOUT, SP_DIMENSIONS, gpus_of, layout_of
from omnitune.tools.tune.decide import NOISE, Cancelled, Decisions, Progress
from omnitune.tools.tune.models import ACCEPT, Outcome
from omnitune.tools.tune.replicas import replicas_of
from omnitune.tools.tune.stats import noise, same_outputs, same_pixels
from omnitune.tools.tune.trial import SP_IGNORED, Trial, request_settings

__all__ = ["NOISE", "Cancelled", "Progress", "Tuner"]
# A setting whose pixels match the previous one's skips no work, so any speed difference is launch-to-launch
# noise (3.5% seen between two launches of one configuration on an H200): below this factor (or twice the
# measured noise, if larger) it is inert.
INERT = 1.05
WORTH = 1.05          # a wider layout is launched only if predicted this much faster than the best so far
WIDER_ROUNDS = 4      # rounds of wider layouts (as many as run at once), then the model re-fitted, target raised
SCREEN = 2            # narrowest layouts screened together first (the priors' best two)
PRIOR_SLACK = 1.15    # how far an unmeasured dimension may beat its prior
BISECTIONS = 2        # threshold refinements between the last passing and the first failing rung
REPLICA_EFF = 0.95    # throughput per replica, of one server's (3.83x on 4 replicas in vLLM-Omni #4707)
CONFIRM_FALLBACKS = 1  # gentler passing settings tried on the layout when the one-GPU sweep's best fails there
# A cache sweep on one GPU may take up to this much longer per threshold than on the layout (wall time, with as many
# side by side as the runner runs at once): it holds one GPU where the layout holds k. Beyond it (a long video on
# one GPU, one trial at a time) the sweep runs on the layout.
PROXY_WALL = 1.5
# What spreads one configuration over GPUs (dropped, the rest on one GPU is the lossy sweep's stand-in)
SPREAD = (*LAYOUT, "vae_patch_parallel_size", "replicas")
CACHE = ("cache_backend", "cache_config")


class Tuner(Decisions):
    def run(self) -> Outcome | None:
        """The search; returns the winner (None: nothing measured fits)."""
        try:
            return self._search()
        finally:
            self.settle()

    def _search(self) -> Outcome | None:
        lossy = self.req.goal.quality == "lossy"
        self.reserve = 1 if lossy and any(c.kind == "request" for c in self.plan.candidates) else 0
        # and one to confirm on the winning layout what the cache sweep found on one GPU (released if it runs
        # on the layout itself)
        self._kept = 1 if lossy and self.plan.gpus > 1 else 0
        self.reserve += self._kept
        self._later: list[Trial] = []  # hinted behind every hint of the lossless stage (idle GPUs only)
        self._ahead_first()
        extra = self._baseline()
        if not self.baseline or self.baseline.status not in ("measured", "reused"):
            return None
        self.best = self.baseline
        extra = self._single_gpu(extra)
        if lossy and not extra and self.best and gpus_of(self.best.config) == 1 and self._sweep_here(self.best):
            # the cache sweep will likely run on this one-GPU configuration whatever layout wins (see
            # _lossy_sweep): its first rungs can use GPUs the layout rounds leave idle
            self._later = self._rungs(self.best.config, self.req.goal.quality_floor)
        self._layouts(extra)
        if lossy:
            self._ahead_lossy()
        self._vae_patch()
        self._replicas()
        if lossy:
            self._lossy_sweep(self.req.goal.quality_floor)
            self.reserve = 0
            self._request_sweep(self.req.goal.quality_floor)
        self._memory_note()
        return self.best

    # -- baseline and one GPU -------------------------------------------------------------------------
    def _baseline(self) -> dict:
        """Eager on one GPU; under memory pressure (out of memory at load or per request, over the limit) the
        offloads in order, then the fewest GPUs that shard enough (TP, layerwise offload over the SP group,
        HSDP). Returns what every later candidate must keep to fit."""
        base = next(c for c in self.plan.candidates if c.kind == "baseline")
        base_cfg = dict(base.config)
        self.baseline = self.measure(self.trial("baseline", "baseline", "baseline", base_cfg))
        if self.fits(self.baseline) or not self.memory_pressure(self.baseline):
            return {}
        self.ahead([])  # what was hinted assumed it fits as it is: nothing more of it is started
        for c in [c for c in self.plan.candidates if c.kind == "offload" and gpus_of(c.config) == 1]:
            offload = {k: v for k, v in c.config.items() if k != "gpus"}
            trial = self.measure(self.trial(f"baseline + {c.name}", "baseline", "offload", {**base_cfg, **offload}))
            if self.fits(trial):
                self.baseline = trial
                return offload
        wider = [c for c in self.plan.candidates if gpus_of(c.config) > 1 and (
            c.kind in ("offload", "sharded") or set(c.config) <= {"tensor_parallel_size", "gpus", "quantization"})]
        for c in sorted(wider, key=lambda c: (gpus_of(c.config), c.kind != "layout")):
            sharded = {k: v for k, v in c.config.items() if k != "quantization"}
            tp = c.config.get("tensor_parallel_size")
            name = f"baseline (TP {tp})" if c.kind == "layout" else f"baseline ({c.name})"
            trial = self.measure(self.trial(name, "baseline", c.kind, {**base_cfg, **sharded}))
            if self.fits(trial):
                self.baseline = trial
                return sharded
        return {}

    def _single_gpu(self, extra: dict) -> dict:
        """The guide's single-GPU recipe (compile + FP8) first where FP8 is native; its parts only if it fails.
        Returns what is still needed to fit.

        With native FP8 the stacked recipe is the expected winner, so measuring compile alone first would
        spend a launch to learn what the recipe shows anyway. Without native FP8 (weight-only fallback, no
        speed-up) methods are added one at a time and kept only when they help.
        """
        single = self._lossless_single()
        fp8 = [c for c in single if c.config.get("quantization")]
        if extra and fp8:  # FP8 halves the DiT weights: it may fit without what the baseline needed
            label = "on one GPU" if "gpus" in extra else "without offload"
            out = self.measure(self.trial(f"{fp8[-1].name} {label}", "lossless", "single_gpu", fp8[-1].config,
                                          "lossless"))
            if self.consider(out, "lossless"):
                self._not_needed(single, fp8[-1], {})
                return {}
        if self.plan.fp8_native and len(single) > 1:
            stacked = single[-1]
            out = self.measure(self.trial(stacked.name, "lossless", stacked.kind, {**stacked.config, **extra},
                                          "lossless"))
            if self.consider(out, "lossless"):
                self._not_needed(single, stacked, extra)
                return extra
            single = single[:-1]
        for c in single:
            self.consider(self.measure(self.trial(c.name, "lossless", c.kind, {**c.config, **extra}, "lossless")),
                          "lossless")
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
            self._recorded(Outcome(name=c.name, stage="lossless", kind=c.kind, status="not_needed", config=c.config,
                                   reason=f"{winner.name} (which includes it) passed the gate and won"), key)

    # -- parallel layouts -------------------------------------------------------------------------------
    def _layouts(self, extra: dict) -> None:
        """The narrowest layouts screened (the priors' best two together, then those the priors leave a chance);
        wider ones only where the cost model, fitted to what was measured, predicts a gain beyond the best so far:
        a dimension that gave nothing on 2 GPUs predicts nothing on 4, one the server ignored is inert."""
        assert self.best is not None
        ref = self.best
        first, rest = self._layout_pool(ref.config, extra)
        width = self._screen_width(first, rest)
        guess = max([self._gain(ref), *(self.cost.gain(cfg) for _, cfg in first[:width])])
        self._ahead_layouts(self._wider(rest, guess))  # if the narrowest scale as the model says
        self._screen_layouts(first[:width], ref)
        left = first[width:]  # the rest of the narrowest layouts: unless the priors leave them a chance
        while left:
            target = self._gain(ref)
            chance = [p for p in left if self.cost.optimistic(p[1], PRIOR_SLACK) > target * WORTH]
            if rest:  # one batch: the wider rounds re-fit the model
                self._screen_layouts(chance, ref)
                break
            # nothing wider to screen for: as many as run at once, then the model re-fitted (Ulysses measured poor
            # over PCIe predicts Ring and TP poor too, without launching them)
            batch = sorted(chance, key=lambda p: -self.cost.gain(p[1]))[:width]
            if not batch:
                break
            self._screen_layouts(batch, ref)
            left = [p for p in left if p not in batch]
        for _ in range(WIDER_ROUNDS):
            target = self._gain(ref)
            pick = self._wider(rest, target)
            if not pick:
                break
            rest = [p for p in rest if p not in pick]
            guess = max([target, *(self.cost.gain(cfg) for _, cfg in pick)])
            self._ahead_layouts(self._wider(rest, guess), beside=pick)  # the next round, if these scale as predicted
            self._screen_layouts(pick, ref)
        late = self._ready(first + rest)  # measured ahead on idle GPUs, never asked for: evidence already paid for
        if late:
            rest = [p for p in rest if p not in late]
            self._screen(late, ref)
        if rest:
            top = max(self.cost.gain(cfg) for _, cfg in rest)
            self.notes.append(f"{len(rest)} wider layout(s) not launched: the cost model fitted to the measured ones "
                              f"predicts at most {top:.2f}x over one GPU, against {self._gain(ref):.2f}x measured")

    def _screen_width(self, first: list[tuple[Candidate, dict]], rest: list[tuple[Candidate, dict]]) -> int:
        """How many of the narrowest layouts are screened before the search reads any: the priors' best two (or as
        many as run at once), so that two dimensions' scaling predicts the wider layouts. With no wider layout
        (2 GPUs), only the narrowest compete: as many as run at once, then the rest only where the priors leave
        them a chance against what was measured (a 2-GPU host measured Ulysses 2 after CFG 2 had already
        beaten what its prior allowed it). Not on a Ray cluster: its width changes as nodes come and go, and a
        tune resumed after a node was lost must ask again what it asked before (the trial lost with the node)."""
        if rest or not first or getattr(self.runner, "ray", None) is not None:
            return max(SCREEN, getattr(self.runner, "concurrency", 1))
        return max(1, self._width(gpus_of(first[0][1])))

    def _layout_pool(self, ref: dict, extra: dict) -> tuple[list[tuple[Candidate, dict]], list[tuple[Candidate, dict]]]:
        """The layouts on top of ``ref`` (its quantization kept): the narrowest, best prior first, and the wider."""
        keep = {k: v for k, v in ref.items() if k == "quantization"}
        kinds = ("layout",) if not extra else ("layout", "offload", "sharded")
        pool = [(c, {**{k: v for k, v in c.config.items() if k not in ("quantization", "enforce_eager")}, **keep})
                for c in self.plan.candidates if c.kind in kinds and gpus_of(c.config) > 1]
        if gpus_of(ref) > 1:  # already sharded over n GPUs to fit: fewer would not
            pool = [(c, cfg) for c, cfg in pool if gpus_of(cfg) >= gpus_of(ref)]
        narrow = min((gpus_of(cfg) for _, cfg in pool), default=0)
        first = sorted([p for p in pool if gpus_of(p[1]) == narrow], key=lambda p: -self.cost.gain(p[1]))
        return first, [p for p in pool if gpus_of(p[1]) > narrow]

    def _wider(self, rest: list[tuple[Candidate, dict]], target: float) -> list[tuple[Candidate, dict]]:
        """One round of wider layouts: those that may beat ``target`` (a dimension never measured keeps its prior's
        slack), best predicted first, as many as run at once: the model is re-fitted and the target raised before
        the next round. Layouts the memory estimate says cannot fit take no round."""
        ranked = sorted(rest, key=lambda p: -self.cost.gain(p[1]))
        pick = [p for p in ranked if self.cost.optimistic(p[1], PRIOR_SLACK) > target * WORTH and not (
            self.memory and self.memory.doomed(p[1], self.req.goal.vram_limit_mib))]
        return pick[:min(self._width(gpus_of(p[1])) for p in pick)] if pick else pick

    # -- what to start ahead (a runner with idle GPUs; a sequential one ignores it) ------------------------------
    def _ahead_first(self) -> None:
        """Before the baseline: what the search asks next if the baseline fits and the single-GPU recipe passes
        (the recipe, then the narrowest layouts with its quantization)."""
        single = self._lossless_single()
        if not single:
            return
        first = [single[-1]] if self.plan.fp8_native and len(single) > 1 else single
        trials = [self.trial(c.name, "lossless", c.kind, c.config, "lossless") for c in first]
        narrow, rest = self._layout_pool(first[-1].config if self.plan.fp8_native else {}, {})
        width = self._screen_width(narrow, rest)
        picks = narrow[:width]
        # and the first wider round if the narrowest scale as the priors say: started as their GPUs free up, not
        # after the search has read them (a wave of its own on the critical path otherwise)
        wider = self._wider(rest, max([1.0, *(self.cost.gain(cfg) for _, cfg in picks)])) if picks else []
        picks = self._one_hold_each(picks + wider)[0]
        self.ahead(trials + [self.trial(c.name, "lossless", c.kind, cfg, "lossless") for c, cfg in picks])

    def _ready(self, pairs: list[tuple[Candidate, dict]]) -> list[tuple[Candidate, dict]]:
        """Those of ``pairs`` a runner has already measured ahead of the search (asking for them launches
        nothing)."""
        keys = getattr(self.runner, "ready", lambda: set())()
        return [p for p in pairs if self.ledger.key(p[1]) in keys]

    def _ahead_layouts(self, picks: list[tuple[Candidate, dict]],
                       beside: list[tuple[Candidate, dict]] | None = None) -> None:
        """Hint ``picks`` to run ahead of the search. Not where the round ``beside`` is one trial and a pick cannot
        start until it ends: the search decides then anyway (in the time a comparison takes), and a trial started
        in its place is a launch spent on a guess (4 L4s: a 4-GPU layout started behind each 4-GPU one, 11 GPU-s
        of 112 never asked for)."""
        if beside and len(beside) == 1:
            free = self.plan.gpus - gpus_of(beside[0][1])
            picks = [p for p in picks if gpus_of(p[1]) <= free]
        picks = self._one_hold_each(picks)[0]
        self.ahead([self.trial(c.name, "lossless", c.kind, cfg, "lossless") for c, cfg in picks])

    def ahead(self, trials: list[Trial]) -> None:
        super().ahead([*trials, *getattr(self, "_later", [])])

    def _ahead_lossy(self) -> None:
        """Each cache backend's first rungs where the sweep will run them (each backend is swept anyway)."""
        assert self.best is not None
        on = self._proxy(self.best) or self.best
        self._later = []
        self.ahead(self._rungs(on.config, self.req.goal.quality_floor))

    def _rungs(self, config: dict, floor: str) -> list[Trial]:
        """Each cache backend's first rungs on ``config``, as many per backend as run at once."""
        base = {k: v for k, v in config.items() if k not in CACHE}
        wave = self._width(gpus_of(base))
        return [self.trial(d.name, "lossy", "cache", {**base, **d.config}, floor)
                for ladder in self._ladders().values() for d in ladder[:wave]]

    def _ladders(self) -> dict[str, list[Candidate]]:
        backends: dict[str, list[Candidate]] = {}
        for c in [c for c in self.plan.candidates if c.kind == "cache"]:
            backends.setdefault(c.config["cache_backend"], []).append(c)
        return backends

    def _width(self, gpus: int) -> int:
        """Trials of ``gpus`` GPUs the runner measures at once (1: one at a time)."""
        width = getattr(self.runner, "width", None)
        return width(gpus) if width else 1

    def _one_hold_each(self, pairs: list[tuple[Candidate, dict]]) -> tuple[list[tuple[Candidate, dict]],
                                                                            list[tuple[Candidate, dict]]]:
        """``pairs`` split into (each layout once, in order; the same layouts held another way). A pair that
        launches nothing (doomed by the memory estimate, or already measured ahead) holds no layout's place."""
        now: list[tuple[Candidate, dict]] = []
        later: list[tuple[Candidate, dict]] = []
        held: list[dict[str, int]] = []
        ready = self._ready(pairs)
        for p in pairs:
            free = p in ready or bool(self.memory and self.memory.doomed(p[1], self.req.goal.vram_limit_mib))
            if not free and layout_of(p[1]) in held:
                later.append(p)
                continue
            now.append(p)
            if not free:
                held.append(layout_of(p[1]))
        return now, later

    def _screen_layouts(self, batch: list[tuple[Candidate, dict]], ref: Outcome) -> None:
        """``batch`` screened with each layout held one way at a time (layerwise offload, HSDP, resident): once one
        way is measured, the cost model predicts the others from it, and only those still with a chance run (over
        PCIe, HSDP after layerwise offload on the same SP layout never does). Side by side, both ways once took a
        fifth of a tune's GPU-seconds (4 L4s, Ulysses 2 with layerwise offload and with HSDP, within the noise)."""
        while batch:
            now, later = self._one_hold_each(batch)
            self._screen(now, ref)
            target = self._gain(ref)
            batch = [p for p in later if self.cost.optimistic(p[1], PRIOR_SLACK) > target * WORTH]

    def _screen(self, batch: list[tuple[Candidate, dict]], ref: Outcome) -> None:
        trials = [self.trial(c.name, "lossless", c.kind, cfg, "lossless") for c, cfg in batch]
        for out in self.measure_many(trials):
            self._after_layout(out, ref)

    def _gain(self, ref: Outcome) -> float:
        """The best speed-up over the one-GPU reference measured so far."""
        return ref.p50_s / self.best.p50_s if self.best and ref.p50_s and self.best.p50_s else 1.0

    def _after_layout(self, out: Outcome, ref: Outcome) -> None:
        """Teach the cost model; a layout whose server says it ignored SP is inert, and so is SP everywhere (unless
        the model drives SP in its own code, which the warning does not see)."""
        if not self.plan.sp_by_hand and any(SP_IGNORED in w for w in out.server_warnings):
            self.cost.mark_inert(SP_DIMENSIONS)
            if out.status != "inert":  # inert already: the trial saw it at load and did not benchmark it
                out.status, out.reason = "inert", "the server log says sequence parallelism was not applied"
            return
        if out.status == "measured" and out.p50_s and ref.p50_s:
            self.cost.learn(out.config, ref.p50_s / out.p50_s)
        elif out.cause == "refused":
            self.cost.refuse(out.config)
        self.consider(out, "lossless")

    def _vae_patch(self) -> None:
        """VAE patch parallel on the best multi-GPU layout, where the server says the VAE takes a real share."""
        best = self.best
        cand = next((c for c in self.plan.candidates if c.kind == "vae_patch"), None)
        if not (cand and best and gpus_of(best.config) > 1 and (best.vae_share or 0) > 0.1):
            return
        cfg = {**best.config, "vae_patch_parallel_size": gpus_of(best.config)}
        self.consider(self.measure(self.trial(f"{best.name} + {cand.name}", "lossless", "vae_patch", cfg,
                                              "lossless")), "lossless")

    # -- replicas (throughput) --------------------------------------------------------------------------
    def _replicas(self) -> None:
        """Throughput only: the best configuration measured at each width (one GPU, each layout's k GPUs), as
        many times as the GPUs hold it (n // k independent servers). Predicted at REPLICA_EFF per replica of the
        width's measured throughput (latency per request is unchanged); launched best-first, only where that
        beats the best throughput so far by WORTH."""
        plan_widths = {gpus_of(c.config) // replicas_of(c.config): replicas_of(c.config)
                       for c in self.plan.candidates if c.kind == "replicas"}
        if not plan_widths or self.best is None:
            return
        if getattr(self.runner, "ray", None) is not None:
            self.notes.append("replicas not measured: a replica trial is several servers behind one balancer on "
                              "one host, and trials run as single Ray tasks here")
            return
        best_at: dict[int, Outcome] = {}
        for o in self.outcomes:
            if o.status not in ("measured", "reused", "within_noise") or not o.throughput or o.stage == "baseline" \
                    or replicas_of(o.config) > 1 or o.request_settings or \
                    (o.verdict and o.verdict not in ACCEPT["lossless"]):
                continue
            k = gpus_of(o.config)
            if k in plan_widths and (k not in best_at or o.throughput > (best_at[k].throughput or 0)):
                best_at[k] = o
        ranked = sorted(((plan_widths[k] * REPLICA_EFF * (o.throughput or 0), k, o) for k, o in best_at.items()),
                        key=lambda t: -t[0])
        for predicted, k, o in ranked:
            if predicted <= (self.best.throughput or 0) * WORTH:
                self.notes.append(f"{plan_widths[k]} replicas of {o.name} not launched: predicted "
                                  f"{predicted:.3g}/s, against {self.best.throughput or 0:.3g}/s measured")
                continue
            r = plan_widths[k]
            if 0 < self.ledger.budget_left() - self.reserve < r:  # none left: measure() records the skip
                self.notes.append(f"{r} replicas of {o.name} not launched: {r} server launches, "
                                  f"{self.ledger.budget_left() - self.reserve} left in the budget")
                continue
            cfg = {**{key: v for key, v in o.config.items() if key != "gpus"}, "replicas": r,
                   "gpus": list(range(r * k))}
            out = self.measure(self.trial(f"{r} replicas x {o.name} ({r * k} GPUs)", "lossless", "replicas", cfg,
                                          "lossless"))
            self.consider(out, "lossless")

    # -- lossy --------------------------------------------------------------------------------------
    def _lossy_sweep(self, floor: str) -> None:
        """Each cache backend, gentle to aggressive: settings that do nothing are flagged inert and each sweep
        stops at its quality cliff; the fastest backend's threshold is then bisected between its last passing and
        its first failing rung.

        Where the best lossless configuration spreads over GPUs and the same settings were measured on one GPU,
        the sweep runs there: parallel layouts compute the same pictures (vLLM-Omni: lossless), so a threshold's
        quality and its place on the speed ladder carry over, and rungs on one GPU each run side by side (a
        6-GPU layout on 8 GPUs takes them one at a time, each holding six GPUs). The fastest passing setting of
        each backend within the noise of the best is then measured and judged on the layout itself."""
        assert self.best is not None
        lossless = self.best
        proxy = self._proxy(lossless)
        if proxy is not None and not self._sweep_here(proxy, lossless):
            self.notes.append(f"cache settings swept on {lossless.name} itself: on one GPU ({proxy.name}) each "
                              f"threshold would take more than {PROXY_WALL:g}x its wall time there")
            proxy = None
        if proxy is None:  # swept on the configuration itself: nothing to confirm
            self.reserve, self._kept = self.reserve - self._kept, 0
        on = proxy or lossless
        base = {k: v for k, v in on.config.items() if k not in CACHE}
        brackets: dict[str, tuple[str, float, float, Outcome]] = {}
        cliffs: dict[str, Outcome] = {}  # each backend's first failing rung (its speed bounds its bracket's)
        passes: dict[str, list[Outcome]] = {}
        backends = self._ladders()
        wave = self._width(gpus_of(base))  # rungs side by side: at most one wave is measured past the cliff
        self._later = []
        spent = False
        for b, (backend, ladder) in enumerate(backends.items()):
            if spent:
                break
            key = next(iter(ladder[0].config["cache_config"]))
            previous, passed = on, None
            queued: list[Outcome] = []
            for i, c in enumerate(ladder):
                value = c.config["cache_config"][key]
                if not queued:  # ahead, if GPUs are idle: the other backends' first rungs (swept anyway)
                    self.ahead([self.trial(d.name, "lossy", "cache", {**base, **d.config}, floor)
                                for other in list(backends.values())[b + 1:] for d in other[:wave]])
                    queued = self.measure_many([self.trial(d.name, "lossy", "cache", {**base, **d.config}, floor)
                                                for d in ladder[i:i + wave]])
                out = queued.pop(0)
                if out.status == "skipped_budget":
                    spent = True
                    break
                if out.cause in ("refused", "launch_gate"):
                    break  # the backend itself is refused: no other threshold will start
                verdict = self._judge_lossy(out, previous, floor)
                if verdict == "cliff":
                    out.reason = (out.reason or "") + "; sweep stopped at the quality cliff"
                    if passed is not None:
                        brackets[backend], cliffs[backend] = (key, passed, value, previous), out
                    break
                if verdict in ("pass", "inert"):
                    passed = value
                    if verdict == "pass":
                        previous = out
                        passes.setdefault(backend, []).append(out)
            self._past_cliff(queued, floor)
        fastest = self._fastest([o for outs in passes.values() for o in outs])
        winner = (fastest.config.get("cache_backend") if fastest else None) if proxy else \
            self.best.config.get("cache_backend")
        for backend in self._to_bisect(winner, brackets, cliffs) if not spent else []:
            if backend != winner and not self.better(cliffs[backend], fastest):
                continue  # its failing rung is no faster than the best passing setting (as found so far)
            last = self._bisect(backend, *brackets[backend], base, floor)
            if last is not None:
                passes[backend].append(last)
                fastest = self._fastest([fastest, last] if fastest else [last])
        self.reserve, self._kept = self.reserve - self._kept, 0
        if proxy is not None:
            self.notes.append(f"cache settings swept on one GPU ({proxy.name}: the settings of {lossless.name} "
                              "without its layout, whose pictures are the same); "
                              + ("the fastest passing one of each backend within the noise of the best measured "
                                 "and judged on the layout" if passes else "none passed, nothing to confirm"))
        if proxy is not None and passes:
            self._confirm(passes, lossless, floor)

    def _to_bisect(self, winner: str | None, brackets: dict[str, tuple[str, float, float, Outcome]],
                   cliffs: dict[str, Outcome]) -> list[str]:
        """The backends whose bracket (last pass, first fail) may be bisected, in order: the fastest backend's,
        then the others by their failing rung's speed. Another backend's is bisected only if that rung ran faster
        than the best passing setting found so far, beyond the noise: speed grows with the threshold, so its
        bracket may hold a passing setting faster than any measured (two backends a hair apart on their ladders
        once left a Cache-DiT threshold 12% faster unfound)."""
        others = sorted((b for b in brackets if b != winner), key=lambda b: self._speed(cliffs[b]))
        return ([winner] if winner in brackets else []) + others

    def _proxy(self, lossless: Outcome) -> Outcome | None:
        """``lossless``'s settings on one GPU, measured and passed (None: it is on one GPU, or they were not)."""
        if gpus_of(lossless.config) <= 1:
            return None
        one = {**{k: v for k, v in lossless.config.items() if k not in SPREAD + CACHE}, "gpus": [0]}
        key = self.ledger.key(one)
        return next((o for o in self.outcomes if o.p50_s and not o.request_settings
                     and o.status in ("measured", "reused", "within_noise")
                     and not (o.verdict and o.verdict not in ACCEPT["lossless"]) and o.config.get("gpus") == [0]
                     and self.ledger.key(o.config) == key), None)

    def _sweep_here(self, one: Outcome, layout: Outcome | None = None) -> bool:
        """Whether a cache sweep on ``one`` (one GPU) takes at most PROXY_WALL x the wall time per threshold of the
        same on ``layout`` (None: on the layout the cost model predicts fastest), each as many side by side as run
        at once. A trial's time: its measured launch and benchmark, or its requests at its p50."""
        if self.plan.gpus <= 1 or not one.p50_s:
            return False
        wl = self.req.workload
        requests = wl.warmup + (wl.measured or 3)
        one_s = (one.gpu_seconds or 0.0) if one.launched else 0.0
        one_s = max(one_s, requests * one.p50_s)
        launch = one_s - requests * one.p50_s
        if layout is not None:
            k, p50 = gpus_of(layout.config), layout.p50_s or one.p50_s
            measured = (layout.gpu_seconds or 0.0) / k if layout.launched else 0.0
            layout_s = measured if measured and one.launched else launch + requests * p50
        else:
            pool = [c.config for c in self.plan.candidates if c.kind == "layout" and gpus_of(c.config) > 1]
            if not pool:
                return False
            top = max(pool, key=self.cost.gain)
            k, layout_s = gpus_of(top), launch + requests * one.p50_s / max(self.cost.gain(top), 1.0)
        return one_s / self._width(1) <= PROXY_WALL * layout_s / self._width(k)

    def _fastest(self, outs: list[Outcome]) -> Outcome | None:
        top: Outcome | None = None
        for o in outs:
            if top is None or self.better(o, top):
                top = o
        return top

    def _speed(self, out: Outcome) -> float:
        return -(out.throughput or 0) if self.req.goal.objective == "throughput" else (out.p50_s or 1e18)

    def _confirm(self, passes: dict[str, list[Outcome]], lossless: Outcome, floor: str) -> None:
        """The one-GPU sweep's fastest passing setting of each backend (those within the noise of the fastest)
        measured on ``lossless``'s layout and judged there; one rejected there falls back to its backend's next
        gentler passing setting, up to CONFIRM_FALLBACKS times."""
        base = {k: v for k, v in lossless.config.items() if k not in CACHE}
        ranked = {b: sorted(outs, key=self._speed) for b, outs in passes.items()}
        tops = sorted(((b, outs[0]) for b, outs in ranked.items()), key=lambda t: self._speed(t[1]))
        queue = [(b, o) for b, o in tops if o is tops[0][1] or not self.better(tops[0][1], o)]
        tries = dict.fromkeys(ranked, 0)
        while queue:
            trials = [self.trial(f"{o.name} on {lossless.name}", "lossy", "cache",
                                 {**base, **{k: o.config[k] for k in CACHE}}, floor) for _, o in queue]
            again = []
            for (b, o), out in zip(queue, self.measure_many(trials), strict=True):
                if out.status == "skipped_budget":
                    return
                if self.consider(out, floor):
                    continue
                gentler = ranked[b][ranked[b].index(o) + 1:]
                if out.status == "rejected_quality" and gentler and tries[b] < CONFIRM_FALLBACKS:
                    tries[b] += 1
                    out.reason = (out.reason or "") + f"; on one GPU it passed: {gentler[0].name} tried instead"
                    again.append((b, gentler[0]))
            queue = again

    def _past_cliff(self, queued: list[Outcome], floor: str) -> None:
        for o in queued:  # measured in the same side-by-side wave as the cliff: no decision taken on them
            self.accept(o, floor)
            o.reason = (o.reason or "") + "; measured in the wave that found the cliff, not considered"

    def _bisect(self, backend: str, key: str, passed: float, failed: float, previous: Outcome, base: dict,
                floor: str) -> Outcome | None:
        """The passing threshold closest to the cliff: halve the interval between the last pass and first fail
        BISECTIONS times; a runner that measures that many at once gets the points bisection could visit in one
        wave. Returns the last setting that passed (None: none did)."""
        def trial(mid: float) -> Trial:
            return self.trial(f"{backend} {mid} (bisection)", "lossy", "cache",
                              {**base, "cache_backend": backend, "cache_config": {key: mid}}, floor)

        last = None
        n = 2 ** BISECTIONS
        if self._width(gpus_of(base)) >= n - 1 and self.ledger.budget_left() - self.reserve >= n - 1:
            points = [round(passed + (failed - passed) * i / n, 4) for i in range(1, n)]
            outs = self.measure_many([trial(p) for p in points])
            for k, out in enumerate(outs):
                verdict = self._judge_lossy(out, previous, floor)
                if verdict == "pass":
                    previous = last = out
                elif verdict != "inert":
                    self._past_cliff(outs[k + 1:], floor)
                    break
            return last
        for _ in range(BISECTIONS):
            mid = round((passed + failed) / 2, 4)
            out = self.measure(trial(mid))
            verdict = self._judge_lossy(out, previous, floor)
            if verdict == "cliff":
                failed = mid
            elif verdict in ("pass", "inert"):
                passed, previous = mid, out
                last = out if verdict == "pass" else last
            else:
                break
        return last

    def _judge_lossy(self, out: Outcome, previous: Outcome, floor: str) -> str:
        """'cliff' (rejected on quality), 'inert' (same pixels, no gain), 'pass' or 'other' (failed, budget)."""
        if not self.accept(out, floor):
            return "cliff" if out.status == "rejected_quality" else "other"
        if out.p50_s and previous.p50_s and same_pixels(out, previous) and (
                out.p50_s > previous.p50_s / max(INERT, 1 + 2 * noise(out, previous)) or same_outputs(out, previous)):
            # the very same pictures: the cache reused nothing, so an apparent gain is the clock's (a busy host)
            out.status, out.reason = "inert", "no speed-up and no change in the pixels: this setting does nothing"
            return "inert"
        if self.better(out, self.best):
            self.best = out
        return "pass"

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
        gpus = list(range(gpus_of(best.config)))
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
                if not self.accept(out, floor):  # quality first: pixels are not subject to the clock's noise
                    if out.status == "rejected_quality" and is_steps:
                        out.reason = (out.reason or "") + "; fewer steps stopped at the quality cliff"
                        stop_steps = True
                    continue
                if out.p50_s and best.p50_s and out.p50_s > best.p50_s / INERT:
                    out.status = "inert" if same_pixels(out, best) else "within_noise"
                    out.reason = "no speed-up over the same configuration with default request settings" + \
                        (": this setting does nothing here" if out.status == "inert" else "; pictures change")
                    continue
                if self.better(out, self.best):
                    self.best = out

    # -- helpers ----------------------------------------------------------------------------------
    def _lossless_single(self) -> list[Candidate]:
        return [c for c in self.plan.candidates if c.kind == "single_gpu"]

    def _memory_note(self) -> None:
        """Estimate vs measured per-GPU memory over every launch that had both."""
        pairs = [(o.estimate_mib, o.peak_memory_mib) for o in self.outcomes
                 if o.launched and o.estimate_mib and o.peak_memory_mib]
        if pairs:
            errors = [abs(e - m) / m for e, m in pairs]
            self.notes.append(f"memory estimate vs measured peak per GPU over {len(pairs)} launch(es): median error "
                              f"{statistics.median(errors):.0%}, worst {max(errors):.0%}")
