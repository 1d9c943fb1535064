"""Time compare_outputs on two 20-image runs at 1024x1024 (target: at most 10 s on a 2-core machine).

The runs are recorded exactly as benchmark records them (runs / requests / outputs rows, PNGs in the run
folder), with pictures from the emulator's generator and a TeaCache-like deviation on the candidate.

    .venv/bin/python benchmarks/compare.py [--pairs 20] [--size 1024] [--repeats 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from tests.emulator import media  # noqa: E402
from tools.compare import compare_runs  # noqa: E402
from tools.settings import Settings  # noqa: E402
from tools.store import now  # noqa: E402
from tools.workspace import Workspace, new_id  # noqa: E402


def record_run(ws: Workspace, pairs: int, size: int, noise: float) -> str:
    run_id = new_id("run")
    run_dir = ws.new_run_dir(run_id)
    (run_dir / "outputs").mkdir()
    ws.store.insert("runs", {"id": run_id, "created_at": now(), "kind": "benchmark", "status": "completed",
                             "run_dir": str(run_dir), "summary": {"latency": {"p50_s": 1.0 - noise / 10}}})
    for i in range(pairs):
        prompt, seed = f"prompt {i % 5}", i // 5
        img = media.deviate(media.base_image(prompt, seed, size, size), noise, "bench", i)
        rel = f"outputs/p{i % 5:03d}-s{seed}-n0.png"
        (run_dir / rel).write_bytes(media.png_bytes(img))
        params = {"prompt": prompt, "seed": seed, "size": f"{size}x{size}", "num_inference_steps": 50}
        ws.store.insert("requests", {"run_id": run_id, "idx": i, "phase": "measured", "prompt_index": i % 5,
                                     "prompt": prompt, "seed": seed, "params": json.dumps(params), "ok": 1})
        ws.store.insert("outputs", {"run_id": run_id, "request_idx": i, "n_index": 0, "prompt_index": i % 5,
                                    "seed": seed, "kind": "image", "path": rel, "width": size, "height": size})
    return run_id


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Settings(workspace=tmp))
        base, cand = record_run(ws, args.pairs, args.size, 0.0), record_run(ws, args.pairs, args.size, 2.5)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            result = compare_runs(ws, base, cand)
            times.append(time.perf_counter() - t)
        ws.close()
    med = statistics.median(times)
    sys.stdout.write(f"compare_outputs, {args.pairs} pairs at {args.size}x{args.size}: median {med:.2f} s over "
                     f"{args.repeats} (runs: {', '.join(f'{x:.2f}' for x in times)}); verdict {result.verdict}, "
                     f"PSNR mean {result.psnr_db_mean:.2f} dB, SSIM mean {result.ssim_mean:.4f}; target <= 10 s: "
                     f"{'PASS' if med <= 10 else 'FAIL'}\n")


if __name__ == "__main__":
    main()
