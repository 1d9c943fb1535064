"""omnitune drives REAL `vllm serve --omni` (vLLM 0.26.0 + vLLM-Omni 0.26.0) on a GPU host, through a real MCP client.

Runs on the lent H200 after benchmarks/real_engine/README.md's carry calls have unpacked the slim set:
detect_gpus -> inspect_model_capabilities and the flag catalogue against the installed 0.26.0 -> launch_server
(eager baseline) while a side thread records what /health answers during loading -> benchmark -> stop ->
launch a second configuration (torch.compile) -> benchmark -> compare_outputs -> stop -> a launch that the real
engine refuses (the failure text and omnitune's classification) -> NVML: nothing left on the GPU.

Everything is logged to stdout and summarised as JSON (--out DIR/real.json) with the server logs beside it.

    python3 benchmarks/real_engine/gpu_real.py --slim /tmp/re/target-slim --models .carry/real/models --out $OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/inspect.py would shadow the stdlib `inspect` for scripts run from this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
import shutil
import socket
import subprocess
import threading
import time

REPO = Path(__file__).resolve().parents[2]
SUMMARY: dict = {"checks": [], "calls": []}


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def check(name: str, ok: bool, detail: str) -> None:
    SUMMARY["checks"].append({"name": name, "ok": ok, "detail": detail})
    say(f"  CHECK {'PASS' if ok else 'FAIL'}: {name}: {detail}")


def gpu_state() -> dict:
    import pynvml as nv
    nv.nvmlInit()
    try:
        out = {}
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            procs = [(p.pid, (p.usedGpuMemory or 0) // 2**20) for p in nv.nvmlDeviceGetComputeRunningProcesses(h)]
            out[i] = {"used_mib": nv.nvmlDeviceGetMemoryInfo(h).used // 2**20, "procs": procs}
        return out
    finally:
        nv.nvmlShutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HealthWatcher(threading.Thread):
    """What GET /health answers while the real server loads: refused, an HTTP status, or a timeout, with times."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.events, self.stop_at = port, [], time.monotonic() + 600
        self.halt = threading.Event()

    def run(self) -> None:
        import httpx
        t0, last = time.monotonic(), None
        while not self.halt.is_set() and time.monotonic() < self.stop_at:
            try:
                state = f"http {httpx.get(f'http://127.0.0.1:{self.port}/health', timeout=1.0).status_code}"
            except httpx.ConnectError:
                state = "refused"
            except httpx.TimeoutException:
                state = "timeout"
            except httpx.HTTPError as exc:
                state = type(exc).__name__
            if state != last:
                self.events.append([round(time.monotonic() - t0, 2), state])
                last = state
            if state == "http 200":
                return
            self.halt.wait(0.25)


def write_vllm_wrapper(work: Path, slim: Path) -> Path:
    """The serving environment as a user has it: a `vllm` executable (here the slim tree on PYTHONPATH)."""
    exe = work / "bin" / "vllm"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text(f"#!/bin/sh\nPYTHONPATH={slim} exec {sys.executable} -m vllm.entrypoints.cli.main \"$@\"\n")
    exe.chmod(0o755)
    return exe


async def run(args: argparse.Namespace) -> None:
    from mcp import Client, StdioServerParameters

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    exe = write_vllm_wrapper(work, args.slim)
    model = str((args.models / args.model).resolve())
    env = {**os.environ, "OMNITUNE_WORKSPACE": str(work / "ws"), "OMNITUNE_VLLM": str(exe),
           "OMNITUNE_MODEL_ROOTS": str(args.models.resolve()),
           "OMNITUNE_VLLM_OMNI_SOURCE": str(args.slim / "vllm_omni"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    idle = gpu_state()
    SUMMARY["gpu_idle"] = idle
    say(f"idle GPUs: {idle}")
    params = StdioServerParameters(command=sys.executable, args=["-m", "omnitune.server.main"], env=env,
                                   cwd=str(REPO))
    servers: list[str] = []
    async with Client(params) as client:
        async def call(tool: str, **arguments):
            t = time.perf_counter()
            result = await client.call_tool(tool, arguments)
            elapsed = time.perf_counter() - t
            text = "".join(getattr(c, "text", "") for c in result.content)
            say(f"[{elapsed:7.2f} s] {tool}({json.dumps(arguments)[:200]}) -> "
                f"{'ERROR ' + text[:1500] if result.is_error else 'ok'}")
            SUMMARY["calls"].append({"tool": tool, "elapsed_s": round(elapsed, 2), "error": result.is_error,
                                     "text": text[:3000] if result.is_error else None})
            return result

        async def launch(label: str, watch: bool = True, **config):
            port = free_port()
            watcher = HealthWatcher(port)
            if watch:
                watcher.start()
            body = {"model": model, "gpus": [0], "port": port, "health_timeout_s": args.health_timeout, **config}
            result = await call("launch_server", config=body)
            s = result.structured_content or {}
            while not result.is_error and (s.get("job") or {}).get("status") == "working":  # still loading
                result = await call("job_wait", job_id=s["job"]["id"], timeout_s=40)
                job = result.structured_content or {}
                s = {**s, **(job.get("result") or {}), "job": job}
                if job.get("status") == "failed":
                    SUMMARY["calls"][-1]["text"] = job.get("error")
                    result.is_error = True
            watcher.halt.set()
            server = s.get("server") or {}
            SUMMARY[f"launch_{label}"] = {"argv": s.get("argv"), "warnings": s.get("warnings"),
                                          "health_while_loading": watcher.events, "server": server,
                                          "error": None if not result.is_error else SUMMARY["calls"][-1]["text"]}
            say(f"  /health while loading ({label}): {watcher.events}")
            if server.get("id"):
                servers.append(server["id"])
            return result, server

        gpus = (await call("detect_gpus")).structured_content
        SUMMARY["detect_gpus"] = {k: gpus.get(k) for k in ("gpu_count", "driver_version", "cuda_version")}
        SUMMARY["gpu0"] = gpus["gpus"][0] if gpus.get("gpus") else None
        caps = await call("inspect_model_capabilities", model=model)
        cs = caps.structured_content or {}
        SUMMARY["capabilities"] = {"version": cs.get("vllm_omni_version"), "pipeline": cs.get("pipeline_class"),
                                   "dit": cs.get("dit_class"),
                                   "methods": {k: v.get("status") for k, v in (cs.get("methods") or {}).items()}}
        say(f"  capabilities: {json.dumps(SUMMARY['capabilities'])[:900]}")
        flags = await client.read_resource("omnitune://serve-flags")
        flag_text = flags.contents[0].text if flags.contents else ""
        SUMMARY["serve_flags_resource_chars"] = len(flag_text)
        (Path(args.out) / "serve-flags.txt").write_text(flag_text)

        workload = {"task": args.task, "sizes": [args.size], "num_inference_steps": args.steps,
                    "prompt_count": 4, "seeds": [1, 2], "warmup": 2, "measured": args.measured}
        if args.task == "text-to-video":
            workload.update(num_frames=args.frames, fps=8, video_mode="sync")
        runs = {}
        for label, config in (("eager", {"enforce_eager": True}), ("compile", {})):
            config = {**config, "extra_flags": {"--dtype": "float32"}}
            result, server = await launch(label, **config)
            if result.is_error or not server.get("id"):
                continue
            SUMMARY[f"startup_{label}"] = {"startup_s": server.get("startup_s"),
                                           "memory_after_load_mib": server.get("memory_after_load")}
            say(f"  {label}: startup {server.get('startup_s')} s, memory after load "
                f"{server.get('memory_after_load')} MiB, NVML now {gpu_state()}")
            bench = await call("benchmark", server_id=server["id"], workload=workload, wait_s=args.bench_wait)
            b = bench.structured_content or {}
            if b.get("status") in ("running", "working") and b.get("job_id"):
                bench = await call("job_wait", job_id=b["job_id"], timeout_s=args.bench_wait)
                b = (bench.structured_content or {}).get("result") or {}
            summary = b.get("summary") or {}
            runs[label] = b.get("run_id")
            SUMMARY[f"bench_{label}"] = {"run_id": b.get("run_id"), "status": b.get("status"),
                                         "latency": summary.get("latency"), "server": summary.get("server"),
                                         "gpus": summary.get("gpus"), "failures": summary.get("failures")}
            say(f"  {label}: latency {json.dumps(summary.get('latency'))}")
            logs = await call("server_logs", server_id=server["id"], lines=400)
            (Path(args.out) / f"server-{label}.log").write_text((logs.structured_content or {}).get("text") or "")
            await call("stop_server", server_id=server["id"])
            servers.remove(server["id"])
            SUMMARY[f"after_stop_{label}"] = gpu_state()
        if runs.get("eager") and runs.get("compile"):
            cmp = await call("compare_outputs", baseline_run=runs["eager"], candidate_run=runs["compile"])
            c = cmp.structured_content or {}
            SUMMARY["comparison"] = {k: c.get(k) for k in ("verdict", "pairs_compared", "psnr_db_min",
                                                            "ssim_min", "speedup_p50", "tradeoff", "summary")}
            say(f"  comparison: {json.dumps(SUMMARY['comparison'])[:1200]}")
        if args.bad_model:  # a model the real engine refuses at start: the real failure text, omnitune's class
            bad = str((args.models / args.bad_model).resolve())
            result = await call("launch_server", config={"model": bad, "gpus": [0], "enforce_eager": True,
                                                         "health_timeout_s": args.health_timeout,
                                                         "extra_flags": {"--dtype": "float32"}})
            SUMMARY["refused_launch"] = {"error": result.is_error, "text": SUMMARY["calls"][-1]["text"],
                                         "structured": result.structured_content}
            started = ((result.structured_content or {}).get("server") or {}).get("id")
            if started:  # it started after all: stop it like the others
                servers.append(started)
        try:  # the installed version's own flag list, for the record
            help_all = subprocess.run([str(exe), "serve", "--omni", "--help=all"], capture_output=True, text=True,
                                      timeout=300)
            (Path(args.out) / "help-all.txt").write_text(help_all.stdout)
            SUMMARY["help_all_lines"] = len(help_all.stdout.splitlines())
        except subprocess.TimeoutExpired:
            SUMMARY["help_all_lines"] = "timed out after 300 s"
        listed = (await call("list_servers")).structured_content
        SUMMARY["list_servers_at_end"] = listed
        for sid in list(servers):
            await call("stop_server", server_id=sid)
    time.sleep(3)
    final = gpu_state()
    SUMMARY["gpu_final"] = final
    check("no compute process left on any GPU", all(not g["procs"] for g in final.values()), str(final))
    check("GPU memory back to idle (within 256 MiB)",
          all(final[i]["used_mib"] - idle[i]["used_mib"] < 256 for i in final), f"{final} vs {idle}")
    check("both configurations launched and measured", bool(runs.get("eager") and runs.get("compile")), str(runs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slim", type=Path, required=True, help="the unpacked slim tree (vllm, vllm_omni, ...)")
    p.add_argument("--models", type=Path, required=True, help="fixture model folders WITH weights")
    p.add_argument("--model", default="tiny-qwenimage")
    p.add_argument("--bad-model", default="tiny-wan", help="a model the real engine refuses at start ('' to skip)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", default="/tmp/omnitune-real")
    p.add_argument("--size", default="256x256")
    p.add_argument("--task", default="text-to-image", choices=["text-to-image", "text-to-video"])
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--measured", type=int, default=8)
    p.add_argument("--health-timeout", type=float, default=240)
    p.add_argument("--bench-wait", type=float, default=240)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import anyio
    t = time.perf_counter()
    try:
        anyio.run(run, args)
    finally:
        SUMMARY["total_s"] = round(time.perf_counter() - t, 1)
        (args.out / "real.json").write_text(json.dumps(SUMMARY, indent=1, default=str))
        logs = sorted((Path(args.work) / "ws").glob("**/server.log"), key=lambda f: f.stat().st_mtime)
        if logs:  # the newest: the refused launch's real log
            shutil.copy(logs[-1], args.out / "last-server.log")
    failed = [c for c in SUMMARY["checks"] if not c["ok"]]
    say(f"total {SUMMARY['total_s']} s; {len(SUMMARY['checks']) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
