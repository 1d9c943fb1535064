"""``tune``: baseline -> lossless -> lossy (gated on quality) on real launches, returning the best command.

Each candidate is launched, benchmarked with the same workload, compared with the baseline, and stopped.
Server-level settings restart the server; a configuration measured before (same model, serve settings,
GPUs, vLLM-Omni and workload) is reused from the store instead of being launched again, which also makes
a tune that died resumable: run it again and it continues where the records end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from tools.benchmark import BenchmarkTarget, Workload, run_benchmark
from tools.compare import compare_runs
from tools.errors import LaunchError, OmnituneError
from tools.launch import ServeConfig
from tools.launch.launcher import Launcher, quote
from tools.plan import Candidate, Goal, Plan, Pruned, make_plan
from tools.store import now
from tools.workspace import Workspace, new_id

log = logging.getLogger(__name__)
ACCEPT = {"lossless": ("identical", "lossless-equivalent"),
          "lossless-equivalent": ("identical", "lossless-equivalent"),
          "acceptable": ("identical", "lossless-equivalent", "acceptable")}
Status = Literal["measured", "reused", "failed", "rejected_quality", "inert", "within_noise", "skipped_budget",
                 "not_needed", "beyond_cliff"]


class TuneRequest(BaseModel):
    model: str
    workload: Workload = Field(default_factory=lambda: Workload(sizes=["1024x1024"], measured=4, warmup=1))
    goal: Goal = Field(default_factory=Goal)
    max_launches: int = Field(20, ge=1, le=200, description="Budget: server launches (reused runs are free).")
    max_gpu_seconds: float | None = Field(None, gt=0, description="Budget: GPU-seconds (launch + benchmark x GPUs).")


class Outcome(BaseModel):
    name: str
    stage: str
    status: Status
    config: dict[str, Any]
    reason: str | None = None
    run_id: str | None = None
    p50_s: float | None = None
    throughput: float | None = None
    peak_memory_mib: float | None = None
    verdict: str | None = None
    psnr_db_mean: float | None = None
    speedup_vs_baseline: float | None = None
    gpu_seconds: float = 0.0
    std_s: float | None = None
    repeat_run_id: str | None = Field(None, description="Second measurement, taken when the first was within the "
                                                        "spread of the best so far (p50 is then pooled).")
    request_settings: dict[str, Any] = Field(default_factory=dict, description="Request-level settings (e.g. "
                                                                               "num_inference_steps) measured inside "
                                                                               "the same server.")


class TuneResult(BaseModel):
    model: str
    winner: Outcome | None
    command: str | None = Field(description="The winning `vllm serve` command.")
    request_settings: dict[str, Any] = Field(default_factory=dict, description="Send these with each request too.")
    baseline: Outcome | None
    candidates: list[Outcome]
    pruned: list[Pruned]
    launches: int
    gpu_seconds: float
    report: str | None = Field(None, description="Markdown report path.")
    pareto_png: str | None = None
    folder: str


class Tuner:
    def __init__(self, workspace: Workspace, launcher: Launcher, request: TuneRequest, job_id: str,
                 progress: Callable[[float, float | None, str], None] | None = None,
                 cancelled: Callable[[], bool] = lambda: False, plan: Plan | None = None) -> None:
        self.ws, self.launcher, self.req, self.job_id = workspace, launcher, request, job_id
        self.progress, self.cancelled = progress, cancelled
        self.plan = plan or make_plan(launcher.settings, request.model, request.goal)
        self.outcomes: list[Outcome] = []
        self.launches, self.gpu_seconds = 0, 0.0
        self.baseline: Outcome | None = None
        self.best: Outcome | None = None
        self.step_outcomes: list[Outcome] = []
        self.version = f"{Path(launcher.settings.vllm).name}"

    # -- one candidate ----------------------------------------------------------------------------
    def reuse_key(self, config: dict) -> str:
        canon = ServeConfig(model=self.req.model, **config).canonical()
        gpus = config.get("gpus") or [0]
        blob = json.dumps({"c": canon, "n": len(gpus), "w": self.req.workload.model_dump(mode="json"),
                           "v": self.version}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def measure(self, name: str, stage: str, config: dict, steps_sweep: bool = False) -> Outcome:
        if self.cancelled():
            from tools.jobs import JobCancelled
            raise JobCancelled()
        key = self.reuse_key(config)
        reused = self.ws.store.query_one(
            "SELECT run_id, data FROM tune_candidates WHERE status IN ('measured', 'reused') AND run_id IS NOT NULL "
            "AND json_extract(data, '$.reuse_key') = ? ORDER BY rowid DESC LIMIT 1", (key,))
        if reused and not steps_sweep:
            out = self._outcome_from_run(name, stage, config, reused["run_id"], "reused",
                                         "measured before with the same model, settings, GPUs and workload")
        elif self.launches >= self.req.max_launches or (self.req.max_gpu_seconds and
                                                         self.gpu_seconds >= self.req.max_gpu_seconds):
            out = Outcome(name=name, stage=stage, status="skipped_budget", config=config, reason="budget spent")
        else:
            out = self._launch_and_measure(name, stage, config, steps_sweep)
        self._judge(out)
        self._record(out, key)
        return out

    def _judge(self, out: Outcome) -> None:
        if out.run_id and self.baseline and self.baseline.run_id and out.run_id != self.baseline.run_id:
            cmp = compare_runs(self.ws, self.baseline.run_id, out.run_id, across_steps=bool(out.request_settings))
            out.verdict, out.psnr_db_mean = cmp.verdict, cmp.psnr_db_mean
        if out.p50_s and self.baseline and self.baseline.p50_s:
            out.speedup_vs_baseline = self.baseline.p50_s / out.p50_s

    def _record(self, out: Outcome, key: str | None) -> None:
        name, stage, config = out.name, out.stage, out.config
        self.outcomes.append(out)
        self.ws.store.insert("tune_candidates", {
            "job_id": self.job_id, "idx": len(self.outcomes) - 1, "config": config, "status": out.status,
            "reason": out.reason, "run_id": out.run_id,
            "data": {"reuse_key": key if not out.request_settings else None, "name": name, "stage": stage,
                     "verdict": out.verdict}})
        if self.progress:
            self.progress(len(self.outcomes), None, f"{name}: {out.status}"
                          + (f", p50 {out.p50_s:.3f} s" if out.p50_s else "") + (f", {out.verdict}" if out.verdict else ""))

    def _launch_and_measure(self, name: str, stage: str, config: dict, steps_sweep: bool = False) -> Outcome:
        self.launches += 1
        n = len(config.get("gpus") or [0])
        t0 = time.monotonic()
        try:
            launched = self.launcher.launch(ServeConfig(model=self.req.model, **config))
        except LaunchError as exc:
            self.gpu_seconds += (time.monotonic() - t0) * n
            return Outcome(name=name, stage=stage, status="failed", config=config, reason=f"{exc.cause}: {exc.problem}")
        except OmnituneError as exc:
            return Outcome(name=name, stage=stage, status="failed", config=config, reason=str(exc))
        target = BenchmarkTarget(server_id=launched.server.id)
        try:
            result = run_benchmark(self.ws, target, self.req.workload)
            out = self._outcome_from_run(name, stage, config, result.run_id, "measured", None)
            if self._within_noise(out):  # too close to call: measure again on the same server and pool
                again = run_benchmark(self.ws, target, self.req.workload)
                second = self._outcome_from_run(name, stage, config, again.run_id, "measured", None)
                if out.p50_s and second.p50_s:
                    out.p50_s, out.repeat_run_id = (out.p50_s + second.p50_s) / 2, again.run_id
                    out.reason = "measured twice (within the spread of the best so far); p50 pooled"
            if steps_sweep:
                self._steps_sweep(name, config, target)
        finally:
            self.launcher.stop(launched.server.id)
            self.gpu_seconds += (time.monotonic() - t0) * n
        out.gpu_seconds = (time.monotonic() - t0) * n
        if not out.p50_s:
            out.status, out.reason = "failed", "no successful measured request"
        return out

    def _within_noise(self, out: Outcome) -> bool:
        best = getattr(self, "best", None)
        if not (best and best.p50_s and out.p50_s) or best is out:
            return False
        spread = max(0.02, 2 * max((out.std_s or 0) / out.p50_s, (best.std_s or 0) / best.p50_s))
        return abs(out.p50_s / best.p50_s - 1) < spread

    def _steps_sweep(self, name: str, config: dict, target: BenchmarkTarget) -> None:
        """Fewer steps is a request-level setting: measured inside the same server, judged across steps."""
        steps = self.req.workload.num_inference_steps
        for fraction in (0.75, 0.5):
            fewer = max(1, int(steps * fraction))
            workload = self.req.workload.model_copy(update={"num_inference_steps": fewer})
            result = run_benchmark(self.ws, target, workload)
            out = self._outcome_from_run(f"{name} + {fewer} steps", "lossy", config, result.run_id, "measured",
                                         f"request-level: num_inference_steps {fewer} instead of {steps}")
            out.request_settings = {"num_inference_steps": fewer}
            self._judge(out)
            self.step_outcomes.append(out)

    def _outcome_from_run(self, name, stage, config, run_id, status, reason) -> Outcome:
        row = self.ws.store.query_one("SELECT summary FROM runs WHERE id = ?", (run_id,))
        s = json.loads(row["summary"] or "{}") if row else {}
        lat = s.get("latency") or {}
        peaks = [g.get("memory_peak_mib") for g in (s.get("gpus") or {}).get("gpus", []) if g.get("memory_peak_mib")]
        return Outcome(name=name, stage=stage, status=status, config=config, reason=reason, run_id=run_id,
                       p50_s=lat.get("p50_s"), std_s=lat.get("std_s"), throughput=s.get("throughput_images_per_s") or
                       s.get("throughput_video_s_per_s"), peak_memory_mib=max(peaks) if peaks else None)

    # -- the search ---------------------------------------------------------------------------------
    def better(self, a: Outcome, b: Outcome | None) -> bool:
        """a beats b by more than the noise (2%)."""
        if b is None:
            return True
        if self.req.goal.objective == "throughput":
            return (a.throughput or 0) > (b.throughput or 0) * 1.02
        return (a.p50_s or 1e18) < (b.p50_s or 1e18) / 1.02

    def accept(self, out: Outcome, floor: str) -> bool:
        if out.status not in ("measured", "reused"):
            return False
        if out.verdict and out.verdict not in ACCEPT[floor]:
            out.status, out.reason = "rejected_quality", f"verdict {out.verdict} is below {floor}"
            return False
        return True

    def run(self) -> TuneResult:
        cands = {c.name: c for c in self.plan.candidates}
        offload = [c for c in self.plan.candidates if "offload" in c.name]
        base_cfg = dict(cands["baseline"].config)
        self.baseline = self.measure("baseline", "baseline", base_cfg)
        extra: dict = {}
        if self.baseline.status == "failed" and "out_of_memory" in (self.baseline.reason or ""):
            for c in offload:  # the guide: offload only when memory demands it
                trial = self.measure(f"baseline + {c.name}", "baseline", {**base_cfg, **_offload(c.config)})
                if trial.status in ("measured", "reused"):
                    self.baseline, extra = trial, _offload(c.config)
                    break
        if not self.baseline or self.baseline.status not in ("measured", "reused"):
            return self.finish(None)
        self.best = self.baseline
        single = [c for c in self.plan.candidates if c.stage == "lossless" and "offload" not in c.name
                  and len(c.config.get("gpus", [0])) == 1]
        for c in single:
            out = self.measure(c.name, "lossless", {**c.config, **extra})
            if self.accept(out, "lossless") and self.better(out, self.best):
                self.best = out
            elif out.status in ("measured", "reused"):
                out.status, out.reason = "within_noise", "not faster than the best so far beyond the noise"
        if not extra:  # offloaded models stay on one GPU
            best_flags = {k: v for k, v in self.best.config.items() if k in ("quantization",)}
            for c in [c for c in self.plan.candidates if c.stage == "lossless" and len(c.config.get("gpus", [0])) > 1]:
                layout = {k: v for k, v in c.config.items() if k not in ("quantization", "enforce_eager")}
                out = self.measure(c.name, "lossless", {**layout, **best_flags})
                if self.accept(out, "lossless") and self.better(out, self.best):
                    self.best = out
        if self.req.goal.quality == "lossy":
            floor = self.req.goal.quality_floor
            previous = self.best
            for c in [c for c in self.plan.candidates if c.stage == "lossy"]:
                cfg = {**{k: v for k, v in self.best.config.items() if k not in ("cache_backend", "cache_config")},
                       **c.config}
                out = self.measure(c.name, "lossy", cfg)
                if not self.accept(out, floor):
                    if out.status == "rejected_quality":  # the cliff: stronger settings only get worse
                        out.reason += "; sweep stopped at the quality cliff"
                        break
                    continue
                same_pixels = out.verdict == previous.verdict == "identical" or (
                    out.psnr_db_mean is not None and previous.psnr_db_mean is not None
                    and abs(out.psnr_db_mean - previous.psnr_db_mean) < 0.5)
                if out.p50_s and previous.p50_s and out.p50_s > previous.p50_s / 1.03 and same_pixels:
                    out.status, out.reason = "inert", "no speed-up and no change in the pixels: this setting does nothing"
                    continue
                if self.better(out, self.best):
                    self.best = out
                previous = out
            if self.req.workload.num_inference_steps:
                self._fewer_steps(floor)
        return self.finish(self.best)

    def _fewer_steps(self, floor: str) -> None:
        """Relaunch the best configuration once and sweep num_inference_steps inside that one server."""
        best = self.best
        self.measure(f"{best.name} (steps sweep)", "lossy", best.config, steps_sweep=True)
        for out in self.step_outcomes:
            self._record(out, None)
            if not self.accept(out, floor):
                if out.status == "rejected_quality":
                    out.reason += "; fewer steps stopped here"
                    break
                continue
            if self.better(out, self.best):
                self.best = out

    # -- result ---------------------------------------------------------------------------------
    def finish(self, best: Outcome | None) -> TuneResult:
        folder = self.ws.runs_dir / self.job_id
        folder.mkdir(parents=True, exist_ok=True)
        command = None
        if best:
            from tools.launch.config import build_argv
            argv = build_argv(self.launcher.settings.vllm, ServeConfig(model=self.req.model, **best.config),
                              self.req.model, self.launcher.settings.serve_host, 8000)
            command = quote(["vllm", *argv[1:]])
            env = best.config.get("gpus")
            if env:
                command = f"CUDA_VISIBLE_DEVICES={','.join(map(str, env))} {command}"
        result = TuneResult(model=self.req.model, winner=best, command=command, baseline=self.baseline,
                            request_settings=best.request_settings if best else {},
                            candidates=self.outcomes, pruned=self.plan.pruned, launches=self.launches,
                            gpu_seconds=self.gpu_seconds, folder=str(folder))
        result.pareto_png = str(pareto(self.outcomes, folder / "pareto.png"))
        report = folder / "report.md"
        report.write_text(markdown(result))
        result.report = str(report)
        (folder / "result.json").write_text(result.model_dump_json(indent=1))
        return result


def _offload(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "gpus"}


def markdown(r: TuneResult) -> str:
    lines = [f"# omnitune tune report: {r.model}", "",
             f"Winner: **{r.winner.name if r.winner else 'none'}**"
             + (f", {r.winner.speedup_vs_baseline:.2f}x faster than the baseline at p50" if r.winner and
                r.winner.speedup_vs_baseline else ""), ""]
    if r.command:
        lines += ["```bash", r.command, "```", ""]
    if r.request_settings:
        lines += [f"Send with each request: {json.dumps(r.request_settings)}", ""]
    lines += [f"Launches: {r.launches}; GPU-seconds: {r.gpu_seconds:.1f}", "",
              "| candidate | stage | outcome | p50 (s) | speed-up | peak MiB | quality | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o in r.candidates:
        lines.append(f"| {o.name} | {o.stage} | {o.status} | {o.p50_s or '':.4} | "
                     f"{f'{o.speedup_vs_baseline:.2f}x' if o.speedup_vs_baseline else ''} | "
                     f"{f'{o.peak_memory_mib:.0f}' if o.peak_memory_mib else ''} | {o.verdict or ''} | {o.reason or ''} |"
                     if o.p50_s else f"| {o.name} | {o.stage} | {o.status} | | | | {o.verdict or ''} | {o.reason or ''} |")
    lines += ["", "Pruned before launching:", ""] + [f"- {p.name}: {p.why}" for p in r.pruned]
    return "\n".join(lines) + "\n"


def pareto(outcomes: list[Outcome], path: Path) -> Path:
    """Latency (x) against quality (y: PSNR vs baseline, identical at the top), Pareto front highlighted."""
    from PIL import Image, ImageDraw
    pts = [(o.p50_s, 60.0 if o.verdict in (None, "identical") else min(o.psnr_db_mean or 0, 60.0), o.name)
           for o in outcomes if o.p50_s]
    img = Image.new("RGB", (800, 500), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([60, 20, 780, 460], outline="black")
    d.text((300, 470), "p50 latency (s) ->  (lower is better)", fill="black")
    d.text((5, 5), "PSNR vs baseline (dB; top = identical)", fill="black")
    if pts:
        xs = [p[0] for p in pts]
        lo, hi = min(xs), max(xs)
        span = (hi - lo) or 1.0
        front = [p for p in pts if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts)]
        for x, y, name in pts:
            px, py = 80 + (x - lo) / span * 680, 440 - (min(max(y, 10.0), 60.0) - 10) / 50 * 400
            colour = "red" if (x, y, name) in front else "grey"
            d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colour)
            d.text((px + 7, py - 6), name[:28], fill=colour)
    img.save(path)
    return path


def tune_job(workspace: Workspace, launcher: Launcher, request: TuneRequest, job_id: str, progress, cancelled):
    return Tuner(workspace, launcher, request, job_id, progress, cancelled).run()
