"""tune against an exhaustive grid over the same space, on the emulator's four tuner scenarios.

For each scenario: the best configuration passing the quality gate (its speed-up), GPU-seconds spent, and
launches of configurations vLLM-Omni refuses (startup errors other than out-of-memory). Targets: speed-up
within 5% of the grid's best, at most 40% of the grid's GPU-seconds, zero refused launches.

The grid covers the tuner's space: every server-level configuration (eager/compile x FP8 x offload, every
parallel layout of every power-of-two GPU count, every cache threshold for lossy goals) and, for lossy goals,
every request-level variant (fewer steps, guidance off) inside each of those servers. A grid's "best" is the
minimum of many noisy figures, so the speed-ups compared are not the search-time ones: the baseline, the
tuner's winner and the grid's winner are each re-launched and measured ``--repeats`` times, interleaved, in
one run, and the speed-ups are ratios of those medians.

    .venv/bin/python benchmarks/tune_efficiency.py [--repeats 3] [--scenario NAME ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

from tests.emulator.harness import FAKE_NVML, make_emulator  # noqa: E402

sys.path.insert(0, str(FAKE_NVML))

from omnitune.tools.benchmark import BenchmarkTarget, Workload, run_benchmark  # noqa: E402
from omnitune.tools.launch import Launcher, ServeConfig  # noqa: E402
from omnitune.tools.plan import Goal, layouts, request_candidates  # noqa: E402
from omnitune.tools.settings import Settings  # noqa: E402
from omnitune.tools.tune import ACCEPT, TuneRequest  # noqa: E402
from omnitune.tools.tune.job import make_tuner  # noqa: E402
from omnitune.tools.tune.models import Outcome  # noqa: E402
from omnitune.tools.tune.trial import LaunchTrials, Trial, request_settings, workload_with  # noqa: E402
from omnitune.tools.workspace import Workspace  # noqa: E402

FIX = (REPO / "tests" / "fixtures" / "models").resolve()
SRC = REPO / ".venv" / "vllm-omni-src" / "0.30.0"
IMAGE = {"sizes": ["256x256"], "measured": 3, "warmup": 1, "num_inference_steps": 20}
VIDEO = {"task": "text-to-video", "sizes": ["256x256"], "measured": 2, "warmup": 1, "num_inference_steps": 4,
         "num_frames": 5, "fps": 8}
SCENARIOS = [("image_fp8_compile", "tiny-zimage", {}, IMAGE, 1), ("cfg4_qwen_image", "tiny-qwenimage", {}, IMAGE, 4),
             ("video_offload", "tiny-wan", {}, VIDEO, 1), ("lossy_cliff", "tiny-qwenimage", {"quality": "lossy"}, IMAGE, 1)]


def grid(n_gpus: int, lossy: bool) -> list[dict]:
    space = []
    for eager, fp8 in itertools.product([True, False], [False, True]):
        base = {"enforce_eager": eager, **({"quantization": "fp8"} if fp8 else {})}
        for offload in ({}, {"enable_layerwise_offload": True}, {"enable_cpu_offload": True}):
            space.append({**base, **offload, "gpus": [0]})
        n = 2
        while n <= n_gpus:
            space += [{**base, **layout, "gpus": list(range(n))} for layout in layouts(n, True)]
            n *= 2
    if lossy:
        space += [{"quantization": "fp8", "gpus": [0], "cache_backend": "tea_cache", "cache_config": {"rel_l1_thresh": t}}
                  for t in (0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8)]
    return space


def job_row(ws: Workspace, job_id: str) -> None:
    """Tune candidates belong to a job (as when run through tune_start)."""
    ws.store.insert("jobs", {"id": job_id, "kind": "tune", "status": "running", "created_at": 0, "updated_at": 0})


def label(config: dict, request: dict) -> str:
    """A configuration in a few words, as the serve flags would say it."""
    short = {"quantization": "fp8", "enable_layerwise_offload": "layerwise",
             "enable_cpu_offload": "cpu-offload", "cfg_parallel_size": "cfg", "usp": "usp", "ring": "ring",
             "tensor_parallel_size": "tp"}
    words = ["eager" if config.get("enforce_eager") else "compile"]
    words += [short[k] + (str(v) if isinstance(v, int) and not isinstance(v, bool) else "")
              for k, v in config.items() if k in short and v]
    if config.get("cache_backend"):
        words.append(f"{config['cache_backend']} {next(iter(config['cache_config'].values()))}")
    words += [f"{k}={v}" for k, v in request.items() if k != "true_cfg_scale"]
    return " ".join(words)


def refused(outcomes) -> int:
    return sum(o.cause == "refused" for o in outcomes)


class Grid:
    """Every configuration measured fresh (its own workspace: nothing reused), request variants inside each."""

    def __init__(self, ws: Workspace, settings: Settings, request: TuneRequest) -> None:
        job_row(ws, "grid")
        self.runner = LaunchTrials(ws, Launcher(settings, ws), request, "grid")
        self.outcomes: list[Outcome] = []
        self.baseline: Outcome | None = None
        self.launches, self.gpu_seconds = 0, 0.0

    def measure(self, name: str, config: dict, variants: list[dict]) -> Outcome:
        compare = self.baseline.run_id if self.baseline else None
        gpus = list(range(len(config.get("gpus") or [0])))
        with self.runner.session(Trial(name=name, stage="grid", kind="layout", config=config), gpus) as session:
            outs = [session.measure(Trial(name=f"{name} {v or ''}", stage="grid", kind="request", config=config,
                                          request=v, compare_to=compare)) for v in [{}, *variants]]
        for o in outs:
            self.launches += int(o.launched)
            self.gpu_seconds += o.gpu_seconds
        self.outcomes += outs
        return outs[0]


def grid_search(ws: Workspace, settings: Settings, request: TuneRequest, n_gpus: int, lossy: bool) -> Grid:
    g = Grid(ws, settings, request)
    variants = [s for c in (request_candidates(None, []) if lossy else [])
                if (s := request_settings(c.request, request.workload.num_inference_steps))]
    base = {"enforce_eager": True, "gpus": [0]}
    g.baseline = g.measure("baseline", base, [])
    if g.baseline.status == "failed":
        base = {**base, "enable_layerwise_offload": True}
        g.baseline = g.measure("baseline+layerwise", base, [])
    for o in g.outcomes[:-1]:
        if o.run_id:
            g.runner.judge(o, Trial(name=o.name, stage="grid", kind="request", config=o.config,
                                    request=o.request_settings, compare_to=g.baseline.run_id))
    for i, cfg in enumerate(grid(n_gpus, lossy)):
        g.measure(f"grid {i}", cfg, variants)
    return g


def p50(settings: Settings, ws: Workspace, model: str, workload: Workload, config: dict, request: dict) -> float:
    """One fresh launch of ``config``, one benchmark with ``request`` settings: its p50."""
    launcher = Launcher(settings, ws)
    server = launcher.launch(ServeConfig(model=model, **config)).server
    try:
        result = run_benchmark(ws, BenchmarkTarget(server_id=server.id), workload_with(workload, request))
        return result.summary.latency.p50_s
    finally:
        launcher.stop(server.id)


def run_scenario(name: str, model: str, goal: dict, workload: dict, n_gpus: int, repeats: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        emu = make_emulator(Path(tmp) / "emu")
        emu.write(name)
        os.environ.update(emu.env)
        settings = Settings(workspace=Path(tmp) / "ws", vllm=str(emu.shim), model_roots=[FIX], vllm_omni_source=SRC)
        ws = Workspace.open(settings)
        request = TuneRequest(model=str(FIX / model), workload=Workload(**workload), goal=Goal(**goal), max_launches=200)
        job_row(ws, "tune-eff")
        tuner = make_tuner(ws, Launcher(settings, ws), request, "tune-eff")
        tuned = tuner.run()
        assert tuned is not None, "the tune found nothing that fits"
        ws2 = Workspace.open(settings.model_copy(update={"workspace": Path(tmp) / "ws-grid"}))
        g = grid_search(ws2, settings, request, n_gpus, goal.get("quality") == "lossy")
        floor = "acceptable" if goal.get("quality") == "lossy" else "lossless"
        passing = [o for o in g.outcomes if o.p50_s and (o.verdict in ACCEPT[floor] or o is g.baseline)]
        best_grid = min(passing, key=lambda o: o.p50_s)
        # the three contenders re-measured, interleaved, in a workspace of their own
        ws3 = Workspace.open(settings.model_copy(update={"workspace": Path(tmp) / "ws-check"}))
        contenders = {"baseline": (g.baseline.config, {}), "tune": (tuned.config, tuned.request_settings),
                      "grid": (best_grid.config, best_grid.request_settings)}
        times: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(repeats):
            for k, (config, req) in contenders.items():
                times[k].append(p50(settings, ws3, request.model, request.workload, config, req))
        med = {k: statistics.median(v) for k, v in times.items()}
        tune_speedup, grid_speedup = med["baseline"] / med["tune"], med["baseline"] / med["grid"]
        ws.close(), ws2.close(), ws3.close()
    ratio = tuner.ledger.gpu_seconds / g.gpu_seconds
    return (f"| {name} | {label(tuned.config, tuned.request_settings)} | "
            f"{label(best_grid.config, best_grid.request_settings)} | {tune_speedup:.2f}x | {grid_speedup:.2f}x | "
            f"{tune_speedup / grid_speedup:.1%} | {tuner.ledger.launches} / {g.launches} | "
            f"{tuner.ledger.gpu_seconds:.1f} / {g.gpu_seconds:.1f} ({ratio:.0%}) | "
            f"{refused(tuner.outcomes)} / {refused(g.outcomes)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh launches per contender for the speed-ups")
    parser.add_argument("--scenario", action="append", choices=[s[0] for s in SCENARIOS])
    args = parser.parse_args()
    logging.disable(logging.INFO)
    rows = ["| scenario | tune winner | grid winner | tune speed-up | grid speed-up | tune/grid | launches tune/grid "
            "| GPU-s tune/grid | refused tune/grid |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for scenario in SCENARIOS:
        if args.scenario and scenario[0] not in args.scenario:
            continue
        rows.append(run_scenario(*scenario, repeats=args.repeats))
        sys.stdout.write(rows[-1] + "\n")
    sys.stdout.write(f"speed-ups: medians of {args.repeats} fresh launches each, interleaved\n")
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
