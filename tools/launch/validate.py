"""Validation before any process starts: each rule names the problem and the fix.

Facts come from `detect_gpus` (hardware), the capability report of the installed vLLM-Omni (what the
model supports, with evidence) and the installed flag list. Errors stop the launch; warnings travel
with the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omnitune.tools.capabilities.flags import Catalogue
from omnitune.tools.capabilities.models import ResolvedModel
from omnitune.tools.capabilities.models import resolve_model as resolve
from omnitune.tools.errors import OmnituneError
from omnitune.tools.gpus import GpuReport
from omnitune.tools.launch.config import MANAGED_FLAGS, ServeConfig
from omnitune.tools.launch.flags import check_extra_flags
from omnitune.tools.launch.world import world
from omnitune.tools.settings import Settings

# config predicate -> capability method key
USED_METHODS = {
    "ulysses_sp": lambda c: c.usp > 1, "ring_sp": lambda c: c.ring > 1,
    "cfg_parallel": lambda c: c.cfg_parallel_size > 1, "tensor_parallel": lambda c: c.tensor_parallel_size > 1,
    "vae_patch_parallel": lambda c: c.vae_patch_parallel_size > 1,
    "hsdp": lambda c: c.use_hsdp, "expert_parallel": lambda c: c.enable_expert_parallel,
    "cpu_offload": lambda c: c.enable_cpu_offload, "layerwise_offload": lambda c: c.enable_layerwise_offload,
    "tea_cache": lambda c: c.cache_backend == "tea_cache", "cache_dit": lambda c: c.cache_backend == "cache_dit",
    "fp8": lambda c: c.quantization == "fp8",
}
# Capability constraint parameters -> the typed field that sets them.
CONSTRAINED = {"tensor_parallel_size": "tensor_parallel_size", "ulysses_degree": "usp", "usp": "usp",
               "ring_degree": "ring", "ring": "ring", "cfg_parallel_size": "cfg_parallel_size",
               "vae_patch_parallel_size": "vae_patch_parallel_size"}
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


def resolve_model(settings: Settings, model: str, result: ValidationResult) -> ResolvedModel | None:
    """The one model resolver (model roots, HF cache only without --allow-network); a class name cannot be served."""
    try:
        resolved = resolve(settings, model)
    except OmnituneError as exc:
        result.error(exc.problem.rstrip("."), exc.fix or "give a model folder or an id like Qwen/Qwen-Image")
        return None
    if not resolved.launchable:
        result.error(f"{model!r} is a pipeline class name, not weights vllm serve can load",
                     "give the model's folder (holding model_index.json) or its Hugging Face id")
        return None
    result.model_arg = resolved.serve_arg
    return resolved


def constraint_violations(capability: Any, settings: dict[str, Any]) -> list[tuple[str, str]]:
    """The capability report's size constraints (``divides``, ``one_of``) that ``settings`` (ServeConfig field
    names) break: the one reading of them, for the launch gate and for the plan that must not propose them."""
    out: list[tuple[str, str]] = []
    for c in getattr(capability, "constraints", None) or []:
        field = CONSTRAINED.get(str(getattr(c, "parameter", None)))
        if field == "usp" and (settings.get("extra_flags") or {}).get("--ulysses-mode") == "advanced_uaa":
            continue  # advanced_uaa pads uneven heads: the strict-mode divisibility rule does not apply
        setting = settings.get(field, 1) if field else None
        if not isinstance(setting, int) or setting <= 1:
            continue
        value, values = getattr(c, "value", None), getattr(c, "values", None)
        text = f"{getattr(c, 'description', '')} ({', '.join(list(getattr(c, 'evidence', None) or [])[:2])})"
        if getattr(c, "kind", None) == "divides" and isinstance(value, int) and value % setting:
            out.append((f"{field} {setting} must divide {value} for this model: {text}", f"use a divisor of {value}"))
        elif getattr(c, "kind", None) == "one_of" and values and setting not in values:
            out.append((f"{field} {setting} is not one of the sizes this model allows {values}: {text}",
                        f"use one of {values}"))
    return out


def _method_status(report: Any, key: str) -> tuple[str | None, str]:
    methods = getattr(report, "methods", None) or {}
    m = methods.get(key) if isinstance(methods, dict) else None
    if m is None:
        return None, ""
    evidence = ", ".join(list(getattr(m, "evidence", None) or [])[:2])
    notes = getattr(m, "notes", None) or ""
    return getattr(m, "status", None), "; ".join(x for x in (notes, f"evidence: {evidence}" if evidence else "") if x)


def _hardware(r: ValidationResult, config: ServeConfig, gpu_report: GpuReport, ws: int, formula: str) -> None:
    if not gpu_report.available:
        r.error(f"no usable GPU ({gpu_report.reason}); vLLM-Omni serves diffusion only on GPUs",
                "run omnitune on the GPU host, or check the driver with detect_gpus")
        return
    known = {g.index: g for g in gpu_report.gpus}
    chosen = config.gpus if config.gpus is not None else sorted(known)[:ws]
    bad = [g for g in chosen if g not in known]
    if bad:
        r.error(f"GPU index {bad} does not exist (this machine has {sorted(known)})", "use indices from detect_gpus")
    elif len(set(chosen)) != len(chosen):
        r.error(f"GPU list {chosen} repeats an index", "give each GPU once")
    elif len(chosen) < ws:
        r.error(f"world size {formula} = {ws} needs {ws} GPUs but {len(chosen)} "
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


def _combinations(r: ValidationResult, config: ServeConfig, ws: int) -> None:
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
    if config.vae_patch_parallel_size > ws:
        r.warnings.append(f"vae_patch_parallel_size {config.vae_patch_parallel_size} exceeds the world size {ws}: "
                          f"vLLM-Omni clamps it to {ws} (diffusion/distributed/vae_patch_parallel.py)")
    if config.cache_config and not config.cache_backend:
        r.error("cache_config is set without cache_backend", "set cache_backend (tea_cache, cache_dit, ...)")
    if config.cache_config and config.cache_backend in CACHE_KEYS:
        stray = set(config.cache_config.model_dump(exclude_none=True)) - CACHE_KEYS[config.cache_backend]
        if stray:
            r.error(f"cache_config keys {sorted(stray)} do not belong to {config.cache_backend}",
                    f"use {sorted(CACHE_KEYS[config.cache_backend])}")
    if config.quantization and "--diffusion-quantization-config" in config.extra_flags:
        r.error("quantization and --diffusion-quantization-config cannot both be provided (vLLM-Omni refuses at start)",
                "keep quantization: fp8, or drop it and describe the method in --diffusion-quantization-config")


def _model_rules(r: ValidationResult, config: ServeConfig, resolved: ResolvedModel | None,
                 capability: Any | None) -> None:
    heads, where = resolved.heads() if resolved else (None, None)
    if heads and config.tensor_parallel_size > 1 and heads % config.tensor_parallel_size:
        r.error(f"tensor_parallel_size {config.tensor_parallel_size} does not divide the DiT's {heads} attention heads "
                f"({where})", f"use a divisor of {heads}")
    if capability is None:
        r.warnings.append("no capability report for this model: feature support was not checked")
        return
    for key, used in USED_METHODS.items():
        if not used(config):
            continue
        status, why = _method_status(capability, key)
        if status == "rejected":  # the model raises when asked
            r.error(f"{key} is rejected by {getattr(capability, 'pipeline_class', config.model)}: the model raises "
                    f"when it is enabled ({why})", f"drop {key} from the configuration")
        elif status == "unsupported":  # the engine starts and runs without it
            r.warnings.append(f"{key} is unsupported for this model ({why}): vLLM-Omni starts but ignores it, so it "
                              "costs GPUs or time for nothing")
        elif status == "unknown":
            r.warnings.append(f"support for {key} could not be established ({why})")
    for problem, fix in constraint_violations(capability, config.model_dump()):
        r.error(problem, fix)
    backends = getattr(capability, "cache_backends", None)
    if config.cache_backend and backends and config.cache_backend not in backends:
        r.error(f"cache backend {config.cache_backend} is not offered by the installed vLLM-Omni ({backends})",
                f"use one of {backends}")


def validate(settings: Settings, config: ServeConfig, gpu_report: GpuReport, capability: Any | None,
             catalogue: Catalogue | None) -> ValidationResult:
    """omnitune's own rules (the engine preflight runs after these, on the argv they allow)."""
    r = ValidationResult()
    resolved = resolve_model(settings, config.model, r)
    w = world(config)
    if w.size is None:
        r.error(w.problem or "the parallel settings are inconsistent", w.fix or "fix the parallel degrees")
    if w.warning:
        r.warnings.append(w.warning)
    _hardware(r, config, gpu_report, w.size or 1, w.formula)
    _combinations(r, config, w.size or 1)
    _model_rules(r, config, resolved, capability)
    if config.extra_flags:
        if catalogue is None:
            r.error("cannot check extra_flags: no flag catalogue", "fix the vllm setting or drop extra_flags")
        else:
            if not catalogue.exact:
                r.warnings.append(f"extra_flags checked against {catalogue.how}")
            for issue in check_extra_flags(config.extra_flags, catalogue, config.allow_unsafe_flags,
                                           settings.effective_model_roots):
                if issue.warning:
                    r.warnings.append(issue.problem)
                else:
                    r.error(issue.problem, issue.fix)
    for name in config.extra_flags:  # names the catalogue may not know as aliases of typed fields
        if name in MANAGED_FLAGS and not any(name in p for p in r.errors):
            r.error(f"extra flag {name} duplicates a typed field", "set the typed field instead")
    return r
