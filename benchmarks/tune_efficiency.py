"""tune against an exhaustive grid over the same space, on the emulator's four tuner scenarios.

For each scenario: the best configuration passing the quality gate (its speed-up), GPU-seconds spent, and
launches of configurations vLLM-Omni refuses (startup errors other than out-of-memory). Targets: speed-up
within 5% of the grid's best, at most 40% of the grid's GPU-seconds, zero refused launches.

    .venv/bin/python benchmarks/tune_efficiency.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import itertools  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

from tests.emulator.harness import FAKE_NVML, make_emulator  # noqa: E402

sys.path.insert(0, str(FAKE_NVML))

from tools.benchmark import Workload  # noqa: E402
from tools.launch import Launcher  # noqa: E402
from tools.plan import Goal, layouts  # noqa: E402
from tools.settings import Settings  # noqa: E402
from tools.tune import ACCEPT, TuneRequest, Tuner  # noqa: E402
from tools.workspace import Workspace  # noqa: E402

FIX = (REPO.parent / "shared" / "fixtures" / "models").resolve()
SRC = REPO / ".venv" / "vllm-omni-src" / "0.30.0"
IMAGE = {"sizes": ["256x256"], "measured": 3, "warmup": 1, "num_inference_steps": 8}
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


def refused(outcomes) -> int:
    return sum(o.status == "failed" and "out_of_memory" not in (o.reason or "") for o in outcomes)


def run_scenario(name: str, model: str, goal: dict, workload: dict, n_gpus: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        emu = make_emulator(Path(tmp) / "emu")
        emu.write(name)
        os.environ.update(emu.env)
        settings = Settings(workspace=Path(tmp) / "ws", vllm=str(emu.shim), model_roots=[FIX], vllm_omni_source=SRC)
        ws = Workspace.open(settings)
        launcher = Launcher(settings, ws)
        request = TuneRequest(model=str(FIX / model), workload=Workload(**workload), goal=Goal(**goal), max_launches=200)
        job_row(ws, "tune-eff")
        tuned = Tuner(ws, launcher, request, "tune-eff").run()
        # the grid: every configuration, each measured fresh (its own workspace: no reuse)
        ws2 = Workspace.open(settings.model_copy(update={"workspace": Path(tmp) / "ws-grid"}))
        job_row(ws2, "grid")
        g = Tuner(ws2, Launcher(settings, ws2), request, "grid")
        floor = "acceptable" if goal.get("quality") == "lossy" else "lossless"
        g.baseline = g.measure("baseline", "baseline", {"enforce_eager": True, "gpus": [0]})
        if g.baseline.status == "failed":
            g.baseline = g.measure("baseline+layerwise", "baseline", {"enforce_eager": True, "gpus": [0],
                                                                    "enable_layerwise_offload": True})
        for i, cfg in enumerate(grid(n_gpus, goal.get("quality") == "lossy")):
            g.measure(f"grid {i}", "grid", cfg)
        passing = [o for o in g.outcomes if o.p50_s and (o.verdict in ACCEPT[floor] or o is g.baseline)]
        best_grid = min(passing, key=lambda o: o.p50_s)
        grid_speedup = g.baseline.p50_s / best_grid.p50_s
        tune_speedup = tuned.winner.speedup_vs_baseline or 1.0
        ws.close(), ws2.close()
    ratio = tuned.gpu_seconds / g.gpu_seconds
    return (f"| {name} | {tune_speedup:.2f}x | {grid_speedup:.2f}x | {tune_speedup / grid_speedup:.1%} | "
            f"{tuned.launches} / {g.launches} | {tuned.gpu_seconds:.1f} / {g.gpu_seconds:.1f} ({ratio:.0%}) | "
            f"{refused(tuned.candidates)} / {refused(g.outcomes)} |")


def main() -> None:
    logging.disable(logging.INFO)
    rows = ["| scenario | tune best | grid best | tune/grid | launches tune/grid | GPU-s tune/grid | refused tune/grid |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for scenario in SCENARIOS:
        rows.append(run_scenario(*scenario))
        sys.stdout.write(rows[-1] + "\n")
    sys.stdout.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
