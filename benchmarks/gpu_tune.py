"""A tune on a real GPU host, killed mid-search and resumed: no GPU process may be left behind.

An omnitune (a driver process with an in-memory MCP client) starts `tune_start` on the emulator's
`lossy_cliff` scenario, with the emulator holding REAL GPU memory (VLLM_EMU_HOLD_GPU_MEMORY=1). Once three
candidates are recorded and a candidate server holds GPU memory, the driver is SIGKILLed. A second omnitune,
over stdio, sees the job `failed` (interrupted), resumes it with `tune_start(resume=...)` and waits for the result.

Checks: the kill left a GPU process (as a real crash would); the resumed job completes under the same id and
replays what was recorded; its winner passes the quality gate and nothing that passes is faster beyond the
noise band (real memory traffic narrows the scenario's gaps, so the winning threshold may differ from the
emulator-only tests); afterwards NVML lists no compute process, GPU memory is back to idle and no emulator
process is left. Prints the tune's table.

    python3 benchmarks/gpu_tune.py [--wheels DIR] [--fixtures DIR] [--serve-args FILE] --vllm-omni-src DIR [--simulate]
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/inspect.py would shadow the stdlib `inspect` for scripts run from this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
_spec = importlib.util.spec_from_file_location("gpu_e2e", Path(__file__).with_name("gpu_e2e.py"))
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)
check, say = e2e.check, e2e.say
WORKLOAD = {"sizes": ["512x512"], "num_inference_steps": 8, "measured": 3, "warmup": 1}


def compute_processes() -> list[tuple[int, int, int]]:
    """(GPU, pid, MiB) of every compute process NVML sees."""
    import pynvml as nv
    nv.nvmlInit()
    try:
        return [(i, p.pid, (p.usedGpuMemory or 0) // 2**20) for i in range(nv.nvmlDeviceGetCount())
                for p in nv.nvmlDeviceGetComputeRunningProcesses(nv.nvmlDeviceGetHandleByIndex(i))]
    finally:
        nv.nvmlShutdown()


async def resume(env: dict, job_id: str) -> dict:
    from mcp import Client, StdioServerParameters
    params = StdioServerParameters(command=sys.executable, args=["-m", "omnitune.server.main"], env=env, cwd=str(REPO))
    async with Client(params) as client:
        status = (await client.call_tool("job_status", {"job_id": job_id})).structured_content
        check("the killed omnitune's job is interrupted", status["status"] == "failed"
              and (status["error"] or "").startswith("interrupted:"), status["message"] or "")
        t = time.perf_counter()
        again = await client.call_tool("tune_start", {"resume": job_id})
        check("resume keeps the job id", not again.is_error and again.structured_content["id"] == job_id,
              again.content[0].text[:300] if again.is_error else job_id)
        final = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 540})).structured_content
        say(f"resumed run took {time.perf_counter() - t:.1f} s")
    return final


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheels", type=Path)
    p.add_argument("--fixtures", type=Path, default=REPO / "tests" / "fixtures" / "models")
    p.add_argument("--vllm-omni-src", type=Path, required=True)
    p.add_argument("--serve-args", type=Path, help="serve-args.json (with openapi.json beside it) for the emulator, "
                                                  "(default: the copy vendored in tests/emulator/reference)")
    p.add_argument("--simulate", action="store_true", help="Rehearse without GPUs (fake NVML).")
    args = p.parse_args()
    if args.wheels:
        e2e.install(args.wheels)
    from tests.emulator.harness import FAKE_NVML, SCENARIOS, make_vllm_shim

    work = Path(tempfile.mkdtemp(prefix="omnitune-gpu-tune-"))
    shim = make_vllm_shim(work / "bin")
    (work / "scenario.json").write_text((SCENARIOS / "lossy_cliff.json").read_text())
    env = {**os.environ, "OMNITUNE_WORKSPACE": str(work / "ws"), "OMNITUNE_VLLM": str(shim),
           "OMNITUNE_MODEL_ROOTS": str(args.fixtures), "OMNITUNE_VLLM_OMNI_SOURCE": str(args.vllm_omni_src),
           "VLLM_EMU_SCENARIO": str(work / "scenario.json"), "VLLM_EMU_HOLD_GPU_MEMORY": "1", "PYTHONPATH": str(REPO)}
    if args.serve_args:
        env["VLLM_EMU_SERVE_ARGS"] = str(args.serve_args.resolve())
    if args.simulate:
        (work / "state").mkdir()
        env.update(VLLM_EMU_HOLD_GPU_MEMORY="0", VLLM_EMU_STATE_DIR=str(work / "state"),
                   PYTHONPATH=f"{FAKE_NVML}{os.pathsep}{REPO}")
        os.environ.update(VLLM_EMU_SCENARIO=env["VLLM_EMU_SCENARIO"], VLLM_EMU_STATE_DIR=env["VLLM_EMU_STATE_DIR"])
        sys.path.insert(0, str(FAKE_NVML))
    from omnitune.tools.settings import Settings
    settings = Settings(workspace=work / "ws", vllm=str(shim), model_roots=[args.fixtures],
                        vllm_omni_source=args.vllm_omni_src)
    idle = e2e.gpu_used()
    say(f"idle GPU memory (MiB): {idle}; compute processes: {compute_processes()}")
    request = {"model": str(args.fixtures / "tiny-qwenimage"), "goal": {"quality": "lossy"}, "workload": WORKLOAD}
    t0 = time.perf_counter()
    driver = subprocess.Popen([sys.executable, str(REPO / "tests" / "orphan_driver.py"), settings.model_dump_json(),
                               "tune_start", json.dumps({"request": request})], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        job_id = json.loads(driver.stdout.readline())["id"]
        deadline, done, holding = time.monotonic() + 300, 0, []
        with sqlite3.connect(settings.db_path) as db:
            while time.monotonic() < deadline:
                done = db.execute("SELECT count(*) FROM tune_candidates WHERE job_id = ?", (job_id,)).fetchone()[0]
                holding = [x for x in compute_processes() if x[2] > 1024] if done >= 3 else []
                if holding:
                    break
                time.sleep(0.05)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
    say(f"SIGKILLed omnitune after {time.perf_counter() - t0:.1f} s: {done} candidates recorded; "
        f"GPU processes then: {holding}")
    time.sleep(1.0)
    left = compute_processes()
    check("the crash left a GPU process behind (as a real one would)", bool(left), str(left))
    import anyio
    final = anyio.run(resume, env, job_id)
    check("resumed job completed", final["status"] == "completed", str(final.get("error")))
    r = final["result"] or {}
    for c in r.get("candidates", []):
        say(f"  {c['name']:<38} {c['status']:<17} p50 {c['p50_s'] or 0:7.4f} s  "
            f"{(c['speedup_vs_baseline'] or 0):5.2f}x  {c['verdict'] or '':<20} {'resumed' if c['resumed'] else ''}")
    say(f"  winner: {r.get('winner', {}).get('name')}  command: {r.get('command')}")
    say(f"  launches {r.get('launches')}, GPU-seconds {r.get('gpu_seconds', 0):.1f}; notes: {r.get('notes')}")
    resumed = sum(c["resumed"] for c in r.get("candidates", []))
    names = [c["name"] for c in r.get("candidates", [])]
    check("recorded outcomes replayed, nothing measured twice", resumed >= 3 and len(names) == len(set(names)),
          f"{resumed} resumed of {len(names)}")
    winner = r.get("winner") or {}
    passing = [c for c in r.get("candidates", []) if c["p50_s"] and c["status"] != "rejected_quality"
               and c["verdict"] in (None, "identical", "lossless-equivalent", "acceptable")]
    faster = [c["name"] for c in passing if c["p50_s"] < winner.get("p50_s", 0) / 1.02]
    check("winner passes the gate and nothing passing is faster beyond the 2% noise band",
          winner.get("verdict") in ("lossless-equivalent", "acceptable") and not faster,
          f"{winner.get('name')} ({winner.get('verdict')}, p50 {winner.get('p50_s')}); faster: {faster}")
    time.sleep(1.0)
    final_used, procs = e2e.gpu_used(), compute_processes()
    check("no GPU compute process left", not procs, str(procs))
    check("GPU memory back to idle", all(final_used[g] - idle[g] < 256 for g in final_used), f"{final_used} vs {idle}")
    check("no emulator process left", not e2e.emulator_processes(shim), str(e2e.emulator_processes(shim)))
    failed = [c for c in e2e.CHECKS if not c[1]]
    say(f"total {time.perf_counter() - t0:.1f} s; {len(e2e.CHECKS) - len(failed)} passed, {len(failed)} failed")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
