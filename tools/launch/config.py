"""``ServeConfig``: every flag of the guide as a typed field, and the only way argv gets built.

Nothing an agent sends reaches a shell: each value becomes exactly one argv element, names of extra
flags must be real flags of the installed vLLM-Omni, and the model is a checked path or hub id.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from omnitune.tools.strict import StrictModel

CacheBackend = Literal["tea_cache", "cache_dit", "mag_cache", "sea_cache", "step_cache"]
ExtraValue = str | int | float | bool
FLAG_NAME = re.compile(r"^--[a-z0-9][a-z0-9-]*$")
SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}$")
Degree = Annotated[int, Field(ge=1, le=64)]


class CacheConfig(StrictModel):
    """`--cache-config` as typed fields (serialized to JSON); unset fields keep vLLM-Omni's defaults."""

    rel_l1_thresh: float | None = Field(None, ge=0, le=2, description="TeaCache: higher = faster, lossier (0.1-0.8).")
    residual_diff_threshold: float | None = Field(None, ge=0, le=2,
                                                  description="Cache-DiT DBCache: higher = faster, lossier.")
    Fn_compute_blocks: int | None = Field(None, ge=0, description="Cache-DiT: front blocks always computed.")
    Bn_compute_blocks: int | None = Field(None, ge=0, description="Cache-DiT: back blocks always computed.")
    max_warmup_steps: int | None = Field(None, ge=0, description="Cache-DiT: steps before caching starts.")
    enable_taylorseer: bool | None = Field(None, description="Cache-DiT: TaylorSeer calibration.")
    taylorseer_order: int | None = Field(None, ge=1, le=4)
    scm_steps_mask_policy: Literal["slow", "medium", "fast", "ultra"] | None = Field(
        None, description="Cache-DiT: step computation masking policy.")
    mag_threshold: float | None = Field(None, ge=0, description="MagCache threshold.")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"))


class ServeConfig(StrictModel):
    """One `vllm serve MODEL --omni` configuration. Field names follow the online flags."""

    model: str = Field(description="Local diffusers folder (inside the allowed model roots) or a Hugging Face id.")
    gpus: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="Physical GPU indices to use (CUDA_VISIBLE_DEVICES). Default: the first world_size GPUs.")
    port: int | None = Field(None, ge=1024, le=65535, description="Port; default: a free one.")
    served_model_name: str | None = Field(None, description="Name the server answers to.")
    usp: Degree = Field(1, description="Ulysses sequence-parallel degree (--usp).")
    ring: Degree = Field(1, description="Ring sequence-parallel degree (--ring).")
    cfg_parallel_size: Literal[1, 2] = Field(1, description="CFG parallel: 2 runs the two guidance passes on 2 GPUs.")
    tensor_parallel_size: Degree = Field(1, description="Tensor parallel degree of the DiT.")
    vae_patch_parallel_size: Degree = Field(1, description="VAE patch parallel degree (enables tiling).")
    use_hsdp: bool = Field(False, description="Shard DiT weights across GPUs (HSDP).")
    enable_expert_parallel: bool = Field(False, description="Expert parallel (MoE DiTs only).")
    enforce_eager: bool = Field(False, description="Disable torch.compile (the guide's baseline).")
    enable_cpu_offload: bool = Field(False, description="Model-level CPU offload (single GPU).")
    enable_layerwise_offload: bool = Field(False, description="Block-level CPU offload (single GPU).")
    vae_use_slicing: bool = False
    vae_use_tiling: bool = False
    quantization: Literal["fp8"] | None = Field(None, description="DiT weight quantization (fp8: native on SM 8.9+).")
    cache_backend: CacheBackend | None = Field(None, description="Lossy step caching backend.")
    cache_config: CacheConfig | None = None
    flow_shift: float | None = Field(None, gt=0, le=100, description="Scheduler flow shift (video models).")
    boundary_ratio: float | None = Field(None, ge=0, le=1, description="Low/high DiT boundary (Wan2.2, LTX-2).")
    extra_flags: dict[str, ExtraValue] = Field(
        default_factory=dict, description="Other `vllm serve` flags, e.g. {'--vae-fast-path': 'lossless'}; each name "
                                          "must exist in the installed vLLM-Omni and each value must parse as its "
                                          "type. true = bare switch, false = its --no- form (BooleanOptionalAction).")
    allow_unsafe_flags: list[str] = Field(
        default_factory=list, description="extra_flags you accept despite the risk omnitune names (e.g. "
                                          "['--trust-remote-code']); without this they are refused.")
    health_timeout_s: float = Field(900, gt=0, le=7200, description="Longest wait for /health == 200, seconds.")

    @field_validator("served_model_name")
    @classmethod
    def _served(cls, v: str | None) -> str | None:
        if v is not None and not SERVED_NAME.match(v):
            raise ValueError("served_model_name may hold letters, digits and . _ / : - only (max 128)")
        return v

    @field_validator("extra_flags")
    @classmethod
    def _extra(cls, v: dict[str, ExtraValue]) -> dict[str, ExtraValue]:
        for name, value in v.items():
            if not FLAG_NAME.match(name):
                raise ValueError(f"extra flag {name!r} is not a flag name like --some-flag")
            if isinstance(value, str) and any(c in value for c in "\n\r\x00"):
                raise ValueError(f"value of {name} contains a control character")
        return v

    @property
    def world_size(self) -> int:
        """GPUs the engine will use, counting parallel flags in extra_flags too (see tools/launch/world.py)."""
        from omnitune.tools.launch.world import world
        return world(self).size or self.usp  # pyright: ignore[reportArgumentType] * self.ring * self.cfg_parallel_size * self.tensor_parallel_size

    def canonical(self) -> dict:
        """The settings that define the serving configuration (not where or under which name it runs)."""
        return self.model_dump(mode="json", exclude={"gpus", "port", "served_model_name", "health_timeout_s"},
                               exclude_defaults=True)


# Typed fields own these flags: extra_flags may not set them a second time.
MANAGED_FLAGS = {
    "--usp", "--ulysses-degree", "--ring", "--ring-degree", "--cfg-parallel-size", "--tensor-parallel-size", "-tp",
    "--vae-patch-parallel-size", "--use-hsdp", "--enable-expert-parallel", "--enforce-eager", "--enable-cpu-offload",
    "--enable-layerwise-offload", "--vae-use-slicing", "--vae-use-tiling", "--quantization", "--cache-backend",
    "--cache-config", "--flow-shift", "--boundary-ratio", "--port", "--host", "--served-model-name", "--omni",
    "--model",
}


def build_argv(vllm: str, config: ServeConfig, model: str, host: str, port: int) -> list[str]:
    """The exact argv; ``model`` is the already-validated model argument."""
    argv = [vllm, "serve", model, "--omni", "--host", host, "--port", str(port)]
    if config.served_model_name:
        argv += ["--served-model-name", config.served_model_name]
    for flag, value in (("--usp", config.usp), ("--ring", config.ring),
                        ("--cfg-parallel-size", config.cfg_parallel_size),
                        ("--tensor-parallel-size", config.tensor_parallel_size),
                        ("--vae-patch-parallel-size", config.vae_patch_parallel_size)):
        if value != 1:
            argv += [flag, str(value)]
    for flag, on in (("--use-hsdp", config.use_hsdp), ("--enable-expert-parallel", config.enable_expert_parallel),
                     ("--enforce-eager", config.enforce_eager), ("--enable-cpu-offload", config.enable_cpu_offload),
                     ("--enable-layerwise-offload", config.enable_layerwise_offload),
                     ("--vae-use-slicing", config.vae_use_slicing), ("--vae-use-tiling", config.vae_use_tiling)):
        if on:
            argv.append(flag)
    if config.quantization:
        argv += ["--quantization", config.quantization]
    if config.cache_backend:
        argv += ["--cache-backend", config.cache_backend]
        if config.cache_config:
            argv += ["--cache-config", config.cache_config.to_json()]
    if config.flow_shift is not None:
        argv += ["--flow-shift", repr(config.flow_shift)]
    if config.boundary_ratio is not None:
        argv += ["--boundary-ratio", repr(config.boundary_ratio)]
    from omnitune.tools.launch.flags import render
    # One element each: a value can never become a flag of its own; false is the --no- form, never dropped.
    argv += [render(name, value) for name, value in sorted(config.extra_flags.items())]
    return argv
