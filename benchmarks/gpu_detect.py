"""detect_gpus on a real GPU host, through omnitune over stdio with the MCP client; prints the report.

Run on the host: `python3 benchmarks/gpu_detect.py [--expect-gpus N] [--expect-name H200]`.
Exits 1 when the report contradicts the expectations (so a wrong detection cannot pass silently).
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
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parents[1]


def omnitune_command() -> tuple[str, list[str]]:
    exe = shutil.which("omnitune")
    return (exe, []) if exe else (sys.executable, [str(REPO / "server" / "main.py")])


async def detect(workspace: str) -> tuple[dict, float, float]:
    command, args = omnitune_command()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")} | {"OMNITUNE_WORKSPACE": workspace}
    t0 = time.perf_counter()
    async with Client(StdioServerParameters(command=command, args=args, env=env, cwd=str(REPO))) as client:
        await client.list_tools()
        t1 = time.perf_counter()
        result = await client.call_tool("detect_gpus", {})
        t2 = time.perf_counter()
    if result.is_error:
        raise SystemExit(f"detect_gpus failed: {result.content}")
    return result.structured_content, t1 - t0, t2 - t1


def check(report: dict, expect_gpus: int | None, expect_name: str | None) -> list[str]:
    problems = []
    if not report["available"]:
        problems.append(f"no GPU: {report['reason']}")
    if expect_gpus is not None and report["gpu_count"] != expect_gpus:
        problems.append(f"expected {expect_gpus} GPUs, found {report['gpu_count']}")
    for gpu in report["gpus"]:
        if expect_name and expect_name not in (gpu["name"] or ""):
            problems.append(f"GPU {gpu['index']} is {gpu['name']!r}, not {expect_name}")
        if expect_name == "H200":
            if gpu["compute_capability"] != "9.0" or not gpu["fp8_native"]:
                problems.append(f"GPU {gpu['index']}: SM {gpu['compute_capability']}, fp8_native {gpu['fp8_native']}")
            if not 135 * 1024 <= (gpu["memory_total_mib"] or 0) <= 145 * 1024:
                problems.append(f"GPU {gpu['index']}: {gpu['memory_total_mib']} MiB is not about 141 GiB")
    if expect_name == "H200":
        problems += [f"GPUs {link['a']}-{link['b']} not linked by NVLink"
                     for link in report["links"] if not link["nvlink"]]
    return problems


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--expect-gpus", type=int)
    p.add_argument("--expect-name")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as ws:
        report, start_s, call_s = anyio.run(detect, ws)
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    sys.stdout.write(f"omnitune spawn -> tools/list {start_s:.3f} s; detect_gpus call {call_s:.3f} s\n")
    for gpu in report["gpus"]:
        sys.stdout.write(f"GPU {gpu['index']}: {gpu['name']} SM {gpu['compute_capability']} ({gpu['architecture']}) "
                         f"fp8_native={gpu['fp8_native']} {gpu['memory_total_mib'] / 1024:.1f} GiB "
                         f"used {gpu['memory_used_mib']} MiB mig={gpu['mig_mode']} unavailable={gpu['unavailable']}\n")
    for link in report["links"]:
        sys.stdout.write(f"link {link['a']}-{link['b']}: nvlink={link['nvlink']} count={link['nvlink_count']} "
                         f"via_nvswitch={link['via_nvswitch']} topology={link['topology']} "
                         f"p2p_read={link['p2p_read']}\n")
    problems = check(report, args.expect_gpus, args.expect_name)
    sys.stdout.write("CHECK: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)) + "\n")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
