"""Record synthetic benchmark runs through the real tables (runs / requests / outputs) with real files.

What ``tools/benchmark`` writes, without a server: PNGs (Pillow) or MP4s (PyAV, lossless x264) generated
deterministically by the emulator's media module, one measured request per shot. Used by the compare tests
and ``benchmarks/compare.py``; end-to-end tests can mix these with runs the emulator produced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnitune.tools.store import now
from omnitune.tools.workspace import Workspace, new_id
from tests.emulator import media


@dataclass
class Shot:
    """One measured request and its output: an RGB image (H, W, 3) or a list of frames."""

    prompt: str
    seed: int
    pixels: np.ndarray | list[np.ndarray]
    params: dict[str, Any] = field(default_factory=dict)  # overrides of the request parameters


def picture(prompt: str, seed: int, width: int, height: int, noise: float = 0.0, key: object = "lossy") -> np.ndarray:
    """The emulator's picture for (prompt, seed, size), with a deterministic deviation of std ``noise``."""
    return np.round(media.deviate(media.base_image(prompt, seed, width, height), noise, key, prompt, seed)
                    ).astype(np.uint8)


def video(prompt: str, seed: int, width: int, height: int, frames: int, noise: float = 0.0,
          key: object = "lossy") -> list[np.ndarray]:
    """The emulator's panning shot, each frame deviated by std ``noise``."""
    return [np.round(f).astype(np.uint8)
            for f in media.video_frames(prompt, seed, width, height, frames, [(noise, str(key), 0)])]


def shots(prompts: int, seeds: int, width: int, height: int, noise: float = 0.0, key: object = "lossy") -> list[Shot]:
    return [Shot(f"prompt {p}", s, picture(f"prompt {p}", s, width, height, noise, key))
            for p in range(prompts) for s in range(seeds)]


def record_run(ws: Workspace, shots: list[Shot], *, steps: int = 20, guidance: float = 4.0, fps: int = 8,
               summary: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
               warmup: int = 0) -> str:
    """A completed benchmark run holding ``shots`` as measured outputs (after ``warmup`` unsaved requests)."""
    run_id = new_id("run")
    run_dir = ws.new_run_dir(run_id)
    (run_dir / "outputs").mkdir()
    ws.store.insert("runs", {"id": run_id, "created_at": now(), "finished_at": now(), "kind": "benchmark",
                             "status": "completed", "model": "synthetic", "workload": {"synthetic": True},
                             "summary": summary or {"run_id": run_id, "status": "completed"}, "run_dir": str(run_dir),
                             "data": {"config": config or {}}})
    prompts = sorted({s.prompt for s in shots})
    for idx in range(warmup):  # warm-up requests: recorded, never compared
        ws.store.insert("requests", {"run_id": run_id, "idx": idx, "phase": "warmup", "prompt_index": 0,
                                     "prompt": shots[0].prompt, "seed": shots[0].seed, "params": "{}", "ok": 1})
    for i, shot in enumerate(shots):
        idx, is_video = warmup + i, isinstance(shot.pixels, list)
        first = shot.pixels[0] if is_video else shot.pixels
        h, w = first.shape[:2]
        params = {"prompt": shot.prompt, "seed": shot.seed, "size": f"{w}x{h}", "num_inference_steps": steps,
                  "guidance_scale": guidance, **({"num_frames": len(shot.pixels), "fps": fps} if is_video
                                                  else {"n": 1, "response_format": "b64_json"}), **shot.params}
        p_index = prompts.index(shot.prompt)
        rel = f"outputs/p{p_index:03d}-s{shot.seed}-n0.{'mp4' if is_video else 'png'}"
        (run_dir / rel).write_bytes(media.mp4_bytes(shot.pixels, fps) if is_video else media.png_bytes(shot.pixels))
        ws.store.insert("requests", {"run_id": run_id, "idx": idx, "phase": "measured", "prompt_index": p_index,
                                     "prompt": shot.prompt, "seed": shot.seed, "params": json.dumps(params),
                                     "latency_s": 1.0, "ok": 1})
        ws.store.insert("outputs", {"run_id": run_id, "request_idx": idx, "n_index": 0, "prompt_index": p_index,
                                    "seed": shot.seed, "kind": "video" if is_video else "image", "path": rel,
                                    "width": w, "height": h, "frames": len(shot.pixels) if is_video else 1})
    return run_id


def summary(p50_s: float, throughput: float, peaks_mib: list[float], inference_p50_s: float | None = None,
            video: bool = False) -> dict[str, Any]:
    """The RunSummary fields compare reads (tools/benchmark/summary.py names)."""
    return {"status": "completed", "requests_ok": 4, "requests_failed": 0,
            "latency": {"count": 4, "mean_s": p50_s, "p50_s": p50_s, "p90_s": p50_s * 1.1},
            "throughput_video_s_per_s" if video else "throughput_images_per_s": throughput,
            "server": {"inference_time_s": {"p50_s": inference_p50_s} if inference_p50_s else None,
                       "peak_memory_mb_max": None},
            "gpus": {"available": True, "gpus": [{"index": i, "memory_peak_mib": m} for i, m in enumerate(peaks_mib)]}}
