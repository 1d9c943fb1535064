"""What the installed vLLM-Omni supports for a model, read from its code (never imported, never a table).

Public surface (stable; the launcher, planner and tuner call it):
- :func:`inspect_model` (settings, model) -> :class:`CapabilityReport`
- :func:`installed_serve_flags` (settings) -> set of option strings `vllm serve --omni` accepts
- :func:`support_table` (settings) -> :class:`SupportTable` for every registered pipeline
"""

from __future__ import annotations

from omnitune.tools.capabilities.models import head_count, resolve_model
from omnitune.tools.capabilities.report import (
    GUIDE_FLAGS,
    METHOD_KEYS,
    CapabilityReport,
    Constraint,
    FlagCheck,
    MethodSupport,
    SupportRow,
    SupportTable,
)
from omnitune.tools.capabilities.service import analyzer
from omnitune.tools.settings import Settings

__all__ = ["inspect_model", "installed_serve_flags", "support_table", "CapabilityReport", "MethodSupport",
           "Constraint", "FlagCheck", "SupportRow", "SupportTable", "METHOD_KEYS", "GUIDE_FLAGS"]


def installed_serve_flags(settings: Settings) -> set[str]:
    """Every option string `vllm serve MODEL --omni` accepts in the located vllm-omni (see flags.py for how)."""
    return set(analyzer(settings).version_info().all_flags)


def flag_check(flags: set[str], how: str) -> FlagCheck:
    return FlagCheck(present=[f for f in GUIDE_FLAGS if f in flags], missing=[f for f in GUIDE_FLAGS if f not in flags],
                     source=how)


def inspect_model(settings: Settings, model: str) -> CapabilityReport:
    """Resolve ``model`` (folder, HF id in the local cache, or pipeline class) and report what vllm-omni does for it."""
    resolved = resolve_model(settings, model)
    an = analyzer(settings)
    info = an.version_info()
    result = an.pipeline(resolved.arch, check=False)
    an.flush()
    constraints = list(result.constraints)
    constraints += _model_constraints(result, resolved.path, info.ulysses_heads_evidence)
    from omnitune.tools.capabilities.docs_check import docs_disagreements
    return CapabilityReport(
        model=model, model_path=str(resolved.path) if resolved.path else None,
        pipeline_class=result.pipeline_class, pipeline_impl=result.pipeline_impl,
        pipeline_module=result.pipeline_module, dit_class=result.dit_class, dit_module=result.dit_module,
        dit_classes=result.dit_classes, vllm_omni_version=an.located.version, located_via=an.located.via,
        vllm_omni_path=str(an.located.root), methods=result.methods, constraints=constraints,
        cache_backends=info.cache_backends, quantization_methods=info.quantization_methods,
        quantization_note="vllm-omni's own methods (quantization/factory.py _OVERRIDES); vLLM's built-in methods "
                          "(fp8 and the rest of vllm's QUANTIZATION_METHODS) are accepted too but live in vllm.",
        uses_cfg=result.uses_cfg, flags=flag_check(set(info.all_flags), info.flags_how),
        docs_disagreements=docs_disagreements(an, [result]))


def _model_constraints(result, path, ulysses_evidence) -> list[Constraint]:
    """Constraints that need the model's own config (head counts) or follow from how the code works."""
    out: list[Constraint] = []
    attr = (result.dit_attrs or ["transformer"])[0]
    heads, where = head_count(path, attr)
    m = result.methods
    if m["tensor_parallel"].status == "supported":
        out.append(Constraint(
            kind="divides", parameter="tensor_parallel_size", value=heads, methods=["tensor_parallel"],
            description=("tensor_parallel_size must divide the DiT's attention heads"
                         + (f" ({heads}, from {where})" if heads
                            else " (num_attention_heads in transformer/config.json)")
                         + ": vLLM's QKVParallelLinear splits whole heads."),
            evidence=m["tensor_parallel"].evidence[:1]))
    if m["ulysses_sp"].status == "supported":
        out.append(Constraint(
            kind="divides", parameter="ulysses_degree", value=heads, methods=["ulysses_sp"],
            description="ulysses_degree must divide the attention head count in strict Ulysses mode"
                        + (f" ({heads}, from {where})" if heads else ""),
            evidence=[e for e in [ulysses_evidence] if e]))
    if m["cfg_parallel"].status == "supported" and not any(c.parameter in ("cfg_parallel_size", "cfg_size")
                                                            for c in out + result.constraints):
        out.append(Constraint(kind="one_of", parameter="cfg_parallel_size", values=[1, 2], methods=["cfg_parallel"],
                              description="CFG parallel splits the positive and negative branches: 1 or 2 GPUs.",
                              evidence=m["cfg_parallel"].evidence[:1]))
    if m["vae_patch_parallel"].status == "supported":
        out.append(Constraint(kind="implies", parameter="vae_patch_parallel_size", methods=["vae_patch_parallel"],
                              description="vae_patch_parallel_size > 1 turns VAE tiling on automatically.",
                              evidence=m["vae_patch_parallel"].evidence[-1:]))
    return out


def support_table(settings: Settings) -> SupportTable:
    """The support table for every registered pipeline of the located vllm-omni (cached)."""
    an = analyzer(settings)
    analyses = an.table()                # checks the files once, re-reads what changed
    found = an.memo("support_table", SupportTable)
    if found is not None:
        return found
    info = an.version_info(check=False)
    rows = [SupportRow(pipeline_class=r.pipeline_class, pipeline_impl=r.pipeline_impl, dit_class=r.dit_class,
                       methods=r.methods, uses_cfg=r.uses_cfg, error=r.error) for r in analyses]
    table = SupportTable(vllm_omni_version=an.located.version, located_via=an.located.via,
                         vllm_omni_path=str(an.located.root), cache_backends=info.cache_backends,
                         quantization_methods=info.quantization_methods, rows=rows)
    an.memo("support_table", SupportTable, table)
    return table
