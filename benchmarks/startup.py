"""Time from spawning omnitune over stdio to its tools/list answer (median of N runs).

Target (issue 2): at most 1.5 s on a 2-core machine. Run: `.venv/bin/python benchmarks/startup.py [N]`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/inspect.py would shadow the stdlib `inspect` for scripts run from this folder.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parents[1]


async def once(workspace: str) -> tuple[float, int]:
    exe = shutil.which("omnitune", path=str(Path(sys.executable).parent)) or sys.executable
    args = [] if exe != sys.executable else ["-m", "omnitune.server.main"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")} | {"OMNITUNE_WORKSPACE": workspace}
    params = StdioServerParameters(command=exe, args=args, env=env, cwd=str(REPO))
    start = time.perf_counter()
    async with Client(params) as client:
        tools = (await client.list_tools()).tools
        elapsed = time.perf_counter() - start
    return elapsed, len(tools)


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as ws:
        await once(ws)  # first spawn warms the OS page cache; not counted
        times = []
        for _ in range(n):
            t, count = await once(ws)
            times.append(t)
    median = statistics.median(times)
    sys.stdout.write(f"spawn -> tools/list over stdio: median {median:.3f} s over {n} runs "
                     f"(min {min(times):.3f}, max {max(times):.3f}); {count} tools; target <= 1.5 s: "
                     f"{'PASS' if median <= 1.5 else 'FAIL'}\n")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 10)
