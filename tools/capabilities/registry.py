"""vllm-omni's diffusion registry, read from ``diffusion/registry.py``: `_class_name` -> pipeline class.

The registry maps a model folder's ``model_index.json`` ``_class_name`` (the "arch") to a module and
a class (``WanPipeline`` -> ``wan2_2.pipeline_wan2_2.Wan22Pipeline``). Read with ``ast``; never imported.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass

from omnitune.tools.capabilities.module import Module
from omnitune.tools.capabilities.source import SourceIndex, string_keys
from omnitune.tools.errors import CapabilityError, UnregisteredPipeline

REGISTRY_MODULE = "vllm_omni.diffusion.registry"


@dataclass(frozen=True)
class Entry:
    arch: str          # the _class_name
    module: str        # dotted module of the pipeline class
    cls: str           # pipeline class name inside it
    evidence: str      # registry.py:line


@dataclass(frozen=True)
class Registry:
    entries: dict[str, Entry]
    no_cache: dict[str, str]   # arch -> evidence, pipelines without cache acceleration
    module: Module

    def get(self, arch: str) -> Entry:
        entry = self.entries.get(arch)
        if entry is not None:
            return entry
        close = difflib.get_close_matches(arch, list(self.entries), n=3, cutoff=0.6)
        lower = [a for a in self.entries if a.lower() == arch.lower()]
        hint = f"did you mean {', '.join(lower or close)}?" if (lower or close) else \
            "read omnitune://support for the registered pipelines."
        raise UnregisteredPipeline(
            f"{arch!r} is not in vllm-omni's diffusion registry ({self.module.rel}, {len(self.entries)} pipelines).",
            hint + " A model folder's model_index.json `_class_name` must name a registered pipeline.")


def _target(node: ast.stmt) -> tuple[str | None, ast.AST | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        t = node.targets[0]
        return (t.id if isinstance(t, ast.Name) else None), node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.value
    return None, None


def _tuple(node: ast.AST) -> tuple[str, ...] | None:
    if isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return tuple(e.value for e in node.elts)  # type: ignore[union-attr]
    return None


def read_registry(index: SourceIndex) -> Registry:
    mod = index.module(REGISTRY_MODULE)
    if mod is None:
        raise CapabilityError(f"{index.root}/diffusion/registry.py is missing or unreadable.",
                              "point omnitune at a complete vllm-omni install (pip install --no-deps vllm-omni).")
    entries: dict[str, Entry] = {}
    no_cache: dict[str, str] = {}
    for node in mod.tree.body:
        name, value = _target(node)
        if name == "_DIFFUSION_MODELS" and isinstance(value, ast.Dict):
            for k, v in zip(value.keys, value.values):
                t = _tuple(v) if isinstance(k, ast.Constant) and isinstance(k.value, str) else None
                if k is not None and t and len(t) == 3:
                    folder, rel, cls = t
                    dotted = f"vllm_omni.diffusion.models.{folder}.{rel}" if rel else folder
                    arch = str(getattr(k, "value", ""))
                    entries[arch] = Entry(arch, dotted, cls, mod.at(k))
        elif name == "_NO_CACHE_ACCELERATION" and value is not None:
            no_cache.update({k: f"{mod.rel}:{line}" for k, line in string_keys(value)})
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Subscript):
            # _DIFFUSION_MODELS["Alias"] = _DIFFUSION_MODELS["Original"]
            tgt, val = node.targets[0], node.value
            if (isinstance(tgt.value, ast.Name) and tgt.value.id == "_DIFFUSION_MODELS"
                    and isinstance(tgt.slice, ast.Constant) and isinstance(val, ast.Subscript)
                    and isinstance(val.slice, ast.Constant) and str(val.slice.value) in entries):
                src = entries[str(val.slice.value)]
                alias = str(tgt.slice.value)
                entries[alias] = Entry(alias, src.module, src.cls, mod.at(node))
    if not entries:
        raise CapabilityError(
            f"no _DIFFUSION_MODELS table found in {mod.rel}; this vllm-omni layout is not understood.",
            "report the vllm-omni version; meanwhile point omnitune at a release it knows (0.22-0.32).")
    return Registry(entries, no_cache, mod)
