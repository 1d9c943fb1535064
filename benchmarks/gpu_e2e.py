"""The whole agent loop on a real GPU host, through omnitune over stdio with a real MCP client.

detect_gpus -> inspect_model_capabilities -> launch baseline -> benchmark -> stop -> launch a 2-GPU
(or 4-GPU) candidate -> benchmark -> compare_outputs -> stop everything. vLLM is absent on the hosts we
test on, so the serving process is the emulator (tests/emulator) holding REAL GPU memory with torch
(VLLM_EMU_HOLD_GPU_MEMORY=1); detection, placement, telemetry and the MCP path are real.

Checks: memory omnitune records after load and the NVML peak during the benchmark agree with what the
emulator holds within 5%; a candidate's memory lands only on its GPUs; after stop the GPUs are back to idle
and no process is left. Prints every tool call with its elapsed time; exits 1 on any failed check.

    python3 benchmarks/gpu_e2e.py --gpus 2 [--wheels DIR] [--fixtures DIR] [--vllm-omni-src DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/inspect.py would shadow the stdlib `inspect` for scripts run from this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHECKS: list[tuple[str, bool, str]] = []


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def check(name: str, ok: bool, detail: str) -> None:
    CHECKS.append((name, ok, detail))
    say(f"  CHECK {'PASS' if ok else 'FAIL'}: {name}: {detail}")


def install(wheels: Path) -> None:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                    "mcp[cli]==2.3.0"], check=True)  # numpy, Pillow, torch, psutil: already on GPU hosts
    own = list(wheels.glob("omnitune-*.whl"))  # else omnitune runs from this checkout (omnitune/ links)
    if own:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *map(str, own)],
                       check=True)
    say(f"installed omnitune and its wheels from {wheels} in {time.perf_counter() - t:.1f} s")


def scenario(gpus: int) -> dict:
    h200 = {"name": "NVIDIA H200", "memory_mib": 143771, "compute_capability": [9, 0]}
    return {"gpus": [h200] * gpus,
            "model": {"dit_gib": 40.0, "text_encoder_gib": 8.0, "vae_gib": 1.0, "uses_cfg": True},
            "memory": {"activation_gib_per_megapixel": 8.0, "overhead_gib": 1.0},
            "cost": {"startup_s": 1.0, "step_s_per_megapixel": 0.05, "compile_penalty_s": 0.5}}


def gpu_used() -> dict[int, int]:
    import pynvml as nv
    nv.nvmlInit()
    try:
        return {i: nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(i)).used // 2**20
                for i in range(nv.nvmlDeviceGetCount())}
    finally:
        nv.nvmlShutdown()


def emulator_processes(shim: Path) -> list[int]:
    import psutil
    return [p.pid for p in psutil.process_iter(["cmdline"]) if any(str(shim) in c for c in p.info["cmdline"] or [])]


async def run(args: argparse.Namespace) -> None:
    from mcp import Client, StdioServerParameters

    from tests.emulator import world as emu_world
    from tests.emulator.harness import make_vllm_shim

    work = Path(tempfile.mkdtemp(prefix="omnitune-e2e-"))
    shim = make_vllm_shim(work / "bin")
    (work / "scenario.json").write_text(json.dumps(scenario(args.gpus)))
    world = emu_world.load_scenario(str(work / "scenario.json"))  # the emulator's own truth
    model = str(args.fixtures / "tiny-qwenimage")
    env = {**os.environ, "OMNITUNE_WORKSPACE": str(work / "ws"), "OMNITUNE_VLLM": str(shim),
           "OMNITUNE_MODEL_ROOTS": str(args.fixtures), "VLLM_EMU_SCENARIO": str(work / "scenario.json"),
           "VLLM_EMU_HOLD_GPU_MEMORY": "1", "PYTHONPATH": str(REPO)}
    if args.simulate:  # rehearsal without GPUs: fake NVML reads what the emulator declares
        from tests.emulator.harness import FAKE_NVML
        (work / "state").mkdir()
        env.update(VLLM_EMU_HOLD_GPU_MEMORY="0", VLLM_EMU_STATE_DIR=str(work / "state"),
                   PYTHONPATH=f"{FAKE_NVML}{os.pathsep}{REPO}")
        os.environ.update(VLLM_EMU_SCENARIO=env["VLLM_EMU_SCENARIO"], VLLM_EMU_STATE_DIR=env["VLLM_EMU_STATE_DIR"])
        sys.path.insert(0, str(FAKE_NVML))
    if args.vllm_omni_src:
        env["OMNITUNE_VLLM_OMNI_SOURCE"] = str(args.vllm_omni_src)
    if args.serve_args:
        env["VLLM_EMU_SERVE_ARGS"] = str(args.serve_args)
    command = [sys.executable, "-m", "omnitune.server.main"]
    idle = gpu_used()
    say(f"idle GPU memory (MiB): {idle}")

    async with Client(StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(REPO))) as client:
        async def call(tool: str, **arguments):
            t = time.perf_counter()
            result = await client.call_tool(tool, arguments)
            elapsed = time.perf_counter() - t
            text = result.content[0].text if result.content else ""
            say(f"[{elapsed:7.2f} s] {tool}({json.dumps(arguments)[:160]}) -> "
                f"{'ERROR ' + text[:800] if result.is_error else 'ok'}")
            if result.is_error:
                raise SystemExit(f"{tool} failed")
            return result.structured_content

        tools = {t.name for t in (await client.list_tools()).tools}
        say(f"tools: {sorted(tools)}")
        report = await call("detect_gpus")
        for g in report["gpus"]:
            say(f"  GPU {g['index']}: {g['name']} SM {g['compute_capability']} {g['memory_total_mib']} MiB "
                f"fp8_native={g['fp8_native']}")
        check("GPUs detected", report["gpu_count"] >= args.gpus, f"{report['gpu_count']} GPUs")
        if "inspect_model_capabilities" in tools:
            caps = await call("inspect_model_capabilities", model=model)
            say("  " + ", ".join(f"{k}={v['status']}" for k, v in caps.get("methods", {}).items()))

        workload = {"sizes": ["512x512"], "num_inference_steps": 8, "measured": 4, "warmup": 1, "seeds": [7]}
        runs = {}
        layouts = [("baseline", {"enforce_eager": True, "gpus": [0]}),
                   ("candidate", {"cfg_parallel_size": 2, "gpus": [0, 1]} if args.gpus == 2 else
                    {"cfg_parallel_size": 2, "usp": 2, "gpus": [0, 1, 2, 3]})]
        for name, layout in layouts:
            launched = await call("launch_server", config={"model": model, "health_timeout_s": 180, **layout})
            server = launched["server"]
            cfg = emu_world.Config(usp=layout.get("usp", 1), cfg=layout.get("cfg_parallel_size", 1),
                                   eager=layout.get("enforce_eager", False))
            held = emu_world.load_memory_mib(world, cfg)
            after = {int(k): v for k, v in server["memory_after_load"].items()}
            say(f"  {name}: startup {server['startup_s']:.2f} s, memory after load {after} MiB; emulator holds "
                f"{held} MiB per GPU")
            for g in layout["gpus"]:
                check(f"{name} GPU {g} memory after load within 5%", abs(after[g] - held) <= 0.05 * held,
                      f"recorded {after[g]} vs held {held}")
            now_used = gpu_used()
            others = [g for g in now_used if g not in layout["gpus"]]
            above = {g: now_used[g] - idle[g] for g in others}
            check(f"{name} memory only on its GPUs", all(v < 256 for v in above.values()),
                  f"other GPUs above idle (MiB): {above}")
            bench = (await call("benchmark", server_id=server["id"], workload=workload, wait_s=600))["summary"]
            runs[name] = bench
            peak_true = emu_world.memory_per_gpu_mib(world, cfg, 512 * 512 / 1e6, 1)
            tele = {g["index"]: g for g in bench["gpus"]["gpus"]}
            for g in layout["gpus"]:
                peak = tele[g]["memory_peak_mib"] - idle[g]
                check(f"{name} GPU {g} NVML peak within 5%", abs(peak - peak_true) <= 0.05 * peak_true,
                      f"NVML peak {peak} MiB above idle vs emulator peak {peak_true} MiB "
                      f"(rate {bench['gpus']['rate_hz']:.0f} Hz, sampler CPU {bench['gpus']['cpu_share']})")
            say(f"  {name}: p50 {bench['latency']['p50_s']:.3f} s, throughput "
                f"{bench['throughput_images_per_s']:.2f} img/s, cold {bench['cold_latency_s']:.3f} s")
            stopped = await call("stop_server", server_id=server["id"])
            check(f"{name} stopped cleanly", stopped["stopped"] and stopped["gpu_memory_released"] is not False,
                  json.dumps(stopped))
        if "compare_outputs" in tools:
            cmp = await call("compare_outputs", baseline_run=runs["baseline"]["run_id"],
                             candidate_run=runs["candidate"]["run_id"])
            say(f"  compare: {json.dumps({k: cmp[k] for k in cmp if k in ('verdict', 'speedup_p50', 'psnr_db_mean')})}")
        speedup = runs["baseline"]["latency"]["p50_s"] / runs["candidate"]["latency"]["p50_s"]
        say(f"  candidate speed-up p50: {speedup:.2f}x")
    final = gpu_used()
    check("GPU memory back to idle", all(final[g] - idle[g] < 256 for g in final), f"{final} vs idle {idle}")
    check("no emulator process left", not emulator_processes(shim), str(emulator_processes(shim)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, choices=[2, 4], default=2)
    p.add_argument("--wheels", type=Path)
    p.add_argument("--fixtures", type=Path, default=REPO / "tests" / "fixtures" / "models")
    p.add_argument("--vllm-omni-src", type=Path)
    p.add_argument("--serve-args", type=Path)
    p.add_argument("--simulate", action="store_true", help="Rehearse on a machine without GPUs (fake NVML).")
    args = p.parse_args()
    if args.wheels:
        install(args.wheels)
    import anyio
    t = time.perf_counter()
    anyio.run(run, args)
    failed = [c for c in CHECKS if not c[1]]
    say(f"total {time.perf_counter() - t:.1f} s; {len(CHECKS) - len(failed)} passed, {len(failed)} failed")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
