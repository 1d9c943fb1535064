"""Time compare_outputs on two 20-image runs at 1024x1024 (target: at most 10 s on a 2-core machine).

The runs are recorded exactly as benchmark records them (runs / requests / outputs rows, PNGs in the run
folder; tests/synthetic_runs.py), with pictures from the emulator's generator and a TeaCache-like deviation
(std 2.5) on the candidate. Every pair gets its full-size side-by-side PNG, as compare_outputs does by default.

    .venv/bin/python benchmarks/compare.py [--pairs 20] [--size 1024] [--repeats 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from omnitune.tools.compare import compare_runs  # noqa: E402
from omnitune.tools.settings import Settings  # noqa: E402
from omnitune.tools.workspace import Workspace  # noqa: E402
from tests.synthetic_runs import record_run, shots, summary  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Settings(workspace=tmp))
        prompts = 5
        seeds = -(-args.pairs // prompts)
        base = record_run(ws, shots(prompts, seeds, args.size, args.size)[:args.pairs],
                          summary=summary(1.0, 1.0, [40000.0]))
        cand = record_run(ws, shots(prompts, seeds, args.size, args.size, noise=2.5)[:args.pairs],
                          summary=summary(0.6, 1.6, [41000.0]))
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = compare_runs(ws, base, cand)
            times.append(time.perf_counter() - t)
        drawn = len(list(Path(result.folder).glob("pair-*.png")))
        ws.close()
    med = statistics.median(times)
    sys.stdout.write(f"compare_outputs, {args.pairs} pairs at {args.size}x{args.size}: median {med:.2f} s over "
                     f"{args.repeats} (runs: {', '.join(f'{x:.2f}' for x in times)}); verdict {result.verdict}, "
                     f"PSNR mean {result.psnr_db_mean:.2f} dB, SSIM mean {result.ssim_mean:.4f}, MS-SSIM min "
                     f"{result.ms_ssim_min:.4f}; {drawn} pair PNGs; target <= 10 s: "
                     f"{'PASS' if med <= 10 else 'FAIL'}\n")


if __name__ == "__main__":
    main()
