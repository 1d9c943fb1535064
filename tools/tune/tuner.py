"""``tune``: baseline -> lossless -> lossy (gated on quality) on real launches, returning the best command.

Each server-level candidate is launched, benchmarked with the same workload, compared with the baseline and
stopped. Request-level settings (steps, guidance) are measured inside one server running the best
configuration. Every outcome is written to ``tune_candidates`` as it is decided, so:
- a configuration measured before (same model, serve settings, GPU count, executable and workload) is reused
  from the store instead of being launched again;
- a job whose omnitune died is resumed under its own id: its recorded outcomes are replayed (failures
  included) and the search goes on from the first candidate it had not finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable

from omnitune.tools.benchmark import BenchmarkTarget, run_benchmark
from omnitune.tools.compare import compare_runs
from omnitune.tools.errors import LaunchError, OmnituneError
from omnitune.tools.launch import ServeConfig
from omnitune.tools.launch.launcher import Launcher, quote
from omnitune.tools.plan import Candidate, Plan, make_plan
from omnitune.tools.tune.models import ACCEPT, Outcome, TuneRequest, TuneResult
from omnitune.tools.tune.report import markdown, pareto
from omnitune.tools.tune.request_level import RequestSweep, request_settings
from omnitune.tools.workspace import Workspace

NOISE = 1.02  # "faster" must beat the best by more than this factor
# A setting whose pixels match the previous one's skips no work, so any speed difference is launch-to-launch
# noise (3.5% seen between two launches of one configuration on an H200): below this factor (or twice the
# measured noise, if larger) it is inert.
INERT = 1.05


class Tuner:
    def __init__(self, workspace: Workspace, launcher: Launcher, request: TuneRequest, job_id: str,
                 progress: Callable[[float, float | None, str], None] | None = None,
                 cancelled: Callable[[], bool] = lambda: False, plan: Plan | None = None,
                 notes: list[str] | None = None) -> None:
        self.ws, self.launcher, self.req, self.job_id = workspace, launcher, request, job_id
        self.progress, self.cancelled = progress, cancelled
        self.plan = plan or make_plan(launcher.settings, request.model, request.goal)
        self.outcomes: list[Outcome] = []
        self.launches, self.gpu_seconds = 0, 0.0
        self.baseline: Outcome | None = None
        self.best: Outcome | None = None
        self.previous_lossy: Outcome | None = None
        self.notes: list[str] = list(notes or [])
        self.version = launcher.settings.vllm
        self.replay: dict[str, Outcome] = {}
        self.next_idx = 0
        self._load_own_records()
        from omnitune.tools.tune.screen import screen_for
        self.screen = screen_for(self)  # None: one trial at a time
        self.prefetched: dict[str, Outcome] = {}  # measured side by side ahead of the policy asking (by key)

    # -- records ------------------------------------------------------------------------------------
    def _load_own_records(self) -> None:
        """A resumed job: its decided outcomes (budget spent included) replay instead of being redone."""
        for row in self.ws.store.query("SELECT idx, data FROM tune_candidates WHERE job_id = ? ORDER BY idx",
                                       (self.job_id,)):
            data = json.loads(row["data"] or "{}")
            self.next_idx = row["idx"] + 1
            if "outcome" in data:
                self.replay[data["key"]] = Outcome.model_validate({**data["outcome"], "resumed": True})
                self.launches += int(data.get("launched", 0))
                self.gpu_seconds += float(data.get("gpu_seconds", 0.0))
        if self.replay:
            self.notes.append(f"resumed: {len(self.replay)} outcome(s) taken from this job's records, "
                              f"{self.launches} launch(es) and {self.gpu_seconds:.1f} GPU-s already spent")

    def key(self, config: dict, request: dict | None = None) -> str:
        """Identity of a measurement: serve settings, GPU count, executable, workload, request settings."""
        canon = ServeConfig(model=self.req.model, **config).canonical()
        blob = json.dumps({"c": canon, "n": len(config.get("gpus") or [0]), "w": self.req.workload.model_dump(mode="json"),
                           "v": self.version, "r": request or {}}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _known(self, name: str, stage: str, config: dict, key: str, request: dict | None = None,
               own_only: bool = False) -> Outcome | None:
        """This job's own record (resume), else a run another tune measured with the same key."""
        if key in self.replay:
            out = self.replay.pop(key)
            self.outcomes.append(out)
            self._tell(out)
            return out
        if own_only:
            return None
        row = self.ws.store.query_one(
            "SELECT run_id FROM tune_candidates WHERE status IN ('measured', 'reused') AND run_id IS NOT NULL "
            "AND json_extract(data, '$.key') = ? ORDER BY rowid DESC LIMIT 1", (key,))
        if row is None:
            return None
        out = self._outcome_from_run(name, stage, config, row["run_id"], "reused",
                                     "measured before with the same model, settings, GPUs and workload")
        out.request_settings = dict(request or {})
        self._judge(out)
        self._record(out, key, launched=False)
        return out

    def _record(self, out: Outcome, key: str, launched: bool) -> None:
        self.outcomes.append(out)
        self.ws.store.insert("tune_candidates", {
            "job_id": self.job_id, "idx": self.next_idx, "config": out.config, "status": out.status,
            "reason": out.reason, "run_id": out.run_id,
            "data": {"key": key, "launched": launched, "gpu_seconds": out.gpu_seconds,
                     "outcome": out.model_dump(mode="json")}})
        self.next_idx += 1
        self._tell(out)

    def _tell(self, out: Outcome) -> None:
        if self.progress:
            self.progress(len(self.outcomes), None, f"{out.name}: {out.status}"
                          + (f", p50 {out.p50_s:.3f} s" if out.p50_s else "") + (f", {out.verdict}" if out.verdict else ""))

    def _check_cancelled(self) -> None:
        if self.cancelled():
            from omnitune.tools.jobs import JobCancelled
            raise JobCancelled()

    def _budget_spent(self) -> bool:
        return self.launches >= self.req.max_launches or bool(
            self.req.max_gpu_seconds and self.gpu_seconds >= self.req.max_gpu_seconds)

    # -- one server-level candidate -----------------------------------------------------------------
    def measure(self, name: str, stage: str, config: dict, floor: str | None = None,
                then: Callable[[str], None] | None = None) -> Outcome:
        """One server-level candidate; ``then(server_id)`` runs inside its server before it stops."""
        self._check_cancelled()
        key = self.key(config)
        known = self._known(name, stage, config, key)
        if known:
            return known
        ahead = self.prefetched.pop(key, None)
        if ahead is not None and then is None:  # launched and counted already; judged against today's baseline
            ahead.name, ahead.stage = name, stage
            if ahead.verdict is None:
                self._judge(ahead)
            self._record(ahead, key, launched=True)
            return ahead
        if self._budget_spent():
            out = Outcome(name=name, stage=stage, status="skipped_budget", config=config, reason="budget spent")
            self._record(out, key, launched=False)
            return out
        out, launched = self._launch_and_measure(name, stage, config, floor, then)
        self._record(out, key, launched)
        return out

    def prefetch(self, items: list[tuple[str, str, dict, str | None]]) -> None:
        """Candidates the policy will ask for next, measured side by side now (finalists re-measured alone);
        ``measure`` then takes their outcomes in the policy's own order. Nothing when trials run one at a time."""
        if self.screen is not None and len(items) > 1:
            self.screen.prefetch(items)

    def start_server(self, config: dict) -> tuple[str | None, str | None, bool]:
        """Launch ``config`` for measuring: (server id, None, True), or (None, why, whether a process started).
        A launch that started and died counts, with its GPU time; one refused before starting does not."""
        t0 = time.monotonic()
        try:
            launched = self.launcher.launch(ServeConfig(model=self.req.model, **config),
                                            labels={"tune_job": self.job_id})
        except LaunchError as exc:
            self.launches += 1
            self.gpu_seconds += (time.monotonic() - t0) * len(config.get("gpus") or [0])
            return None, f"{exc.cause}: {exc.problem}", True
        except OmnituneError as exc:
            return None, str(exc), False
        self.launches += 1
        return launched.server.id, None, True

    def _launch_and_measure(self, name: str, stage: str, config: dict, floor: str | None,
                            then: Callable[[str], None] | None) -> tuple[Outcome, bool]:
        if self.screen is not None and self.screen.ray is not None and then is None:  # a task on a cluster node
            return self.screen.measure_remote((name, stage, config, floor))
        n = len(config.get("gpus") or [0])
        t0 = time.monotonic()
        server_id, why, started = self.start_server(config)
        if server_id is None:
            return Outcome(name=name, stage=stage, status="failed", config=config, reason=why,
                           gpu_seconds=(time.monotonic() - t0) * n if started else 0.0), started
        target = BenchmarkTarget(server_id=server_id)
        try:
            result = run_benchmark(self.ws, target, self.req.workload)
            out = self._outcome_from_run(name, stage, config, result.run_id, "measured", None)
            self._judge(out)
            if self._worth_repeating(out, stage, floor):  # too close to call: measure again here and pool
                again = run_benchmark(self.ws, target, self.req.workload)
                second = self._outcome_from_run(name, stage, config, again.run_id, "measured", None)
                if out.p50_s and second.p50_s:
                    out.p50_s, out.repeat_run_id = (out.p50_s + second.p50_s) / 2, again.run_id
                    out.p50_se_s = math.hypot(out.p50_se_s or 0, second.p50_se_s or 0) / 2
                    out.reason = "measured twice (within the spread of the best so far); p50 pooled"
                    self._judge(out)
            if then and out.p50_s:
                then(server_id)
        finally:
            self.launcher.stop(server_id)
            spent = (time.monotonic() - t0) * n
            self.gpu_seconds += spent
        out.gpu_seconds = spent
        if not out.p50_s:
            out.status, out.reason = "failed", "no successful measured request"
        return out, True

    def _worth_repeating(self, out: Outcome, stage: str, floor: str | None) -> bool:
        """Within the spread of the best, and the repeat could change a decision."""
        best = self.best
        if not (best and best.p50_s and out.p50_s) or best is out:
            return False
        if floor and out.verdict and out.verdict not in ACCEPT[floor]:
            return False  # rejected on quality whatever its speed
        if stage == "lossy" and self.previous_lossy and same_pixels(out, self.previous_lossy):
            return False  # inert whatever its speed
        return abs(out.p50_s / best.p50_s - 1) < max(NOISE - 1, 2 * noise(out, best))

    def _judge(self, out: Outcome) -> None:
        if out.run_id and self.baseline and self.baseline.run_id and out.run_id != self.baseline.run_id:
            settings = out.request_settings
            cmp = compare_runs(self.ws, self.baseline.run_id, out.run_id,
                               across_steps="num_inference_steps" in settings,
                               allow_differences=[k for k in settings if k != "num_inference_steps"] or None)
            out.verdict, out.psnr_db_mean = cmp.verdict, cmp.psnr_db_mean
        if out.p50_s and self.baseline and self.baseline.p50_s:
            out.speedup_vs_baseline = self.baseline.p50_s / out.p50_s

    def _outcome_from_run(self, name, stage, config, run_id, status, reason) -> Outcome:
        row = self.ws.store.query_one("SELECT r.summary, s.data FROM runs r LEFT JOIN servers s ON s.id = r.server_id "
                                      "WHERE r.id = ?", (run_id,))
        s = json.loads(row["summary"] or "{}") if row else {}
        before = json.loads(row["data"] or "{}").get("memory_before_mib", {}) if row else {}
        lat = s.get("latency") or {}
        peaks = [(g.get("memory_peak_all_mib") or g.get("memory_peak_mib")) - before.get(str(g["index"]), 0)
                 for g in (s.get("gpus") or {}).get("gpus", []) if g.get("memory_peak_all_mib") or g.get("memory_peak_mib")]
        return Outcome(name=name, stage=stage, status=status, config=config, reason=reason, run_id=run_id,
                       p50_s=lat.get("p50_s"), std_s=lat.get("std_s"), p50_se_s=self._p50_se(run_id),
                       throughput=s.get("throughput_images_per_s") or s.get("throughput_video_s_per_s"),
                       peak_memory_mib=max(peaks) if peaks else None)

    def _p50_se(self, run_id: str) -> float | None:
        """Standard error of the median, from the MAD: one stalled request on a busy host must not make every
        comparison 'within the noise' (the standard deviation would)."""
        lat = [r["latency_s"] for r in self.ws.store.query(
            "SELECT latency_s FROM requests WHERE run_id = ? AND phase = 'measured' AND ok = 1 "
            "AND latency_s IS NOT NULL", (run_id,))]
        if len(lat) < 2:
            return None
        mid = statistics.median(lat)
        mad = statistics.median(abs(x - mid) for x in lat)
        return 1.2533 * 1.4826 * mad / math.sqrt(len(lat))

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
            out.status, out.reason = "over_memory", f"peak {out.peak_memory_mib:.0f} MiB per GPU is over the limit {limit} MiB"
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

    # -- the search ---------------------------------------------------------------------------------
    def run(self) -> TuneResult:
        extra = self._baseline()
        if not self.baseline or self.baseline.status not in ("measured", "reused"):
            return self.finish(None)
        self.best = self.baseline
        extra = self._single_gpu(extra)
        if not extra:  # offloaded models stay on one GPU
            flags = {k: v for k, v in self.best.config.items() if k in ("quantization",)}
            self.prefetch([(c.name, "lossless", {**{k: v for k, v in c.config.items() if k not in (
                "quantization", "enforce_eager")}, **flags}, "lossless") for c in self._lossless(multi=True)])
            for c in self._lossless(multi=True):
                layout = {k: v for k, v in c.config.items() if k not in ("quantization", "enforce_eager")}
                self.consider(self.measure(c.name, "lossless", {**layout, **flags}, "lossless"), "lossless")
        if self.req.goal.quality == "lossy":
            self._lossy_sweep(self.req.goal.quality_floor)
            self._request_sweep(self.req.goal.quality_floor)
        return self.finish(self.best)

    def _baseline(self) -> dict:
        """Eager on one GPU; if it does not fit, the guide's offloads in order, then the fewest GPUs whose tensor
        parallelism shards the weights enough. Returns what every later candidate must keep to fit."""
        base_cfg = dict(self._named("baseline").config)
        self.baseline = self.measure("baseline", "baseline", base_cfg)
        if self.fits(self.baseline) or not (self.baseline.status == "over_memory" or
                                            "out_of_memory" in (self.baseline.reason or "")):
            return {}
        for c in [c for c in self.plan.candidates if "offload" in c.name]:
            offload = {k: v for k, v in c.config.items() if k != "gpus"}
            trial = self.measure(f"baseline + {c.name}", "baseline", {**base_cfg, **offload})
            if self.fits(trial):
                self.baseline = trial
                return offload
        for c in self._lossless(multi=True):
            n = c.config.get("tensor_parallel_size")
            if n and not set(c.config) - {"tensor_parallel_size", "gpus", "quantization"}:
                sharded = {"tensor_parallel_size": n, "gpus": c.config["gpus"]}
                trial = self.measure(f"baseline (TP {n})", "baseline", {**base_cfg, **sharded})
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
            out = self.measure(f"{fp8[-1].name} {label}", "lossless", fp8[-1].config, "lossless")
            if self.consider(out, "lossless"):
                self._not_needed(single, fp8[-1], {})
                return {}
        if self.plan.fp8_native and len(single) > 1:
            stacked = single[-1]
            if self.consider(self.measure(stacked.name, "lossless", {**stacked.config, **extra}, "lossless"),
                             "lossless"):
                self._not_needed(single, stacked, extra)
                return extra
            single = single[:-1]
        for c in single:
            self.consider(self.measure(c.name, "lossless", {**c.config, **extra}, "lossless"), "lossless")
        return extra

    def _not_needed(self, single: list[Candidate], winner: Candidate, extra: dict) -> None:
        for c in single:
            if c is winner:
                continue
            key = self.key({**c.config, **extra})
            if not self._known(c.name, "lossless", c.config, key, own_only=True):
                self._record(Outcome(name=c.name, stage="lossless", status="not_needed", config=c.config,
                                     reason=f"{winner.name} (which includes it) passed the gate and won"),
                             key, launched=False)

    def _lossy_sweep(self, floor: str) -> None:
        """Server-level lossy settings, gentle to aggressive; stop at the cliff, flag settings that do nothing."""
        self.previous_lossy = self.best
        base = {k: v for k, v in self.best.config.items() if k not in ("cache_backend", "cache_config")}
        sweep = [c for c in self.plan.candidates if c.stage == "lossy" and not c.request]
        # side by side, as many settings as fit at once: past the cliff at most one wave is measured in vain
        wave = max(1, self.screen.gpus() // len(base.get("gpus") or [0])) if self.screen else 1
        for i, c in enumerate(sweep):
            if i % wave == 0:
                self.prefetch([(d.name, "lossy", {**base, **d.config}, floor) for d in sweep[i:i + wave]])
            out = self.measure(c.name, "lossy", {**base, **c.config}, floor)
            if not self.accept(out, floor):
                if out.status == "rejected_quality":  # the cliff: stronger settings only get worse
                    out.reason += "; sweep stopped at the quality cliff"
                    break
                continue
            previous = self.previous_lossy
            if out.p50_s and previous.p50_s and same_pixels(out, previous) and \
                    out.p50_s > previous.p50_s / max(INERT, 1 + 2 * noise(out, previous)):
                out.status, out.reason = "inert", "no speed-up and no change in the pixels: this setting does nothing"
                continue
            if self.better(out, self.best):
                self.best = out
            self.previous_lossy = out

    def _request_sweep(self, floor: str) -> None:
        """Steps and guidance on the best configuration, inside one (re)launched server; steps stop at the cliff."""
        best, steps = self.best, self.req.workload.num_inference_steps
        variants: list[tuple[Candidate, dict]] = []
        for c in [c for c in self.plan.candidates if c.request]:
            settings = request_settings(c.request, steps)
            if settings is None:
                self.notes.append(f"{c.name}: not measured, the workload sets no num_inference_steps to scale")
            else:
                variants.append((c, settings))
        sweep = RequestSweep(self)
        try:
            stop_steps = False
            for c, settings in variants:
                is_steps = "num_inference_steps" in settings
                if is_steps and stop_steps:
                    continue
                out = sweep.measure(f"{best.name} + {c.name}", best.config, settings)
                if out.status in ("measured", "reused") and out.p50_s and best.p50_s and \
                        out.p50_s > best.p50_s / INERT:
                    out.status = "inert" if same_pixels(out, best) else "within_noise"
                    out.reason = "no speed-up over the same configuration with default request settings" + \
                        (": this setting does nothing here" if out.status == "inert" else "; pictures change")
                    continue
                if not self.accept(out, floor):
                    if out.status == "rejected_quality" and is_steps:
                        out.reason += "; fewer steps stopped at the quality cliff"
                        stop_steps = True
                    continue
                if self.better(out, self.best):
                    self.best = out
        finally:
            sweep.close()

    def _named(self, name: str) -> Candidate:
        return next(c for c in self.plan.candidates if c.name == name)

    def _lossless(self, multi: bool) -> list[Candidate]:
        return [c for c in self.plan.candidates if c.stage == "lossless" and "offload" not in c.name
                and (len(c.config.get("gpus", [0])) > 1) == multi]

    # -- result ---------------------------------------------------------------------------------
    def finish(self, best: Outcome | None) -> TuneResult:
        folder = self.ws.runs_dir / self.job_id
        folder.mkdir(parents=True, exist_ok=True)
        command = None
        if self.prefetched:
            self.notes.append(f"{len(self.prefetched)} candidate(s) measured side by side ahead of the search were "
                              "not needed by it (their launches are counted): "
                              + ", ".join(o.name for o in self.prefetched.values()))
        if best:
            from omnitune.tools.launch.config import build_argv
            argv = build_argv(self.launcher.settings.vllm, ServeConfig(model=self.req.model, **best.config),
                              self.req.model, self.launcher.settings.serve_host, 8000)
            command = quote(["vllm", *argv[1:]])
            env = best.config.get("gpus")
            if env:
                command = f"CUDA_VISIBLE_DEVICES={','.join(map(str, env))} {command}"
        result = TuneResult(model=self.req.model, winner=best, command=command, baseline=self.baseline,
                            request_settings=best.request_settings if best else {},
                            candidates=self.outcomes, pruned=self.plan.pruned, launches=self.launches,
                            gpu_seconds=self.gpu_seconds, notes=self.notes, folder=str(folder),
                            timeline=self.screen.timeline if self.screen else [])
        result.pareto_png = str(pareto(self.outcomes, folder / "pareto.png"))
        report = folder / "report.md"
        report.write_text(markdown(result))
        result.report = str(report)
        (folder / "result.json").write_text(result.model_dump_json(indent=1))
        return result


def noise(a: Outcome, b: Outcome) -> float:
    """Combined relative standard error of two p50s."""
    return math.hypot(*((o.p50_se_s or 0) / o.p50_s if o.p50_s else 0 for o in (a, b)))


def same_pixels(a: Outcome, b: Outcome) -> bool:
    """Both identical to the baseline, or the same distance from it (within 0.05 dB)."""
    return a.verdict == b.verdict == "identical" or (
        a.psnr_db_mean is not None and b.psnr_db_mean is not None and abs(a.psnr_db_mean - b.psnr_db_mean) < 0.05)


def tune_job(workspace: Workspace, launcher: Launcher, request: TuneRequest, job_id: str, progress, cancelled,
             notes: list[str] | None = None) -> TuneResult:
    return Tuner(workspace, launcher, request, job_id, progress, cancelled, notes=notes).run()
