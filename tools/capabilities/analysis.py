"""Per-method support for one registered pipeline, decided by reading its code (see README of the guide).

Rules, each reported with the lines that decided it:
- a marker counts only if the installed generic code reads it (facts) and the class or an in-package
  base assigns it a non-empty value (comments and strings are invisible to ``ast``);
- SP and CFG parallel may be implemented without markers (model code calling the SP / CFG groups);
  inheriting ``CFGParallelMixin`` without ever reaching its parallel path is not support;
- TeaCache and Cache-DiT look models up by exact runtime class name (pipeline enablers, then the DiT
  class for TeaCache's extractors), exactly as their backends do;
- a refusal in the model's own code (``if tp > 1: raise``) overrides everything: status ``rejected``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Literal

from omnitune.tools.capabilities.classes import FACTORY_SUFFIXES, ModelClasses, methods
from omnitune.tools.capabilities.codepaths import (
    MODELS_DIR,
    aliases,
    cfg_reach,
    cfg_switched_off,
    mentions,
    own,
    real_uses,
    setup_compile,
    tp_use,
    used_classes,
)
from omnitune.tools.capabilities.facts import VersionFacts
from omnitune.tools.capabilities.module import ClassRef, Module
from omnitune.tools.capabilities.nodes import facts_of
from omnitune.tools.capabilities.rejections import Finding, scan
from omnitune.tools.capabilities.report import METHOD_KEYS, Constraint, MethodSupport, Status
from omnitune.tools.capabilities.source import SourceIndex, class_attr, dotted_name, is_empty

SP_CALLS = frozenset({"get_sequence_parallel_world_size", "get_ulysses_parallel_world_size",
                      "get_ring_parallel_world_size", "get_sp_group", "get_sequence_parallel_rank"})
MOE_NAMES = {"FusedMoE", "enable_expert_parallel"}
CFG_HINTS = {"do_classifier_free_guidance", "true_cfg_scale", "negative_prompt_embeds", "do_true_cfg", "guidance_scale"}


@dataclass
class Analysis:
    methods: dict[str, MethodSupport]
    constraints: list[Constraint]
    uses_cfg: bool | None


def _first_use(mods: list[Module], names: set[str]) -> str | None:
    """First line (outside imports) in ``mods`` that uses any of ``names``."""
    for mod in mods:
        node = mod.first_use(names)
        if node is not None:
            return mod.at(node)
    return None


def _folder_imports(index: SourceIndex, mod: Module, have: list[Module]) -> list[Module]:
    """Modules of the pipeline's own model folder that its module imports (one level: SP/CFG helpers)."""
    folder = mod.name.rpartition(".")[0] + "."
    names = {m.name for m in have}
    out = []
    for src, _ in mod.imports.values():
        if src.startswith(folder) and src not in names:
            found = index.module(src)
            if found is not None:
                names.add(src)
                out.append(found)
    return out


def _manual_sp(index: SourceIndex, mc: ModelClasses, own_mods: list[Module], own_classes: list[ClassRef]) -> str | None:
    """First line where the model's own code drives the SP group (module functions first, then its classes')."""
    for mod in own_mods:
        calls = aliases(index, mod, SP_CALLS)
        if mentions(mod, calls):
            for fn in mod.functions.values():
                for n in real_uses(mod, fn, calls):
                    return mod.at(n)
    for c in [*own_classes, *used_classes(mc, own_mods)]:
        calls = aliases(index, c.module, SP_CALLS)
        if mentions(c.module, calls):
            for fn in c.node.body:
                if isinstance(fn, ast.FunctionDef):
                    for n in real_uses(c.module, fn, calls):
                        return c.at(n)
    return None


def _marker(mro: list[ClassRef], facts: VersionFacts, family: str) -> tuple[str, str, bool] | None:
    """(evidence, attr name, deprecated?) of a non-empty marker the installed code reads."""
    consumed = facts.markers.get(family, {})
    if not consumed:
        return None
    preferred = sorted(consumed, key=len)[-1]  # the current name is the longest of a family (…_attrs)
    found = class_attr(mro, tuple(consumed))
    if found is None or is_empty(found[3]):
        # Assigned on the instance (``self._sp_plan = self._build_sp_plan(...)`` in __init__).
        for cls in mro:
            for fn in (s for s in cls.node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))):
                if not cls.module.says(fn, consumed):
                    continue
                for attr, node in facts_of(fn).self_assigns:
                    if attr in consumed and not is_empty(getattr(node, "value", None) or ast.Constant(None)):
                        return cls.at(node), attr, (family == "layerwise" and attr != preferred)
        return None
    cls, name, stmt, _ = found
    return cls.at(stmt), name, (family == "layerwise" and name != preferred)


def analyse(index: SourceIndex, facts: VersionFacts, mc: ModelClasses, arch: str,
            no_cache: dict[str, str]) -> Analysis:
    pipe, dit = mc.pipeline, mc.dit
    dit_mro = mc.dit_mro
    own_classes = [c for c in [*mc.pipeline_mro, *dit_mro] if own(c)]
    own_mods = list({c.module.name: c.module for c in own_classes}.values())
    base_mods = own_mods + _folder_imports(index, pipe.module, own_mods)   # where refusals are looked for
    own_mods = list(base_mods)
    for mod in list(own_mods):                                             # where code paths are looked for
        own_mods += _folder_imports(index, mod, own_mods)
    dit_mods = list({c.module.name: c.module for c in dit_mro if own(c)}.values())
    m: dict[str, MethodSupport] = {}

    def put(key: str, status: Status, evidence: list[str | None], notes: str,
            via: Literal["sp_plan", "model_code"] | None = None) -> None:
        m[key] = MethodSupport(status=status, evidence=[e for e in evidence if e], notes=notes, via=via)

    dit_name = dit.name if dit else None
    no_dit = "the DiT class could not be resolved from the pipeline's code" \
        + (f" ({mc.dit_note})" if mc.dit_note else "")
    absent = dit is None and mc.dit_how == "none"   # nothing for DiT-level hooks to act on: a definite "no"

    def put_no_dit(key: str) -> None:
        if absent:
            put(key, "unsupported", [pipe.at()], mc.dit_note)
        else:
            put(key, "unknown", [], no_dit)

    # Sequence parallel (Ulysses / Ring): _sp_plan on the DiT, or SP implemented by hand.
    sp = _marker(dit_mro, facts, "sp_plan") if dit else None
    sp_custom = _manual_sp(index, mc, own_mods, own_classes)
    for key, label in (("ulysses_sp", "Ulysses"), ("ring_sp", "Ring")):
        if sp:
            put(key, "supported", [sp[0], *facts.markers["sp_plan"].values()],
                f"{dit_name} declares {sp[1]}; the SP hooks shard it for {label} attention.", via="sp_plan")
        elif sp_custom:
            put(key, "supported", [sp_custom],
                f"no _sp_plan, but the model's own code drives sequence parallelism ({label} via the SP group); "
                "the server's 'SP hooks not applied' warning at load does not mean SP is off.", via="model_code")
        elif dit is None:
            put_no_dit(key)
        else:
            put(key, "unsupported", [dit.at(), facts.sp_no_plan_warning],
                f"{dit_name} (and its in-package bases) declares no _sp_plan and the model has no manual SP: "
                "vLLM-Omni warns and runs without sequence parallelism.")

    # CFG parallel: the model's code must reach the CFG group (predict_noise_maybe_with_cfg et al.).
    reach = cfg_reach(index, mc, own_mods)
    mixin = next((c for c in mc.pipeline_mro if c.name == "CFGParallelMixin"), None)
    off = cfg_switched_off(mc)
    if reach and off:
        put("cfg_parallel", "unsupported", [off, reach],
            f"{pipe.name} switches classifier-free guidance off for every request (distilled): there is no "
            "negative branch for CFG parallel to split, so cfg_parallel_size > 1 only idles GPUs.")
    elif reach:
        put("cfg_parallel", "supported", [reach, mixin.at() if mixin else None],
            "the denoising code splits the positive/negative branches over the CFG group.")
    elif mixin is not None:
        put("cfg_parallel", "unsupported", [pipe.at(), mixin.at()],
            f"{pipe.name} inherits CFGParallelMixin but its code never reaches the CFG-parallel path.")
    else:
        put("cfg_parallel", "unsupported", [pipe.at()], f"{pipe.name} has no CFG-parallel code path.")

    # Tensor parallel: the DiT is built from vLLM's parallel linear layers.
    tp = tp_use(index, dit_mods)
    if dit is None:
        put_no_dit("tensor_parallel")
    elif tp:
        put("tensor_parallel", "supported", [tp], f"{dit_name} uses vLLM parallel linear layers (sharded by TP).")
    else:
        put("tensor_parallel", "unsupported", [dit.at()], f"{dit_name} builds no vLLM parallel linear layer with TP "
            "on (layers built with disable_tp=True are replicated, not sharded).")

    m["vae_patch_parallel"] = _vae_patch_parallel(index, facts, mc, own_mods)

    own_compile = setup_compile(mc)
    # Marker-driven methods on the DiT.
    for key, family, what in (("hsdp", "hsdp", "HSDP shards the blocks it names"),
                              ("regional_compile", "repeated_blocks", "torch.compile compiles each repeated block"),
                              ("layerwise_offload", "layerwise", "layerwise offload streams these blocks")):
        if key == "regional_compile" and own_compile is not None:
            put(key, own_compile[0], [own_compile[1]], own_compile[2])
            continue
        if dit is None:
            put_no_dit(key)
            continue
        found = _marker(dit_mro, facts, family)
        if found:
            note = f"{dit_name} declares {found[1]}; {what}."
            if found[2]:
                note += f" {found[1]} is the deprecated spelling, still read by the installed offloader."
            put(key, "supported", [found[0], facts.markers[family].get(found[1])], note)
        else:
            names = " / ".join(facts.markers.get(family, {})) or family
            put(key, "unsupported", [dit.at()], f"{dit_name} declares no non-empty {names}.")

    # Model-level CPU offload is generic (whole components move between CPU and GPU).
    put("cpu_offload", "supported", [pipe.at()],
        "model-level offload moves whole pipeline components; it needs no model marker.")

    # Expert parallel: only MoE DiTs.
    moe = _first_use(own_mods, MOE_NAMES)
    put("expert_parallel", "supported" if moe else "unsupported", [moe or (dit.at() if dit else pipe.at())],
        "the model has MoE layers (expert parallel applies)." if moe
        else "no MoE layers: expert parallel does not apply.")

    _caches(m, put, facts, mc, arch, no_cache)

    # FP8: the DiT must accept vLLM's quant_config (its linear layers are then quantized).
    if dit is None:
        put_no_dit("fp8")
    else:
        init = methods(dit_mro).get("__init__")
        args = [a.arg for a in (init[1].args.args + init[1].args.kwonlyargs)] if init else []
        if init and "quant_config" in args:
            put("fp8", "supported", [init[0].at(init[1])], f"{dit_name} takes quant_config (--quantization fp8).")
        else:
            put("fp8", "unsupported", [init[0].at(init[1]) if init else dit.at()],
                f"{dit_name}'s constructor takes no quant_config: --quantization leaves it unquantized.")

    constraints = _refusals(index, m, own_classes, base_mods)
    uses_cfg = True if m["cfg_parallel"].status == "supported" else (
        True if _first_use([pipe.module], CFG_HINTS) else None)
    assert set(m) == set(METHOD_KEYS)
    return Analysis({k: m[k] for k in METHOD_KEYS}, constraints, uses_cfg)


def _vae_patch_parallel(index: SourceIndex, facts: VersionFacts, mc: ModelClasses,
                        own_mods: list[Module]) -> MethodSupport:
    """registry.py splits the VAE only when ``model.vae`` is a DistributedVaeMixin right after construction;
    some models split their VAE work themselves (they read vae_patch_parallel_size)."""
    pipe = mc.pipeline

    def done(status: Status, evidence: list[str | None], notes: str) -> MethodSupport:
        return MethodSupport(status=status, evidence=[e for e in evidence if e], notes=notes)

    vae_mro = index.mro(mc.vae)[0] if mc.vae else []
    own_vae_pp = _first_use([m for m in own_mods if m.rel.startswith(MODELS_DIR)], {"vae_patch_parallel_size"})
    dist = next((c for c in vae_mro if c.name == "DistributedVaeMixin"), None)
    if dist is not None and mc.vae is not None and mc.vae_late is None:
        return done("supported", [mc.vae_evidence, dist.at()],
            f"the VAE ({mc.vae.name}) is a DistributedVaeMixin; patch parallel also enables VAE tiling.")
    elif own_vae_pp is not None and mc.vae is None:
        return done("supported", [own_vae_pp],
            "the model's own code reads vae_patch_parallel_size and splits its VAE work itself.")
    elif mc.vae_late is not None:
        return done("unsupported", [mc.vae_late, facts.vae_pp_warning],
            "the pipeline attaches its VAE outside __init__, after vLLM-Omni's DistributedVaeMixin check at model "
            "construction: vae_patch_parallel_size is ignored with a warning.")
    elif mc.vae is None and mc.vae_assigned is not None and not _external_vae(index, mc):
        return done("unknown", [mc.vae_assigned],
            "the pipeline sets self.vae, but the analysis cannot tell which class it builds there; vLLM-Omni "
            "applies VAE patch parallel only to a DistributedVaeMixin.")
    elif mc.vae is None and mc.vae_assigned is None:
        return done("unsupported", [pipe.at(), facts.vae_pp_warning],
            f"{pipe.name} has no `vae` attribute: vae_patch_parallel_size is ignored with a warning.")
    else:
        vname = mc.vae.name if mc.vae else "a class outside vllm_omni"
        return done("unsupported", [mc.vae_evidence or mc.vae_assigned, facts.vae_pp_warning],
            f"the VAE ({vname}) is not a DistributedVaeMixin: vae_patch_parallel_size is ignored with a warning.")


def _caches(m, put, facts: VersionFacts, mc: ModelClasses, arch: str, no_cache: dict[str, str]) -> None:
    pipe, dit = mc.pipeline, mc.dit
    if arch in no_cache:
        for key in ("tea_cache", "cache_dit"):
            put(key, "unsupported", [no_cache[arch]], f"{arch} is listed in _NO_CACHE_ACCELERATION: the runner "
                "disables the cache backend with a warning and the server runs without it.")
        effect(m, "no", [no_cache[arch]], "the cache backend is switched off at start-up for this pipeline.")
        return
    tea_enablers = facts.tables.get("CUSTOM_TEACACHE_ENABLERS", {})
    extractors = facts.tables.get("EXTRACTOR_REGISTRY", {})
    if pipe.name in tea_enablers:
        put("tea_cache", "supported", [tea_enablers[pipe.name]], f"custom TeaCache enabler for {pipe.name}.")
    elif dit is not None and dit.name in extractors:
        put("tea_cache", "supported", [extractors[dit.name]], f"TeaCache extractor registered for {dit.name}.")
    elif dit is None and mc.dit_how == "none":
        put("tea_cache", "unsupported", [facts.teacache_miss or pipe.at()], mc.dit_note)
    elif dit is None:
        put("tea_cache", "unknown", [], "the DiT class could not be resolved, and TeaCache is keyed on its name")
    else:
        near = [k for k in extractors if k in {c.name for c in mc.dit_mro}]
        note = f"TeaCache looks up the exact class name {dit.name}, which has no extractor"
        note += f" (its base {near[0]} has one, but the lookup is by exact name)." if near else "."
        put("tea_cache", "unsupported", [facts.tables_defined.get("EXTRACTOR_REGISTRY"), facts.teacache_miss], note)
    dit_enablers = facts.tables.get("CUSTOM_DIT_ENABLERS", {})
    adapter = _marker(mc.dit_mro, facts, "cache_dit_adapter") if dit else None
    if pipe.name in dit_enablers:
        put("cache_dit", "supported", [dit_enablers[pipe.name]], f"custom Cache-DiT enabler for {pipe.name}.")
        effect(m, "yes", [dit_enablers[pipe.name]], f"vLLM-Omni's own enabler for {pipe.name} installs the cache.")
    elif adapter and dit is not None:
        put("cache_dit", "supported", [adapter[0]], f"{dit.name} declares {adapter[1]}.")
        effect(m, "yes", [adapter[0]], f"{dit.name} declares the blocks Cache-DiT caches ({adapter[1]}).")
    elif mc.dit_how == "none":
        put("cache_dit", "rejected", [pipe.at(), facts.cachedit_fallback],
            f"{pipe.name} has no custom enabler and no DiT attribute for the generic Cache-DiT path: enabling it "
            "raises at start-up. " + mc.dit_note)
        effect(m, "no", [facts.cachedit_fallback], "the server does not start with --cache-backend cache_dit.")
    else:
        put("cache_dit", "supported", [facts.cachedit_fallback],
            "vLLM-Omni lets the pipeline run with --cache-backend cache_dit: without an enabler or adapter config it "
            f"hands {dit.name if dit else 'the DiT'} to the cache-dit library's built-in adapters.")
        effect(m, "unknown", [facts.cachedit_fallback],
               "whether it takes effect depends on the cache-dit library (outside vllm_omni) having a built-in "
               f"adapter for {dit.name if dit else 'the DiT'}; without one, start-up fails. Benchmark and compare.")


def effect(m: dict[str, MethodSupport], value: str, evidence: list[str | None], notes: str) -> None:
    """Whether an allowed method actually changes the computation (a separate question from "allowed")."""
    cur = m["cache_dit"]
    m["cache_dit"] = cur.model_copy(update={"takes_effect": value, "effect_evidence": [e for e in evidence if e],
                                            "effect_notes": notes})


def _external_vae(index: SourceIndex, mc: ModelClasses) -> bool:
    """``self.vae = AutoencoderKL.from_pretrained(...)`` with a class imported from outside vllm_omni."""
    if mc.vae_call is None:
        return False
    mod, call = mc.vae_call
    names = [dotted_name(call.func) or ""] + [dotted_name(a) or "" for a in call.args]
    for name in names:
        head, _, last = name.rpartition(".")
        cls = head if last in FACTORY_SUFFIXES else name
        head = cls.split(".")[0]
        target = (mod.imports.get(head) or index.local_imports(mod).get(head)) if cls else None
        # a class (or a loader function) from another package cannot be vllm-omni's DistributedVaeMixin
        if target and not target[0].startswith("vllm_omni") and target[0].split(".")[0] not in ("torch", "builtins"):
            return True
    return False


def _helpers(index: SourceIndex, mod: Module, fn: ast.AST) -> list[tuple[Module, ast.AST]]:
    """Validation helpers of other model modules that ``fn`` calls (``validate_x_parallel_config(cfg)``)."""
    out = []
    wanted = mod.memo.get("model_imports")
    if wanted is None:
        wanted = mod.memo["model_imports"] = {
            name for table in (mod.imports, index.local_imports(mod)) for name, (src, attr) in table.items()
            if attr and src.startswith("vllm_omni.diffusion.models.")}
    if not mod.says(fn, wanted):
        return out
    facts = facts_of(fn)
    if not wanted & facts.names.keys():
        return out
    for node in facts.calls:
        if isinstance(node.func, ast.Name):
            target = mod.imports.get(node.func.id) or index.local_imports(mod).get(node.func.id)
            if target and target[1] and target[0].startswith("vllm_omni.diffusion.models."):
                other = index.module(target[0])
                if other is not None and target[1] in other.functions:
                    out.append((other, other.functions[target[1]]))
    return out


def _refusals(index: SourceIndex, m: dict[str, MethodSupport], classes: list[ClassRef],
              mods: list[Module]) -> list[Constraint]:
    findings: list[Finding] = []
    seen: set[int] = set()
    for cls in classes:
        for stmt in cls.node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and id(stmt) not in seen:
                seen.add(id(stmt))
                findings += scan(cls.module, stmt)
                for hmod, helper in _helpers(index, cls.module, stmt):
                    if id(helper) not in seen:
                        seen.add(id(helper))
                        findings += scan(hmod, helper)
    for mod in mods:
        for fn in mod.functions.values():
            if id(fn) not in seen:
                seen.add(id(fn))
                findings += scan(mod, fn)
    out: list[Constraint] = []
    for f in findings:
        if f.kind == "rejected":
            for key in f.methods:
                prev = m[key]
                if prev.status != "rejected":
                    m[key] = MethodSupport(status="rejected", evidence=[f.evidence, *prev.evidence],
                                           notes=f"the model raises when {f.condition}: {f.message!r}")
                    if key == "cache_dit":
                        effect(m, "no", [f.evidence], "the model refuses to start with it.")
        elif f.kind == "one_of":
            out.append(Constraint(kind="one_of", parameter=f.parameter, values=f.values, methods=list(f.methods),
                                  condition=f.condition, description=f"{f.parameter} must be one of {f.values}: "
                                  f"{f.message}", evidence=[f.evidence]))
        else:
            out.append(Constraint(kind="raises", parameter=f.parameter, methods=list(f.methods), condition=f.condition,
                                  description=f"the model refuses the combination {f.condition}: {f.message}",
                                  evidence=[f.evidence]))
    return out
