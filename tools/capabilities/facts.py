"""Facts of one vllm-omni version that do not depend on the model, read from its generic code.

Which class attributes the generic code actually consumes (``getattr(model, "_sp_plan")`` in the
sequence-parallel hooks, ``_layerwise_offload_blocks_attrs`` or its deprecated spelling in the
offloader, ...), the TeaCache / Cache-DiT lookup tables, the cache backends and quantization
methods. Marker names come from the installed consumers, so a renamed marker is followed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from omnitune.tools.capabilities.module import Module
from omnitune.tools.capabilities.nodes import walk
from omnitune.tools.capabilities.source import SourceIndex, dotted_name, string_keys

# Generic code that consumes model markers (globs relative to the package folder).
CONSUMER_GLOBS = ("diffusion/compile.py", "diffusion/registry.py", "diffusion/offloader/*.py",
                  "diffusion/distributed/*.py", "diffusion/hooks/*.py")
CACHE_GLOBS = ("diffusion/cache/*.py", "diffusion/cache/*/*.py")

# Marker families: a regex over attribute names the generic code reads.
MARKER_FAMILIES = {
    "sp_plan": re.compile(r"^_sp_plan$"),
    "repeated_blocks": re.compile(r"^_repeated_blocks$"),
    "hsdp": re.compile(r"^_hsdp_shard_conditions$"),
    "layerwise": re.compile(r"^_layerwise_offload_blocks?_attrs?$"),
    "cache_dit_adapter": re.compile(r"^_cache_dit_adapter_config$"),
    "dit_modules": re.compile(r"^_dit_modules$"),
}
TABLES = ("EXTRACTOR_REGISTRY", "CUSTOM_TEACACHE_ENABLERS", "CUSTOM_DIT_ENABLERS")


@dataclass
class VersionFacts:
    markers: dict[str, dict[str, str]] = field(default_factory=dict)   # family -> {attr name: evidence}
    tables: dict[str, dict[str, str]] = field(default_factory=dict)    # table -> {key: evidence}
    tables_defined: dict[str, str] = field(default_factory=dict)       # table -> evidence of its definition
    cache_backends: list[str] = field(default_factory=list)
    cache_backends_evidence: str | None = None
    quantization_methods: list[str] = field(default_factory=list)
    quantization_evidence: str | None = None
    ulysses_heads_evidence: str | None = None
    vae_pp_warning: str | None = None
    sp_no_plan_warning: str | None = None
    teacache_miss: str | None = None
    cachedit_fallback: str | None = None


# Text a consumer file must contain to be worth parsing (ast then decides what it means).
SEEDS = ("_sp_plan", "_repeated_blocks", "_hsdp_shard_conditions", "_layerwise_offload_blocks",
         "_cache_dit_adapter_config", "_dit_modules", "VAE patch parallel", *TABLES, "cache_backend", "enable_cache")


def _modules(index: SourceIndex, globs: tuple[str, ...]) -> list[Module]:
    out = []
    for pattern in globs:
        for path in sorted(index.root.glob(pattern)):
            try:
                text = index.read(path)
            except OSError:
                continue
            if not any(seed in text for seed in SEEDS):
                index.files[index.rel(path)] = path.stat().st_mtime  # still part of the cache fingerprint
                continue
            mod = index.module_at(index.rel(path))
            if mod is not None:
                out.append(mod)
    return out


def _str_arg(call: ast.Call, i: int) -> str | None:
    arg = call.args[i] if len(call.args) > i else None
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def _message(node: ast.AST) -> str:
    parts = []
    for n in walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            parts.append(n.value)
    return "".join(parts)


def read_facts(index: SourceIndex) -> VersionFacts:
    facts = VersionFacts(markers={k: {} for k in MARKER_FAMILIES})
    for mod in _modules(index, CONSUMER_GLOBS + CACHE_GLOBS):
        for node in walk(mod.tree):
            if isinstance(node, ast.Call) and dotted_name(node.func) in ("getattr", "hasattr", "setattr"):
                name = _str_arg(node, 1)
                for family, rx in MARKER_FAMILIES.items():
                    if name and rx.match(name):
                        facts.markers[family].setdefault(name, mod.at(node))
            if isinstance(node, ast.Call) and mod.rel == "diffusion/registry.py":
                text = _message(node)
                if "VAE patch parallelism is NOT enabled" in text and not facts.vae_pp_warning:
                    facts.vae_pp_warning = mod.at(node)
                if "no transformer with _sp_plan" in text and not facts.sp_no_plan_warning:
                    facts.sp_no_plan_warning = mod.at(node)
    for mod in _modules(index, CACHE_GLOBS):
        _read_cache_module(mod, facts)
    ulysses = index.module("vllm_omni.diffusion.attention.parallel.ulysses")
    if ulysses is not None:
        for node in walk(ulysses.tree):
            if isinstance(node, ast.Raise) and "divisible by ulysses_degree" in _message(node):
                facts.ulysses_heads_evidence = ulysses.at(node)
                break
    _read_quantization(index, facts)
    return facts


def _read_cache_module(mod: Module, facts: VersionFacts) -> None:
    for node in walk(mod.tree):
        # NAME = {...} / NAME: dict[...] = {...}
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id in TABLES and value is not None:
            facts.tables_defined.setdefault(target.id, mod.at(node))
            for key, line in string_keys(value):
                facts.tables.setdefault(target.id, {}).setdefault(key, f"{mod.rel}:{line}")
        elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) and target.value.id in TABLES \
                and isinstance(target.slice, ast.Constant) and isinstance(target.slice.value, str):
            facts.tables.setdefault(target.value.id, {}).setdefault(target.slice.value, mod.at(node))
        # NAME.update({...})
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in TABLES and node.args:
            for key, line in string_keys(node.args[0]):
                facts.tables.setdefault(node.func.value.id, {}).setdefault(key, f"{mod.rel}:{line}")
        # cache_backend == "x" / cache_backend in ("x", "y") in the backend selector
        if mod.rel.endswith("cache/selector.py") and isinstance(node, ast.Compare) \
                and dotted_name(node.left) in ("cache_backend",):
            for comp in node.comparators:
                vals = [comp.value] if isinstance(comp, ast.Constant) else [k for k, _ in string_keys(comp)]
                for v in vals:
                    if isinstance(v, str) and v not in ("none", "") and v not in facts.cache_backends:
                        facts.cache_backends.append(v)
                        facts.cache_backends_evidence = facts.cache_backends_evidence or mod.at(node)
        if isinstance(node, ast.Raise) and "Unknown model type" in _message(node) and "teacache" in mod.rel:
            facts.teacache_miss = facts.teacache_miss or mod.at(node)
        if isinstance(node, ast.Call) and dotted_name(node.func) in ("cache_dit.enable_cache",) \
                and not facts.cachedit_fallback:
            facts.cachedit_fallback = mod.at(node)
    # aliases of one backend (step_cache / stepcache) are kept: each is accepted by the selector


def _read_quantization(index: SourceIndex, facts: VersionFacts) -> None:
    """vllm-omni's own quantization overrides; vllm's QUANTIZATION_METHODS (fp8, ...) live in vllm."""
    mod = index.module("vllm_omni.quantization.factory")
    if mod is None:
        return
    for node in mod.tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) else None
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id == "_OVERRIDES" and value is not None:
            facts.quantization_methods = [k for k, _ in string_keys(value)]
            facts.quantization_evidence = mod.at(node)
        if isinstance(target, ast.Name) and target.id == "SUPPORTED_QUANTIZATION_METHODS":
            facts.quantization_evidence = mod.at(node)


