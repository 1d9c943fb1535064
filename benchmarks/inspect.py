"""Time the full support table (every registered pipeline) of the real vllm-omni 0.30.0 source.

cold: a fresh Python process with an empty cache (parse + analyse everything);
warm (restart): a fresh process whose workspace already holds the cache (a restarted omnitune);
warm (in process): the same call again in a running omnitune. Median of 5 each.
Targets (issue 14): cold <= 2 s, warm <= 50 ms. On a shared machine the CPU seconds of the cold run
(process time) say more than the wall clock.  Usage: .venv/bin/python benchmarks/inspect.py [version]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from omnitune.tools.settings import Settings
from omnitune.tools.capabilities import support_table
s = Settings(workspace=Path({ws!r}), vllm_omni_source=Path({src!r}))
c = time.process_time(); t = time.perf_counter(); table = support_table(s); first = time.perf_counter() - t
cpu = time.process_time() - c
again = []
for _ in range(5):
    t = time.perf_counter(); support_table(s); again.append(time.perf_counter() - t)
print(json.dumps({{"first": first, "cpu": cpu, "again": sorted(again)[2], "rows": len(table.rows)}}))
"""


def run(ws: Path, src: Path) -> dict:
    code = CHILD.format(repo=str(REPO), ws=str(ws), src=str(src))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    version = sys.argv[1] if len(sys.argv) > 1 else "0.30.0"
    src = REPO / ".venv" / "vllm-omni-src" / version
    cold, cold_cpu, restart, in_process = [], [], [], []
    rows = 0
    for _ in range(5):
        with tempfile.TemporaryDirectory() as tmp:
            first = run(Path(tmp), src)            # empty cache
            second = run(Path(tmp), src)           # cache on disk from the first run
            cold.append(first["first"])
            cold_cpu.append(first["cpu"])
            restart.append(second["first"])
            in_process.append(first["again"])
            rows = first["rows"]
    med = statistics.median
    sys.stdout.write(f"vllm-omni {version}: support table of {rows} pipelines, median of 5\n")
    sys.stdout.write(f"  cold (empty cache, fresh process):   {med(cold) * 1000:8.1f} ms  (target <= 2000)"
                     f"  runs: {', '.join(f'{x * 1000:.0f}' for x in cold)}\n")
    sys.stdout.write(f"  cold CPU time (process time):        {med(cold_cpu) * 1000:8.1f} ms\n")
    sys.stdout.write(f"  warm (restart, cache on disk):       {med(restart) * 1000:8.1f} ms  (target <= 50)\n")
    sys.stdout.write(f"  warm (same process):                 {med(in_process) * 1000:8.2f} ms  (target <= 50)\n")


if __name__ == "__main__":
    main()
