"""Emulator start-to-healthy: spawning the `vllm` shim until GET /health == 200 (median of N runs).

Target (issue 4): under 2 s, so that suites launching many servers stay fast. Measured with the simulated load
time set to 0 (the emulator's own cost) and with the tuner scenarios' 0.1 s, plus the first image request.
Run: `.venv/bin/python benchmarks/emulator_startup.py [N]`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# benchmarks/ holds an inspect.py that would shadow the stdlib module for a script run from here.
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]

import httpx  # noqa: E402

from tests.emulator.harness import make_emulator, start  # noqa: E402

MODEL = str(REPO / "tests" / "fixtures" / "models" / "tiny-zimage")


def measure(root: Path, n: int, startup_s: float, args: list[str], gpus: int = 1) -> tuple[list[float], list[float]]:
    emu = make_emulator(root)
    emu.write({"gpus": [{"name": "NVIDIA H200", "memory_mib": 143771, "compute_capability": [9, 0]}] * gpus,
               "cost": {"startup_s": startup_s, "step_s_per_megapixel": 0.001, "compile_penalty_s": 0.0}})
    healthy, first = [], []
    for _ in range(n):
        served = start(emu, MODEL, *args)
        try:
            began = time.perf_counter()
            r = httpx.post(f"{served.url}/v1/images/generations", timeout=30,
                           json={"prompt": "x", "size": "64x64", "num_inference_steps": 2, "seed": 1})
            r.raise_for_status()
            first.append(time.perf_counter() - began)
            healthy.append(served.healthy_s)
        finally:
            served.stop()
    return healthy, first


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        measure(Path(tmp) / "warm", 1, 0.0, [])  # warms the page cache; not counted
        print(f"emulator start-to-healthy, {n} runs each (target < 2 s)")
        for label, startup_s, args, gpus in (("startup_s=0, 1 GPU", 0.0, [], 1),
                                             ("startup_s=0.1, 1 GPU", 0.1, [], 1),
                                             ("startup_s=0.1, usp 4 (3 workers)", 0.1, ["--usp", "4"], 4)):
            healthy, first = measure(Path(tmp) / label.replace(" ", "_"), n, startup_s, args, gpus)
            print(f"  {label:34s} healthy median {statistics.median(healthy):.3f} s  max {max(healthy):.3f} s  "
                  f"| first 64x64 image median {statistics.median(first) * 1000:.1f} ms")
        worst = max(healthy)
        print(f"target < 2 s: {'met' if worst < 2.0 else 'MISSED'}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
