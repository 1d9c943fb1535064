"""A fake trial runner for policy tests: the emulator's world model evaluated in memory (no process, no clock).

``WorldTrials`` answers ``TrialRunner`` from the same cost, memory, refusal and quality rules the emulator
serves (tests/emulator/world.py), on a virtual clock: a trial's GPU-seconds are its simulated load plus its
simulated requests. Verdicts come from the simulated pixel noise (PSNR = 20 log10(255 / std)) with
compare's default thresholds. Every launch is logged in ``launched`` for assertions.
"""

from __future__ import annotations

import json
import math
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from omnitune.tools.gpus import Gpu, GpuLink, GpuReport
from omnitune.tools.plan import Goal, Plan, make_plan
from omnitune.tools.settings import Settings
from omnitune.tools.tune.job import memory_model
from omnitune.tools.tune.ledger import Ledger
from omnitune.tools.tune.models import Outcome, TuneRequest
from omnitune.tools.tune.trial import Trial, tune_workload
from omnitune.tools.tune.tuner import Tuner
from omnitune.tools.workspace import Workspace
from tests.emulator import world as w

SCENARIOS = Path(__file__).parent / "emulator" / "scenarios"


def load_world(scenario: str | None = None, **overrides: Any) -> dict:
    base = json.loads((SCENARIOS / f"{scenario}.json").read_text()) if scenario else {}
    return w._merge(w._merge(w.DEFAULTS, base), overrides)


def world_config(config: dict[str, Any]) -> w.Config:
    cache = config.get("cache_config") or {}
    return w.Config(usp=config.get("usp", 1), ring=config.get("ring", 1), cfg=config.get("cfg_parallel_size", 1),
                    tp=config.get("tensor_parallel_size", 1), vae_patch=config.get("vae_patch_parallel_size", 1),
                    hsdp=config.get("use_hsdp", False), eager=config.get("enforce_eager", False),
                    cpu_offload=config.get("enable_cpu_offload", False),
                    layerwise=config.get("enable_layerwise_offload", False),
                    slicing=config.get("vae_use_slicing", False), tiling=config.get("vae_use_tiling", False),
                    fp8=config.get("quantization") == "fp8", cache_backend=config.get("cache_backend"),
                    cache_config=dict(cache))


def verdict_of(std: float) -> tuple[str, float | None]:
    if std <= 0:
        return "identical", None
    psnr = 20 * math.log10(255 / std)
    return ("lossless-equivalent" if psnr >= 40 else "acceptable" if psnr >= 30 else "degraded"), psnr


class WorldTrials:
    """``TrialRunner`` over a world dict; ``launched`` lists every (name, config) a server was started for."""

    concurrency = 1

    def __init__(self, world: dict, request: TuneRequest, fail_after: int | None = None) -> None:
        self.world, self.req = world, request
        self.launched: list[tuple[str, dict]] = []
        self.batches: list[list[str]] = []
        self.fail_after = fail_after  # simulate omnitune dying after that many launches
        self.runs: dict[str, Outcome] = {}
        self.warnings: list[str] = []
        wl = request.workload
        width, height = map(int, (wl.sizes or [self.world["model"]["default_size"]])[0].split("x"))
        self.mp, self.frames = width * height / 1e6, (wl.num_frames or 0) if wl.is_video else 0
        self.steps = wl.num_inference_steps or self.world["model"]["default_steps"]

    def _start(self, trial: Trial, gpus: list[int]) -> tuple[w.Config | None, Outcome | None]:
        if self.fail_after is not None and len(self.launched) >= self.fail_after:
            raise KeyboardInterrupt("simulated death of omnitune")
        self.launched.append((trial.name, trial.config))
        cfg = world_config(trial.config)
        base = Outcome(name=trial.name, stage=trial.stage, kind=trial.kind, status="failed", config=trial.config,
                       request_settings=dict(trial.request), gpus=gpus, launched=True,
                       gpu_seconds=self.world["cost"]["startup_s"] * len(gpus), estimate_mib=trial.estimate_mib)
        try:
            self.warnings = w.check_startup(self.world, cfg, gpus, "FakePipeline")
        except w.Refusal as exc:
            return None, base.model_copy(update={"cause": "refused", "reason": str(exc)})
        total = min(self.world["gpus"][g]["memory_mib"] for g in gpus)
        if w.load_memory_mib(self.world, cfg) > total:
            return None, base.model_copy(update={"cause": "out_of_memory", "reason": "out_of_memory: at load"})
        return cfg, None

    def _measure(self, cfg: w.Config, trial: Trial, gpus: list[int], launched: bool) -> Outcome:
        req = trial.request
        steps = req.get("num_inference_steps", self.steps)
        guided = w.guidance_runs(req.get("guidance_scale"), req.get("true_cfg_scale"))
        total = min(self.world["gpus"][g]["memory_mib"] for g in gpus)
        peak = w.memory_per_gpu_mib(self.world, cfg, self.mp, self.frames)
        out = Outcome(name=trial.name, stage=trial.stage, kind=trial.kind, status="measured", config=trial.config,
                      request_settings=dict(req), gpus=gpus, launched=launched, estimate_mib=trial.estimate_mib,
                      run_id=f"run-{len(self.runs)}")
        n_req = self.req.workload.warmup + (self.req.workload.measured or 3)
        if peak > total:
            out.status, out.cause, out.reason = "failed", "out_of_memory_request", "CUDA out of memory per request"
            out.gpu_seconds = (self.world["cost"]["startup_s"] if launched else 0) * len(gpus)
            return out
        sm = tuple(self.world["gpus"][gpus[0]]["compute_capability"])
        p50 = w.seconds_per_request(self.world, cfg, self.mp, steps, self.frames, sm, guided)  # type: ignore[arg-type]
        out.p50_s, out.p50_se_s, out.peak_memory_mib = p50, 0.002 * p50, float(peak)
        out.throughput = int(trial.config.get("replicas", 1) or 1) / p50  # replicas: same latency, N at once
        out.server_warnings = list(self.warnings)
        out.gpu_seconds = ((self.world["cost"]["startup_s"] if launched else 0) + n_req * p50) * len(gpus)
        self.judge(out, trial)
        self.runs[out.run_id or ""] = out
        return out

    def judge(self, out: Outcome, trial: Trial) -> None:
        """The verdict against the baseline run (``trial.compare_to``), from the simulated pixel noise."""
        if not (trial.compare_to and out.p50_s):
            return
        # deviations the baseline shares (same tag and key) cancel, as in the emulator; as compare_runs, the
        # reference must be a run with measured outputs
        assert trial.compare_to in self.runs, f"run {trial.compare_to} has no saved measured outputs to compare"
        req, cfg = trial.request, world_config(out.config)
        steps = req.get("num_inference_steps", self.steps)
        mine = {*w.request_deviations(self.world, steps, req.get("guidance_scale"), req.get("true_cfg_scale")),
                (w.pixel_noise(self.world, cfg), cfg.lossless_key, steps)}
        base = {*w.request_deviations(self.world, self.steps, None, None),
                (0.0, world_config({}).lossless_key, self.steps)}
        out.verdict, out.psnr_db_mean = verdict_of(math.hypot(*(d[0] for d in mine ^ base)))

    # -- TrialRunner ------------------------------------------------------------------------------
    def run(self, trial: Trial, gpus: list[int]) -> Outcome:
        cfg, failed = self._start(trial, gpus)
        if failed is not None or cfg is None:
            assert failed is not None
            return failed
        return self._measure(cfg, trial, gpus, True)

    def run_many(self, batch: list[tuple[Trial, list[int]]]) -> list[Outcome]:
        self.batches.append([t.name for t, _ in batch])
        return [self.run(t, g) for t, g in batch]

    def session(self, trial: Trial, gpus: list[int]) -> FakeSession:
        return FakeSession(self, trial, gpus)

    def reuse(self, trial: Trial, run_id: str) -> Outcome:
        return self.runs[run_id].model_copy(update={"status": "reused", "launched": False, "gpu_seconds": 0.0,
                                                    "name": trial.name, "resumed": False})


class FakeSession(AbstractContextManager):
    """Request variants on one simulated server, started at the first measurement."""

    def __init__(self, runner: WorldTrials, trial: Trial, gpus: list[int]) -> None:
        self.runner, self.trial, self.gpus = runner, trial, gpus
        self.started, self.cfg, self.failed = False, None, None
        self.first = True

    def __exit__(self, *exc: object) -> None:
        return None

    def measure(self, t: Trial) -> Outcome:
        if not self.started:
            self.started = True
            self.cfg, self.failed = self.runner._start(self.trial, self.gpus)
        first, self.first = self.first, False
        if self.failed is not None or self.cfg is None:
            assert self.failed is not None
            return self.failed.model_copy(update={"name": t.name, "launched": first,
                                                  "request_settings": dict(t.request)})
        return self.runner._measure(self.cfg, t, self.gpus, first)


def gpu_report(world: dict) -> GpuReport:
    gpus = [Gpu.model_validate({"index": i, "name": g["name"], "memory_total_mib": g["memory_mib"],
                                "memory_used_mib": 0, "compute_capability": ".".join(map(str, g["compute_capability"])),
                                "fp8_native": tuple(g["compute_capability"]) >= (8, 9)})
            for i, g in enumerate(world["gpus"])]
    nvlink = world.get("topology", "nvswitch") == "nvswitch"
    links = [GpuLink.model_validate({"a": a, "b": b, "nvlink": nvlink, "nvlink_count": 18 if nvlink else 0,
                                     "via_nvswitch": nvlink, "topology": "single_switch" if nvlink else "host_bridge"})
             for a in range(len(gpus)) for b in range(a + 1, len(gpus))]
    return GpuReport.model_validate({"available": True, "gpus": [g.model_dump() for g in gpus], "gpu_count": len(gpus),
                                     "links": [x.model_dump() for x in links],
                                     "host": {"cpu_cores_logical": 16, "cpu_cores_physical": 8, "ram_total_mib": 262144,
                                              "ram_available_mib": 200000, "workspace": "/tmp",
                                              "workspace_disk_free_mib": None}})


class Capability:
    """The few capability-report fields plan reads: methods by status, CFG use, head constraint."""

    def __init__(self, world: dict) -> None:
        from types import SimpleNamespace
        rejects = set(world["model"]["rejects"]) - set(world.get("capability_unaware", []))
        keys = ["ulysses_sp", "ring_sp", "cfg_parallel", "tensor_parallel", "vae_patch_parallel", "hsdp", "fp8",
                "cpu_offload", "layerwise_offload", "tea_cache", "cache_dit", "regional_compile"]
        tea = world["model"]["tea_cache"]
        status = {k: "unsupported" if k in rejects or (k == "tea_cache" and tea is False) else "supported"
                  for k in keys}
        by_hand = world["model"]["sp_by_hand"] and not world["model"]["sp_plan"]
        self.methods = {k: SimpleNamespace(status=s, evidence=[f"world.py: {k}"], notes="",
                                           via=("model_code" if by_hand else "sp_plan") if k.endswith("_sp") else None)
                        for k, s in status.items()}
        self.uses_cfg = world["model"]["uses_cfg"]
        self.constraints = [SimpleNamespace(kind="divides", parameter="tensor_parallel_size",
                                            value=world["model"]["tp_divides"])]


def write_weights(folder: Path, world: dict) -> Path:
    """A model folder whose safetensors headers declare the world's bf16 weights (headers only, no tensors)."""
    import struct
    for sub, gib in (("transformer", world["model"]["dit_gib"]), ("text_encoder", world["model"]["text_encoder_gib"]),
                     ("vae", world["model"]["vae_gib"])):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        header = json.dumps({"w": {"dtype": "BF16", "shape": [int(gib * 1024**3 / 2)],
                                   "data_offsets": [0, int(gib * 1024**3)]}}).encode()
        (folder / sub / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return folder


def policy(ws: Workspace, world: dict, job_id: str = "tune-test", goal: dict | None = None,
           workload: dict | None = None, runner: WorldTrials | None = None, weights: bool = False,
           **request: Any) -> Tuner:
    """A Tuner on ``world`` with a fake runner and a real ledger (SQLite in the test's folder); ``weights``:
    the model folder declares the world's weights in safetensors headers, so the memory estimate works."""
    model = write_weights(ws.root / "model", world) if weights else ws.root / "no-model"
    req = TuneRequest.model_validate({"model": str(model), "goal": goal or {},
                                      "workload": workload or {"sizes": ["256x256"], "measured": 3, "warmup": 1,
                                                               "num_inference_steps": 20}, **request})
    if ws.store.query_one("SELECT id FROM jobs WHERE id = ?", (job_id,)) is None:
        ws.store.insert("jobs", {"id": job_id, "kind": "tune", "status": "running", "created_at": 0, "updated_at": 0})
    report = gpu_report(world)
    settings = Settings.model_validate({"workspace": ws.root})
    plan: Plan = make_plan(settings, req.model, Goal.model_validate(req.goal.model_dump()),
                           gpu_report=report, capability=Capability(world))
    throughput = req.goal.objective == "throughput"  # as make_tuner: keyed as measured
    ledger = Ledger(ws, job_id, req, "vllm-fake", [g.name for g in report.gpus],
                    workload=tune_workload(req.workload, fill=plan.gpus) if throughput else None)
    memory = memory_model(req, plan) if weights else None
    return Tuner(req, plan, runner or WorldTrials(world, req), ledger, memory=memory)


def fake(tuner: Tuner) -> WorldTrials:
    """The tuner's runner as the fake it is (for assertions on what was launched)."""
    assert isinstance(tuner.runner, WorldTrials)
    return tuner.runner
