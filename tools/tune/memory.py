"""Per-GPU memory of a candidate, estimated before launching it, and learned from each launch.

Weights come from the model folder's safetensors headers (sizes and dtypes only: the 8-byte length and the
JSON header are read, never the tensors). Per GPU: the DiT (halved by FP8 from 16-bit, divided by TP and by
HSDP's shards) plus the encoders and VAE; model-level offload keeps the larger part, layerwise offload a
small resident share. Activations grow with pixels x frames (x2 for CFG run as one batch), divide over the
sequence-parallel group, and shrink with VAE tiling; their scale is learned from measured peaks (and
floored by out-of-memory on the requests), the offloads' resident shares once the activations are known.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

MIB = 1024 * 1024
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
               "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}
DIT_FOLDERS = ("transformer", "transformer_2")
MAX_HEADER = 100 * MIB


def safetensors_bytes(path: Path) -> tuple[int, int]:
    """(total tensor bytes, bytes in 16-bit dtypes) from one file's header."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return 0, 0
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER:
            return 0, 0
        header = json.loads(f.read(length))
    total = half = 0
    for name, t in header.items():
        if name == "__metadata__" or not isinstance(t, dict):
            continue
        n = DTYPE_BYTES.get(t.get("dtype", ""), 2)
        for d in t.get("shape", []):
            n *= int(d)
        total += n
        half += n if t.get("dtype") in ("F16", "BF16") else 0
    return total, half


def model_weights_mib(folder: str | Path) -> dict[str, tuple[float, float]] | None:
    """MiB per component folder: (all weights, 16-bit weights); None when the folder holds no safetensors."""
    root = Path(folder)
    if not root.is_dir():
        return None
    out: dict[str, tuple[float, float]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        sizes = [safetensors_bytes(f) for f in sorted(sub.glob("*.safetensors"))]
        if sizes:
            out[sub.name] = (sum(s[0] for s in sizes) / MIB, sum(s[1] for s in sizes) / MIB)
    return out or None


class MemoryModel:
    """Estimates per-GPU MiB for a config at the workload's shape; ``capacity_mib``: the smallest GPU's memory."""

    RESIDENT = 0.15       # share of the weights layerwise offload keeps on the GPU (a block or two in flight)
    OVERHEAD_MIB = 1536   # CUDA context, workspace
    ACT_PRIOR_MIB = 2048  # per megapixel-frame (one CFG branch) until a measurement says otherwise

    def __init__(self, weights: dict[str, tuple[float, float]] | None, capacity_mib: float | None,
                 megapixels: float, frames: int, uses_cfg: bool) -> None:
        self.weights, self.capacity = weights, capacity_mib
        self.mp, self.frames, self.uses_cfg = megapixels, max(frames, 1), uses_cfg
        self.act = float(self.ACT_PRIOR_MIB)
        self.act_floor = 0.0  # activations at least this (an out-of-memory on the requests said so)
        self.act_from = ""    # what set ``act``: "resident" (weights exact), "offload" (the offload's prior share)
        self.held: dict[str, float] = {}  # measured / estimated resident weights, per way of offloading them
        self.calibrated = False

    def _parts(self, config: dict) -> tuple[float, float]:
        assert self.weights is not None
        dit = dit16 = 0.0
        others = 0.0
        for name, (total, half) in self.weights.items():
            if name in DIT_FOLDERS:
                dit, dit16 = dit + total, dit16 + half
            else:
                others += total
        if config.get("quantization") == "fp8":
            dit -= dit16 / 2
        dit /= int(config.get("tensor_parallel_size", 1) or 1)
        if config.get("use_hsdp"):  # sharded over one replica's GPUs
            dit /= max(len(config.get("gpus") or [0]) // max(int(config.get("replicas", 1) or 1), 1), 1)
        return dit, others

    def weights_mib(self, config: dict) -> float | None:
        if not self.weights:
            return None
        dit, others = self._parts(config)
        if config.get("enable_layerwise_offload"):
            return (dit + others) * self.RESIDENT
        if config.get("enable_cpu_offload"):
            return max(dit, others)
        return dit + others

    def _act_units(self, config: dict) -> float:
        shard = int(config.get("usp", 1) or 1) * int(config.get("ring", 1) or 1)
        batch = 2 if self.uses_cfg and int(config.get("cfg_parallel_size", 1) or 1) == 1 else 1
        tiled = 0.6 if config.get("vae_use_slicing") or config.get("vae_use_tiling") or \
            int(config.get("vae_patch_parallel_size", 1) or 1) > 1 else 1.0
        return self.mp * self.frames * batch / shard * tiled

    @staticmethod
    def _mode(config: dict) -> str:
        return "layerwise" if config.get("enable_layerwise_offload") else "cpu" if config.get("enable_cpu_offload") \
            else "resident"

    def _held(self, config: dict) -> float | None:
        """Weights on each GPU, corrected by what launches with the same way of offloading measured."""
        w = self.weights_mib(config)
        return None if w is None else w * self.held.get(self._mode(config), 1.0)

    def estimate(self, config: dict) -> float | None:
        w = self._held(config)
        return None if w is None else w + self.act * self._act_units(config) + self.OVERHEAD_MIB

    def doomed(self, config: dict, limit_mib: float | None = None) -> bool:
        """Surely over the GPU (or the goal's limit): the weights (exact, from the headers) plus the least the
        activations may take (half the prior until a measurement calibrates them) already exceed it."""
        w, caps = self._held(config), [c for c in (self.capacity, limit_mib) if c]
        if w is None or not caps:
            return False
        low = w + self.act * self._act_units(config) * (0.9 if self.calibrated else 0.5) + self.OVERHEAD_MIB
        return low > min(caps)

    def learn(self, config: dict, peak_mib: float | None) -> None:
        """A measured peak (above the level before launch) = weights held + activations + overhead. With the
        weights resident (exact from the headers) it sets the activation scale. With offload and no resident
        measurement yet (a model that fits only offloaded), it sets the activation scale too, the offload's
        resident share taken at its prior: one unknown per measurement, and an activation prior is the worse
        guess of the two (charging the gap to the offload would count it again for every other offload).
        With offload and the activations known, it corrects that way of holding the weights."""
        w, units = self.weights_mib(config), self._act_units(config)
        if w is None or not peak_mib or units <= 0:
            return
        mode = self._mode(config)
        if mode == "resident" or self.act_from != "resident":
            self.act = max(self.act_floor, (peak_mib - w * self.held.get(mode, 1.0) - self.OVERHEAD_MIB) / units)
            self.act_from = "resident" if mode == "resident" else "offload"
        elif w > 0:
            self.held[mode] = min(4.0, max(0.0, peak_mib - self.act * units - self.OVERHEAD_MIB) / w)
        self.calibrated = True

    def learn_oom(self, config: dict) -> None:
        """Out of memory on the requests although the weights fit: activations are larger than the GPU left them
        (a floor on their scale, so the next estimate will not repeat the mistake)."""
        w, units = self._held(config), self._act_units(config)
        if w is None or not self.capacity or units <= 0:
            return
        self.act_floor = max(self.act_floor, 1.1 * (self.capacity - w - self.OVERHEAD_MIB) / units)
        self.act = max(self.act, self.act_floor)
        self.calibrated = True
