"""The NVML sampler on real GPUs: achieved rate, CPU share, and whether a 50 ms memory spike is caught.

Run on a GPU host (one command; torch is needed only by the spike process, which may use another Python):

    .venv/bin/python benchmarks/nvml_sampler.py --gpus 0,1 [--hz 200] [--seconds 10] [--spike-python PY]

1. Idle sampling for --seconds: samples/s achieved, the sampler thread's CPU time / wall (1.0 = one core),
   the process's CPU share from psutil as a cross-check, and the cost of one tick.
2. Spikes: a separate GPU process (torch) allocates --spike-gib GiB on each GPU, holds it 50 ms, frees it
   (empty_cache), --spikes times per GPU. For each spike the sampler's timeline is searched for samples
   above the level before it + 90% of the spike; a spike is caught when at least one sample sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# The repo, not this folder, on the path: a script here named like a stdlib module must not shadow it.
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + list(sys.path[1:])

from omnitune.tools.benchmark.telemetry import GpuSampler  # noqa: E402

SPIKER = r"""
import json, sys, time, torch
gpus, gib, spikes, hold = json.loads(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for g in gpus:
    torch.ones(1, device=f"cuda:{g}")  # CUDA context first: its memory is not part of a spike
    torch.cuda.synchronize(g)
print(json.dumps({"ready": True}), flush=True)
sys.stdin.readline()
n = int(gib * 1024**3)
for g in gpus:
    for k in range(spikes):
        time.sleep(0.3)
        x = torch.empty(n, dtype=torch.uint8, device=f"cuda:{g}")
        torch.cuda.synchronize(g)
        t_alloc = time.time()
        time.sleep(hold)
        t_release = time.time()
        del x
        torch.cuda.empty_cache()
        torch.cuda.synchronize(g)
        t_freed = time.time()
        print(json.dumps({"gpu": g, "k": k, "alloc": t_alloc, "release": t_release, "freed": t_freed}), flush=True)
print(json.dumps({"done": True}), flush=True)
"""


def idle(gpus: list[int], hz: float, seconds: float) -> dict:
    import psutil
    proc = psutil.Process()
    cpu0 = proc.cpu_times()
    sampler = GpuSampler(gpus, hz=hz).start()
    sampler.phase("measured")
    time.sleep(seconds)
    summary = sampler.stop()
    cpu1 = proc.cpu_times()
    process_share = ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / seconds
    return {"available": summary.available, "reason": summary.reason, "target_hz": hz,
            "rate_hz": summary.rate_hz, "samples": summary.samples, "sampler_thread_cpu_share": summary.cpu_share,
            "process_cpu_share_psutil": process_share,
            "cpu_ms_per_tick": (summary.cpu_share or 0) / (summary.rate_hz or 1) * 1000,
            "gpus": [g.model_dump() for g in summary.gpus]}


def spikes(gpus: list[int], hz: float, gib: float, count: int, hold: float, python: str) -> dict:
    proc = subprocess.Popen([python, "-c", SPIKER, json.dumps(gpus), str(gib), str(count), str(hold)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        if not first or not json.loads(first).get("ready"):
            return {"error": f"the spike process did not start (needs torch with CUDA in {python})"}
        sampler = GpuSampler(gpus, hz=hz, keep_timeline=True).start()
        sampler.phase("measured")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        events = []
        deadline = time.monotonic() + 60 + count * len(gpus) * 2
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event.get("done"):
                break
            events.append(event)
        time.sleep(0.1)
        sampler.stop()
    finally:
        proc.kill()
        proc.wait(10)
    start = sampler.started_wall or 0.0
    timeline = [(start + t, row) for t, _, row in sampler.timeline()]
    results = []
    for e in events:
        col = gpus.index(e["gpu"])
        before = [row[col] for t, row in timeline if e["alloc"] - 0.25 <= t < e["alloc"] - 0.05]
        level = min(before) if before else None
        inside = [row[col] for t, row in timeline if e["alloc"] - 0.05 <= t <= e["freed"] + 0.02]
        threshold = (level or 0) + 0.9 * gib * 1024
        seen = [v for v in inside if level is not None and v >= threshold]
        results.append({"gpu": e["gpu"], "spike": e["k"], "held_ms": round((e["freed"] - e["alloc"]) * 1000, 1),
                        "level_before_mib": level, "peak_mib": max(inside) if inside else None,
                        "samples_above_threshold": len(seen), "caught": bool(seen)})
    caught = sum(r["caught"] for r in results)
    return {"spike_gib": gib, "hold_ms": hold * 1000, "spikes": len(results), "caught": caught, "detail": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", default="0,1", help="physical GPU indices, comma separated")
    p.add_argument("--hz", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--spike-gib", type=float, default=4.0)
    p.add_argument("--spikes", type=int, default=5, help="spikes per GPU")
    p.add_argument("--hold-ms", type=float, default=50.0)
    p.add_argument("--spike-python", default=sys.executable, help="a Python with torch+CUDA (the serving env)")
    p.add_argument("--no-spikes", action="store_true")
    args = p.parse_args()
    gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    report = {"idle": idle(gpus, args.hz, args.seconds)}
    print(json.dumps(report["idle"], indent=1), flush=True)
    if not args.no_spikes:
        report["spikes"] = spikes(gpus, args.hz, args.spike_gib, args.spikes, args.hold_ms / 1000, args.spike_python)
        print(json.dumps(report["spikes"], indent=1), flush=True)
    idle_r = report["idle"]
    print(f"\nSUMMARY sampler {idle_r['rate_hz'] or 0:.1f} Hz (target {args.hz:g}) on GPUs {gpus}; "
          f"sampler CPU share {100 * (idle_r['sampler_thread_cpu_share'] or 0):.2f}% of one core "
          f"({idle_r['cpu_ms_per_tick']:.3f} ms CPU per tick); process {100 * idle_r['process_cpu_share_psutil']:.2f}%")
    if "spikes" in report:
        sp = report["spikes"]
        print(f"SUMMARY spikes {sp.get('caught')}/{sp.get('spikes')} caught "
              f"({args.spike_gib:g} GiB held {args.hold_ms:g} ms) {sp.get('error', '')}")


if __name__ == "__main__":
    main()
