"""The simulated world of one emulated server: scenario defaults, refusals, cost, memory and quality.

Every number comes from the scenario file (``VLLM_EMU_SCENARIO``; fields in README.md) so tests can
state the truth they then measure. The rules mirror vLLM-Omni 0.30.0's behaviour where it refuses or
warns; the magnitudes are the guide's (DESIGN.md) and are only as real as the scenario says.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULTS: dict = {
    "gpus": [{"name": "NVIDIA H200", "memory_mib": 143771, "compute_capability": [9, 0]}],
    "topology": "nvswitch",
    "model": {
        "pipeline_class": None,          # default: model_index.json's _class_name, or MODEL if it is a class name
        "transformer_class": None,       # the DiT class (named in the TeaCache refusal); default: the pipeline
        "kind": "image",                 # image | video
        "uses_cfg": True,
        "dit_gib": 20.0, "text_encoder_gib": 8.0, "vae_gib": 0.5,
        "sp_plan": True,                 # has _sp_plan (Ulysses/Ring work); without it SP only warns
        "sp_by_hand": False,             # no _sp_plan, but the model's code drives SP (MAGI-2, Bagel): the same
                                         # warning at load, and SP works
        "tea_cache": True,               # TeaCache coefficients exist for its DiT; "auto": as 0.30.0's list
        "rejects": [],                   # features the model raises on: cfg_parallel, tensor_parallel, ...
        "tp_divides": 24,                # attention heads: TP must divide it
        "default_size": "1024x1024", "default_steps": 50, "default_frames": 33,
        "default_guidance": 4.0,         # the guidance_scale a request gets when it sends none
    },
    "cost": {
        "startup_s": 0.2,
        "step_s_per_megapixel": 0.004,   # eager, 1 GPU, per megapixel per step (per frame for video)
        "fixed_s": 0.002,                # text encode, per request
        "vae_s_per_megapixel": 0.0,      # VAE decode per megapixel (per frame), split by --vae-patch-parallel-size
        "compile_speedup": 1.25, "compile_penalty_s": 0.3,
        "fp8_speedup": 1.4, "fp8_fallback_speedup": 1.0,
        "usp_efficiency": 0.9, "ring_efficiency": 0.8, "tp_efficiency": 0.7, "cfg_parallel_speedup": 1.9,
        "cpu_offload_slowdown": 1.6, "layerwise_offload_slowdown": 1.05,
        "vae_slicing_slowdown": 1.02, "vae_tiling_slowdown": 1.03, "hsdp_slowdown": 1.05,
        "jitter": 0.0, "jitter_seed": 0,
        "pcie_efficiency_factor": 1.0,   # topology "pcie": usp/ring/tp efficiencies times this (communication)
        "layerwise_sp_split": True,      # layerwise offload over an SP group: each rank moves 1/sp of the weights
        # threshold -> (speed-up, pixel noise std); linear between points, flat outside
        "tea_cache": [[0.0, 1.0, 0.0], [0.1, 1.4, 0.6], [0.2, 1.5, 1.2], [0.4, 1.8, 4.0], [0.8, 2.25, 20.0]],
        "cache_dit": [[0.0, 1.0, 0.0], [0.08, 1.5, 1.0], [0.12, 1.8, 2.0], [0.24, 2.2, 3.5], [0.5, 2.6, 20.0]],
        "fp8_noise": 0.8,                # pixel noise std that FP8 adds
        "fewer_steps_noise": 12.0,       # pixel noise std at 0 steps, scaled by (default - steps) / default
        "guidance_noise": 2.0,           # pixel noise std per unit of guidance_scale away from the default
        "cfg_off_noise": 30.0,           # pixel noise std when a CFG model runs without guidance (scale <= 1)
    },
    "memory": {"activation_gib_per_megapixel": 2.0, "overhead_gib": 1.0, "layerwise_resident_fraction": 0.1},
    "faults": {},
}

LOSSY_CACHE_KEY = {"tea_cache": "rel_l1_thresh", "cache_dit": "residual_diff_threshold"}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_scenario(path: str | None = None) -> dict:
    path = path or os.environ.get("VLLM_EMU_SCENARIO")
    return _merge(DEFAULTS, json.loads(Path(path).read_text()) if path else {})


def interpolate(points: list[list[float]], x: float) -> tuple[float, float]:
    """(speed-up, noise) at threshold x on a piecewise-linear curve."""
    if x <= points[0][0]:
        return points[0][1], points[0][2]
    for (x0, s0, n0), (x1, s1, n1) in zip(points, points[1:]):
        if x <= x1:
            t = (x - x0) / (x1 - x0) if x1 > x0 else 1.0
            return s0 + t * (s1 - s0), n0 + t * (n1 - n0)
    return points[-1][1], points[-1][2]


class Refusal(Exception):
    """Startup refused as vLLM-Omni would (message goes to the log, then exit 1)."""


@dataclass
class Config:
    usp: int = 1
    ring: int = 1
    cfg: int = 1
    tp: int = 1
    vae_patch: int = 1
    hsdp: bool = False
    eager: bool = False
    cpu_offload: bool = False
    layerwise: bool = False
    slicing: bool = False
    tiling: bool = False
    fp8: bool = False
    cache_backend: str | None = None
    cache_config: dict = field(default_factory=dict)
    hsdp_shard: int = -1                 # --hsdp-shard-size (-1: derived from the other parallelism)
    hsdp_replicate: int = 1              # --hsdp-replicate-size
    compile_full: bool = False           # --diffusion-compile-granularity full
    dp: int = 1                          # --data-parallel-size (counts in the real world size)
    pp: int = 1                          # --pipeline-parallel-size

    @classmethod
    def from_args(cls, ns) -> Config:
        cache = None if ns.cache_backend in (None, "none") else ns.cache_backend
        try:  # as 0.30.0 (diffusion/data.py): invalid JSON only warns and the backend defaults apply
            cache_cfg = json.loads(ns.cache_config) if ns.cache_config else {}
        except json.JSONDecodeError:
            cache_cfg = {}
        def degree(value) -> int:  # unset is 1; an explicit 0 stays 0 (the real config build refuses it)
            return 1 if value is None else int(value)

        return cls(usp=degree(ns.ulysses_degree), ring=degree(ns.ring_degree), cfg=degree(ns.cfg_parallel_size),
                   tp=degree(ns.tensor_parallel_size), vae_patch=degree(ns.vae_patch_parallel_size), hsdp=ns.use_hsdp,
                   eager=bool(ns.enforce_eager), cpu_offload=ns.enable_cpu_offload,
                   layerwise=ns.enable_layerwise_offload, slicing=ns.vae_use_slicing, tiling=ns.vae_use_tiling,
                   fp8=(ns.quantization or "").lower() == "fp8", cache_backend=cache, cache_config=cache_cfg,
                   hsdp_shard=ns.hsdp_shard_size, hsdp_replicate=ns.hsdp_replicate_size,
                   compile_full=ns.diffusion_compile_granularity == "full",
                   dp=getattr(ns, "data_parallel_size", None) or 1, pp=getattr(ns, "pipeline_parallel_size", None) or 1)

    @property
    def parallel_world(self) -> int:
        """DiffusionParallelConfig's other_parallel_world_size: pp x dp x tp x sp x cfg."""
        return self.usp * self.ring * self.cfg * self.tp * self.dp * self.pp

    @property
    def world_size(self) -> int:
        """As DiffusionParallelConfig: standalone HSDP (other parallelism all 1) sets it, else the product."""
        if self.hsdp and self.parallel_world == 1 and self.hsdp_shard > 0:
            return self.hsdp_shard * self.hsdp_replicate
        return self.parallel_world

    @property
    def hsdp_shards(self) -> int:
        """How many ways HSDP shards the DiT weights (1 without HSDP)."""
        if not self.hsdp:
            return 1
        return self.hsdp_shard if self.hsdp_shard > 0 else max(self.parallel_world // max(self.hsdp_replicate, 1), 1)

    @property
    def lossless_key(self) -> str:
        """What decides the output pixels: only lossy settings change them."""
        return json.dumps({"fp8": self.fp8, "cache": self.cache_backend,
                           "cfg": self.cache_config if self.cache_backend else {}}, sort_keys=True)


# The transformer classes with TeaCache coefficients in 0.30.0 (diffusion/cache/teacache/config.py).
TEACACHE_TRANSFORMERS = ["FluxTransformer2DModel", "Flux2Klein", "QwenImageTransformer2DModel", "Bagel",
                         "SenseNovaU1ForCausalLM", "ZImageTransformer2DModel", "StableAudioDiTModel",
                         "HunyuanImage3Pipeline", "Flux2Transformer2DModel", "LongCatImageTransformer2DModel",
                         "MiniMaxH3DiTModel"]

# diffusion/cache/selector.py (step_cache also answers to stepcache and step_cache_dit).
VALID_CACHE_BACKENDS = ("tea_cache", "cache_dit", "mag_cache", "sea_cache", "step_cache", "stepcache", "step_cache_dit")


def check_startup(world: dict, cfg: Config, devices: list[int], pipeline: str) -> list[str]:
    """Model-specific refusals (raise) and warnings (returned) that the real engine gives while loading.

    ``devices``: the physical GPU indices the server sees (CUDA_VISIBLE_DEVICES, else all). The rules the real
    parser and config build apply before any worker starts live in ``startup.py``.
    """
    model = world["model"]
    warnings = []
    if cfg.cfg > 2:  # diffusion/distributed/cfg_parallel.py (warning_once at the first request)
        warnings.append(f"cfg_parallel_size={cfg.cfg} > n_branches=2, {cfg.cfg - 2} GPU(s) will be idle for CFG")
    feature_used = {"cfg_parallel": cfg.cfg > 1, "tensor_parallel": cfg.tp > 1, "ulysses_sp": cfg.usp > 1,
                    "ring_sp": cfg.ring > 1, "vae_patch_parallel": cfg.vae_patch > 1, "hsdp": cfg.hsdp,
                    "cpu_offload": cfg.cpu_offload, "layerwise_offload": cfg.layerwise, "fp8": cfg.fp8,
                    "tea_cache": cfg.cache_backend == "tea_cache", "cache_dit": cfg.cache_backend == "cache_dit"}
    for feature in model["rejects"]:
        if feature_used.get(feature):
            raise Refusal(f"NotImplementedError: {pipeline} does not support {feature}.")
    if cfg.tp > 1 and model["tp_divides"] % cfg.tp:
        raise Refusal(f"AssertionError: tensor_parallel_size {cfg.tp} must divide the number of attention heads "
                      f"({model['tp_divides']}).")
    if cfg.cache_backend and cfg.cache_backend not in VALID_CACHE_BACKENDS:
        raise Refusal(f"ValueError: Unsupported cache backend: {cfg.cache_backend}. "
                      "Supported: 'cache_dit', 'tea_cache', 'mag_cache', 'sea_cache', 'step_cache'")
    if cfg.cache_backend == "tea_cache":  # TeaCacheConfig's checks, wrapped by TeaCacheBackend.enable
        dit = model.get("transformer_class") or pipeline
        threshold = cfg.cache_config.get("rel_l1_thresh")
        problem = None
        if threshold is not None and float(threshold) <= 0:
            problem = f"rel_l1_thresh must be positive, got {threshold}"
        elif not (dit in TEACACHE_TRANSFORMERS if model["tea_cache"] == "auto" else model["tea_cache"]):
            problem = f"'Cannot find coefficients for {dit}. Supported: {TEACACHE_TRANSFORMERS}'"
        if problem:
            raise Refusal(f"ValueError: Invalid TeaCache configuration: {problem}. Expected keys: rel_l1_thresh, "
                          "coefficients (optional). transformer_type is automatically extracted from "
                          "pipeline.transformer.__class__.__name__.")
    if (cfg.usp > 1 or cfg.ring > 1) and not model["sp_plan"]:
        warnings.append(f"Sequence parallelism is enabled (sp_size={cfg.usp * cfg.ring}) but no transformer with "
                        "_sp_plan found. SP hooks not applied. Consider adding _sp_plan to your transformer model.")
    if cfg.cpu_offload and cfg.layerwise:
        warnings.append("Both enable_cpu_offload and enable_layerwise_offload are set; using layerwise offload "
                        "(legacy flags resolve by priority: distributed layerwise > layerwise > model-level).")
    return warnings


def memory_per_gpu_mib(world: dict, cfg: Config, megapixels: float, frames: int) -> int:
    """Peak memory each GPU holds while serving a request of that shape."""
    model, mem = world["model"], world["memory"]
    dit = model["dit_gib"] * (0.5 if cfg.fp8 else 1.0) / cfg.tp
    dit /= cfg.hsdp_shards
    others = model["text_encoder_gib"] + model["vae_gib"]
    if cfg.layerwise:
        resident = (dit + others) * mem["layerwise_resident_fraction"]
    elif cfg.cpu_offload:
        resident = max(dit, others)
    else:
        resident = dit + others
    shard = max(cfg.usp * cfg.ring, 1)
    cfg_batch = 2 if model["uses_cfg"] and cfg.cfg == 1 else 1  # CFG runs cond+uncond together unless split
    activations = mem["activation_gib_per_megapixel"] * megapixels * max(frames, 1) * cfg_batch / shard
    if cfg.slicing or cfg.tiling or cfg.vae_patch > 1:  # VAE patch parallel decodes in tiles
        activations *= 0.6
    return int((resident + activations + mem["overhead_gib"]) * 1024)


def load_memory_mib(world: dict, cfg: Config) -> int:
    """What each GPU holds right after load (weights + overhead), before any request."""
    return memory_per_gpu_mib(world, cfg, 0.0, 0)


def seconds_per_request(world: dict, cfg: Config, megapixels: float, steps: int, frames: int,
                        sm: tuple[int, int], guided: bool = True) -> float:
    cost, model = world["cost"], world["model"]
    t = cost["step_s_per_megapixel"] * megapixels * steps * max(frames, 1)
    cfg_runs = model["uses_cfg"] and guided
    if model["uses_cfg"] and not guided:
        t /= 2  # no unconditional pass: half the DiT work
    speed = 1.0
    if not cfg.eager:
        speed *= cost["compile_speedup"]
    if cfg.fp8:
        speed *= cost["fp8_speedup"] if tuple(sm) >= (8, 9) else cost["fp8_fallback_speedup"]
    comm = cost["pcie_efficiency_factor"] if world.get("topology") == "pcie" else 1.0
    if model["sp_plan"] or model["sp_by_hand"]:
        speed *= parallel_speedup(cfg.usp, cost["usp_efficiency"] * comm) * \
            parallel_speedup(cfg.ring, cost["ring_efficiency"] * comm)
    speed *= parallel_speedup(cfg.tp, cost["tp_efficiency"] * comm)
    if cfg.cfg >= 2 and cfg_runs:  # a third CFG rank idles (two branches)
        speed *= cost["cfg_parallel_speedup"]
    speed *= cache_speedup(world, cfg)
    slow = 1.0
    if cfg.layerwise:  # distributed layerwise offload: each SP rank moves its share of the weights
        split = cfg.usp * cfg.ring if cost["layerwise_sp_split"] else 1
        slow *= 1 + (cost["layerwise_offload_slowdown"] - 1) / split
    elif cfg.cpu_offload:
        slow *= cost["cpu_offload_slowdown"]
    slow *= cost["vae_slicing_slowdown"] if cfg.slicing else 1.0
    slow *= cost["vae_tiling_slowdown"] if cfg.tiling else 1.0
    slow *= cost["hsdp_slowdown"] if cfg.hsdp else 1.0
    vae = cost["vae_s_per_megapixel"] * megapixels * max(frames, 1) / min(cfg.vae_patch, max(cfg.world_size, 1))
    return cost["fixed_s"] + vae + t * slow / speed


def parallel_speedup(degree: int, efficiency: float) -> float:
    """n GPUs give n x efficiency^log2(n): each doubling keeps ``efficiency`` of the ideal gain (communication)."""
    return degree * efficiency ** math.log2(degree) if degree > 1 else 1.0


def cache_speedup(world: dict, cfg: Config) -> float:
    return _cache_effect(world, cfg)[0]


def pixel_noise(world: dict, cfg: Config) -> float:
    """Standard deviation (0-255 scale) of the deterministic deviation lossy settings add."""
    noise = _cache_effect(world, cfg)[1]
    if cfg.fp8:
        noise = math.hypot(noise, world["cost"]["fp8_noise"])
    return noise


def _cache_effect(world: dict, cfg: Config) -> tuple[float, float]:
    backend = cfg.cache_backend or ""
    key = LOSSY_CACHE_KEY.get(backend)
    if not key:
        return 1.0, 0.0
    default = {"tea_cache": 0.2, "cache_dit": 0.24}[backend]  # 0.30.0's defaults (DiffusionCacheConfig)
    return interpolate(world["cost"][backend], float(cfg.cache_config.get(key, default)))


def guidance_runs(guidance_scale: float | None, true_cfg_scale: float | None) -> bool:
    """Classifier-free guidance runs unless the request turns it off with a scale <= 1 (either field)."""
    return not any(v is not None and float(v) <= 1.0 for v in (guidance_scale, true_cfg_scale))


def request_deviations(world: dict, steps: int, guidance_scale: float | None, true_cfg_scale: float | None
                       ) -> list[tuple[float, str, object]]:
    """Pixel deviations from request-level settings, as (std, tag, key) each; default settings give std 0."""
    model, cost = world["model"], world["cost"]
    fewer = max(0, model["default_steps"] - steps) / model["default_steps"]
    out: list[tuple[float, str, object]] = [(cost["fewer_steps_noise"] * fewer, "steps", steps)]
    if model["uses_cfg"] and not guidance_runs(guidance_scale, true_cfg_scale):
        out.append((cost["cfg_off_noise"], "guidance", "off"))
    elif model["uses_cfg"]:
        scale = float(guidance_scale) if guidance_scale is not None else model["default_guidance"]
        out.append((cost["guidance_noise"] * abs(scale - model["default_guidance"]), "guidance", scale))
    return out
