"""Trials side by side on a real GPU host: a tune with parallel trials, the emulator holding REAL GPU memory.

omnitune (over stdio, a real MCP client) runs `tune_start(max_parallel_trials=None)` on the `lossy_cliff` world
stretched to every GPU of the host (where extra GPUs per server do not pay), with the emulator holding real memory
with torch (VLLM_EMU_HOLD_GPU_MEMORY=1).
Its lossy settings are screened side by side, one GPU each. A thread samples NVML every 20 ms.

Checks: trials overlapped in time on disjoint GPUs (omnitune's timeline); while two ran at once each GPU held
memory (NVML), and no GPU ever held two servers' memory (peak per GPU under 1.5x the largest one server's peak
omnitune measured); no two benchmarks overlapped (the winner's figure included); afterwards no compute process is
left and every GPU is back to idle. Prints the placement.

    python3 benchmarks/gpu_parallel.py --vllm-omni-src DIR [--wheels DIR] [--simulate]
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/inspect.py would shadow the stdlib `inspect` for scripts run from this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import importlib.util
import json
import os
import tempfile
import threading
import time

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
_spec = importlib.util.spec_from_file_location("gpu_e2e", Path(__file__).with_name("gpu_e2e.py"))
assert _spec and _spec.loader
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)
check, say = e2e.check, e2e.say
WORKLOAD = {"sizes": ["512x512"], "num_inference_steps": 8, "measured": 3, "warmup": 1}


class Sampler(threading.Thread):
    """NVML memory per GPU every 20 ms: (time, {gpu: MiB})."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, dict[int, int]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append((time.time(), e2e.gpu_used()))
            self.halt.wait(0.02)


async def run(args: argparse.Namespace, env: dict, fixtures: Path) -> dict:
    from mcp import Client, StdioServerParameters
    params = StdioServerParameters(command=sys.executable, args=["-m", "omnitune.server.main"], env=env, cwd=str(REPO))
    request = {"model": str(fixtures / "tiny-qwenimage"), "goal": {"quality": "lossy"}, "workload": WORKLOAD,
               "max_parallel_trials": None}
    async with Client(params) as client:
        job = (await client.call_tool("tune_start", {"request": request})).structured_content
        final: dict = {}
        for _ in range(20):  # bounded: 20 x 40 s
            final = (await client.call_tool("job_wait", {"job_id": job["id"], "timeout_s": 40})).structured_content
            if final["status"] != "working":
                break
    return final


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--wheels", type=Path)
    p.add_argument("--fixtures", type=Path, default=REPO / "tests" / "fixtures" / "models")
    p.add_argument("--vllm-omni-src", type=Path, required=True)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--simulate", action="store_true", help="Rehearse without GPUs (fake NVML).")
    args = p.parse_args()
    if args.wheels:
        e2e.install(args.wheels)
    import anyio

    from tests.emulator.harness import FAKE_NVML, SCENARIOS, make_vllm_shim

    work = Path(tempfile.mkdtemp(prefix="omnitune-gpu-parallel-"))
    shim = make_vllm_shim(work / "bin")
    world = json.loads((SCENARIOS / "lossy_cliff.json").read_text())
    world["gpus"] = world["gpus"] * args.gpus
    # Extra GPUs do not pay in this world, so the best layout is one GPU and the lossy rungs run one per GPU.
    world["cost"].update(usp_efficiency=0.2, ring_efficiency=0.2, tp_efficiency=0.2, cfg_parallel_speedup=0.9)
    (work / "scenario.json").write_text(json.dumps(world))
    env = {**os.environ, "OMNITUNE_WORKSPACE": str(work / "ws"), "OMNITUNE_VLLM": str(shim),
           "OMNITUNE_MODEL_ROOTS": str(args.fixtures), "OMNITUNE_VLLM_OMNI_SOURCE": str(args.vllm_omni_src),
           "VLLM_EMU_SCENARIO": str(work / "scenario.json"), "VLLM_EMU_HOLD_GPU_MEMORY": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if args.simulate:
        (work / "state").mkdir()
        env.update(VLLM_EMU_HOLD_GPU_MEMORY="0", VLLM_EMU_STATE_DIR=str(work / "state"),
                   PYTHONPATH=f"{FAKE_NVML}{os.pathsep}{REPO}")
        os.environ.update(VLLM_EMU_SCENARIO=env["VLLM_EMU_SCENARIO"], VLLM_EMU_STATE_DIR=env["VLLM_EMU_STATE_DIR"])
        sys.path.insert(0, str(FAKE_NVML))
    idle = e2e.gpu_used()
    say(f"idle GPU memory (MiB): {idle}")
    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    try:
        final = anyio.run(run, args, env, args.fixtures)
    finally:
        sampler.halt.set()
        sampler.join(5)
    say(f"tune took {time.perf_counter() - t0:.1f} s: {final.get('status')} {final.get('error') or ''}")
    r = final.get("result") or {}
    timeline = r.get("timeline") or []
    for pl in timeline:
        say(f"  {pl['trial'][:38]:38s} GPUs {pl['gpus']} {pl['started_at'] or 0:.2f}-{pl['ended_at'] or 0:.2f} "
            f"alone={pl['alone']} beside={pl.get('beside')}")
    ran = [pl for pl in timeline if pl["started_at"] and pl["ended_at"]]
    together = [(a, b) for i, a in enumerate(ran) for b in ran[i + 1:]
                if a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]]
    check("the tune completed", final.get("status") == "completed", str(final.get("error")))
    check("trials ran side by side", bool(together), f"{len(together)} overlapping pair(s)")
    check("overlapping trials never shared a GPU",
          all(set(a["gpus"]).isdisjoint(b["gpus"]) for a, b in together), str([(a["gpus"], b["gpus"])
                                                                               for a, b in together]))
    both = [s for t, s in sampler.samples for a, b in together[:1]
            if max(a["started_at"], b["started_at"]) < t < min(a["ended_at"], b["ended_at"])]
    above = [{g: m - idle.get(g, 0) for g, m in s.items()} for s in both]
    peak = {g: max(a[g] for a in above) for g in idle} if above else {}
    say(f"NVML while the first pair ran together ({len(both)} samples): peak MiB above idle per GPU {peak}")
    one = max((v for a in above for v in a.values()), default=0)
    check("both GPUs held memory while the pair ran together", bool(peak) and all(v > 1024 for v in peak.values()),
          str(peak))
    # the pair may be different trials (trials started ahead: the baseline beside the FP8 recipe), so the bound is
    # the largest one server's peak omnitune measured: two servers on one GPU would hold about twice that
    single = max((c.get("peak_memory_mib") or 0 for c in r.get("candidates") or []), default=0)
    check("no GPU held two servers' memory", bool(peak) and bool(single) and one < 1.5 * single,
          f"max {one} MiB on a GPU; largest one server's peak {single:.0f} MiB")
    winner = (r.get("winner") or {}).get("name")
    # the design: launches overlap, benchmarks take one slot on the host (no figure measured beside another)
    mine = [pl for pl in timeline if pl["trial"] == winner]
    check("the winner's figure was measured with no other benchmark running (one benchmark at a time)",
          bool(mine) and all(pl.get("bench_beside") == [] for pl in mine),
          f"winner {winner}: {[pl.get('bench_beside') for pl in mine]}")
    check("no two benchmarks overlapped", all(not pl.get("bench_beside") for pl in timeline),
          str([(pl["trial"], pl.get("bench_beside")) for pl in timeline if pl.get("bench_beside")]))
    time.sleep(2)
    final_mem = e2e.gpu_used()
    check("GPU memory back to idle", all(final_mem[g] - idle[g] < 256 for g in final_mem), f"{final_mem} vs {idle}")
    check("no emulator process left", not e2e.emulator_processes(shim), str(e2e.emulator_processes(shim)))
    failed = [c for c in e2e.CHECKS if not c[1]]
    say(f"{len(e2e.CHECKS) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
