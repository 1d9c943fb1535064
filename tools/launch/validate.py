"""Validation before any process starts: each rule names the problem and the fix.

Facts come from `detect_gpus` (hardware), the capability report of the installed vLLM-Omni (what the
model supports, with evidence) and the installed flag list. Errors stop the launch; warnings travel
with the result.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnitune.tools.gpus import GpuReport
from omnitune.tools.launch.config import HUB_ID, MANAGED_FLAGS, ServeConfig
from omnitune.tools.settings import Settings

# config predicate -> capability method key
USED_METHODS = {
    "ulysses_sp": lambda c: c.usp > 1, "ring_sp": lambda c: c.ring > 1, "cfg_parallel": lambda c: c.cfg_parallel_size > 1,
    "tensor_parallel": lambda c: c.tensor_parallel_size > 1, "vae_patch_parallel": lambda c: c.vae_patch_parallel_size > 1,
    "hsdp": lambda c: c.use_hsdp, "expert_parallel": lambda c: c.enable_expert_parallel,
    "cpu_offload": lambda c: c.enable_cpu_offload, "layerwise_offload": lambda c: c.enable_layerwise_offload,
    "tea_cache": lambda c: c.cache_backend == "tea_cache", "cache_dit": lambda c: c.cache_backend == "cache_dit",
    "fp8": lambda c: c.quantization == "fp8",
}
# Where vLLM-Omni only warns and carries on without the feature (sequence parallel without _sp_plan).
WARN_ONLY = {"ulysses_sp", "ring_sp"}
CACHE_KEYS = {"tea_cache": {"rel_l1_thresh"}, "mag_cache": {"mag_threshold"},
              "cache_dit": {"residual_diff_threshold", "Fn_compute_blocks", "Bn_compute_blocks", "max_warmup_steps",
                            "enable_taylorseer", "taylorseer_order", "scm_steps_mask_policy"}}


@dataclass
class ValidationResult:
    model_arg: str | None = None          # what goes to argv as MODEL
    gpus: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, problem: str, fix: str) -> None:
        self.errors.append(problem)
        self.fixes.append(fix)


def resolve_model(settings: Settings, model: str, result: ValidationResult) -> Path | None:
    """A local folder inside the allowed roots, or a hub id; anything else is refused."""
    if model.startswith("-") or any(c in model for c in "\n\r\x00"):
        result.error(f"model {model!r} is not a path or a Hugging Face id", "give a model folder or an id like Qwen/Qwen-Image")
        return None
    looks_local = model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()
    if not looks_local:
        if HUB_ID.match(model):
            result.model_arg = model
        else:
            result.error(f"model {model!r} is neither an existing folder nor a Hugging Face id (ORG/NAME)",
                         "give the absolute path of a diffusers folder, or a hub id")
        return None
    path = Path(model).expanduser().resolve()
    roots = settings.effective_model_roots
    if not any(path == r or r in path.parents for r in roots):
        result.error(f"model folder {path} lies outside the allowed model roots ({', '.join(map(str, roots))})",
                     "move the model under an allowed root or add its folder with --model-root / OMNITUNE_MODEL_ROOTS")
        return None
    if not (path / "model_index.json").is_file():
        result.error(f"{path} has no model_index.json, so it is not a diffusers model folder",
                     "point at the folder that holds model_index.json")
        return None
    result.model_arg = str(path)
    return path


def _attention_heads(folder: Path | None) -> int | None:
    cfg = folder / "transformer" / "config.json" if folder else None
    if not cfg or not cfg.is_file():
        return None
    data = json.loads(cfg.read_text())
    heads = data.get("num_attention_heads") or data.get("num_heads")
    return int(heads) if isinstance(heads, int) else None


def _method_status(report: Any, key: str) -> tuple[str | None, str]:
    methods = getattr(report, "methods", None) or {}
    m = methods.get(key)
    if m is None:
        return None, ""
    evidence = ", ".join(getattr(m, "evidence", [])[:2])
    notes = getattr(m, "notes", None) or ""
    return getattr(m, "status", None), "; ".join(x for x in (notes, f"evidence: {evidence}" if evidence else "") if x)


def validate(settings: Settings, config: ServeConfig, gpu_report: GpuReport, capability: Any | None,
             installed: set[str] | None, installed_how: str) -> ValidationResult:
    r = ValidationResult()
    folder = resolve_model(settings, config.model, r)
    ws = config.world_size

    # hardware
    if not gpu_report.available:
        r.error(f"no usable GPU ({gpu_report.reason}); vLLM-Omni serves diffusion only on GPUs",
                "run omnitune on the GPU host, or check the driver with detect_gpus")
    else:
        known = {g.index: g for g in gpu_report.gpus}
        chosen = config.gpus if config.gpus is not None else sorted(known)[:ws]
        bad = [g for g in chosen if g not in known]
        if bad:
            r.error(f"GPU index {bad} does not exist (this machine has {sorted(known)})", "use indices from detect_gpus")
        elif len(set(chosen)) != len(chosen):
            r.error(f"GPU list {chosen} repeats an index", "give each GPU once")
        elif len(chosen) < ws:
            r.error(f"world size usp {config.usp} x ring {config.ring} x cfg {config.cfg_parallel_size} x tp "
                    f"{config.tensor_parallel_size} = {ws} needs {ws} GPUs but {len(chosen)} "
                    f"{'were given' if config.gpus is not None else 'exist'}",
                    f"give {ws} GPUs or lower the parallel degrees so their product fits")
        else:
            if len(chosen) > ws:
                r.warnings.append(f"{len(chosen)} GPUs given for world size {ws}: vLLM-Omni uses the first {ws}")
                chosen = chosen[:ws]
            r.gpus = list(chosen)
            if config.quantization == "fp8":
                old = [g for g in chosen if known[g].fp8_native is False]
                if old:
                    r.warnings.append(f"GPU {old} is below SM 8.9: FP8 falls back to weight-only (memory saving, "
                                      "little or no speed-up)")
            busy = [g for g in chosen if (known[g].memory_used_mib or 0) > 0.5 * (known[g].memory_total_mib or 1)]
            if busy:
                r.warnings.append(f"GPU {busy} already has more than half its memory in use")

    # combinations vLLM-Omni refuses or the guide forbids
    if config.use_hsdp and config.tensor_parallel_size > 1:
        r.error("HSDP cannot be combined with tensor parallelism", "drop use_hsdp or set tensor_parallel_size 1")
    if config.enable_cpu_offload and config.enable_layerwise_offload:
        r.error("enable_cpu_offload and enable_layerwise_offload are both set (vLLM-Omni silently keeps one)",
                "choose one: layerwise offload is nearly free for large video DiTs, model-level offload saves most")
    if config.enable_cpu_offload and ws > 1:
        r.error(f"model-level CPU offload is a single-GPU feature but world size is {ws}",
                "use enable_layerwise_offload, which vLLM-Omni shards over the sequence-parallel group")
    if config.enable_layerwise_offload and ws > 1 and (config.tensor_parallel_size > 1 or config.use_hsdp):
        r.error("layerwise offload on several GPUs shards the weights over the sequence-parallel group "
                "(vLLM-Omni 0.30.0 distributed layerwise offload); it cannot combine with tensor parallelism or HSDP",
                "use Ulysses/Ring (and CFG parallel) with layerwise offload, or TP/HSDP without it")
    if config.cache_config and not config.cache_backend:
        r.error("cache_config is set without cache_backend", "set cache_backend (tea_cache, cache_dit, ...)")
    if config.cache_config and config.cache_backend in CACHE_KEYS:
        stray = set(config.cache_config.model_dump(exclude_none=True)) - CACHE_KEYS[config.cache_backend]
        if stray:
            r.error(f"cache_config keys {sorted(stray)} do not belong to {config.cache_backend}",
                    f"use {sorted(CACHE_KEYS[config.cache_backend])}")
    heads = _attention_heads(folder)
    if heads and config.tensor_parallel_size > 1 and heads % config.tensor_parallel_size:
        r.error(f"tensor_parallel_size {config.tensor_parallel_size} does not divide the DiT's {heads} attention heads "
                f"({folder}/transformer/config.json)", f"use a divisor of {heads}")

    # what the installed vLLM-Omni supports for this model
    if capability is None:
        r.warnings.append("no capability report for this model: feature support was not checked")
    else:
        for key, used in USED_METHODS.items():
            if not used(config):
                continue
            status, why = _method_status(capability, key)
            if status in ("rejected", "unsupported") and key not in WARN_ONLY:
                r.error(f"{key} is {status} for {getattr(capability, 'pipeline_class', config.model)} ({why})",
                        f"drop {key} from the configuration")
            elif status in ("rejected", "unsupported"):
                r.warnings.append(f"{key} is {status} for this model ({why}): vLLM-Omni will run without it")
            elif status == "unknown":
                r.warnings.append(f"support for {key} could not be established ({why})")
        backends = getattr(capability, "cache_backends", None)
        if config.cache_backend and backends and config.cache_backend not in backends:
            r.error(f"cache backend {config.cache_backend} is not offered by the installed vLLM-Omni ({backends})",
                    f"use one of {backends}")

    # extra flags, checked against the installed executable
    for name in config.extra_flags:
        if name in MANAGED_FLAGS:
            r.error(f"extra flag {name} duplicates a typed field", "set the typed field instead")
        elif installed is None:
            r.error(f"cannot check extra flag {name}: {installed_how}", "fix the vllm setting or drop extra_flags")
        elif name not in installed:
            close = difflib.get_close_matches(name, sorted(installed), n=3)
            r.error(f"{name} is not a flag of the installed vLLM-Omni (from {installed_how})",
                    f"did you mean {', '.join(close)}?" if close else "drop it")
    return r
