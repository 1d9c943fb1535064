"""Which classes a pipeline is made of: its MRO inside vllm_omni and the DiT class(es) it instantiates.

The DiT is what the pipeline assigns to its DiT attributes (``_dit_modules``, else ``transformer`` /
``transformer_2``): a constructor call, ``X.from_pretrained(...)``, or a factory method/function
whose return annotation or ``return`` names the class.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from omnitune.tools.capabilities.source import (
    ClassRef,
    Module,
    SourceIndex,
    class_attr,
    dotted_name,
    facts_of,
    string_keys,
)

FACTORY_SUFFIXES = ("from_pretrained", "from_config", "from_single_file", "from_od_config", "from_model_config")
DEFAULT_DIT_ATTRS = ("transformer", "transformer_2")


@dataclass
class ModelClasses:
    pipeline: ClassRef
    pipeline_mro: list[ClassRef]
    pipeline_external: list[str]
    dit_attrs: list[str]
    dits: dict[str, ClassRef] = field(default_factory=dict)          # attr -> class
    dit_evidence: dict[str, str] = field(default_factory=dict)       # attr -> where it is assigned
    dit_mro: list[ClassRef] = field(default_factory=list)            # MRO of the primary DiT
    dit_external: list[str] = field(default_factory=list)
    vae: ClassRef | None = None
    vae_evidence: str | None = None

    @property
    def dit(self) -> ClassRef | None:
        return next(iter(self.dits.values()), None)


def methods(mro: list[ClassRef]) -> dict[str, tuple[ClassRef, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Method name -> (defining class, def) resolved along the MRO (first definition wins)."""
    out: dict[str, tuple[ClassRef, ast.FunctionDef | ast.AsyncFunctionDef]] = {}
    for cls in mro:
        for stmt in cls.node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.setdefault(stmt.name, (cls, stmt))
    return out


class _Resolver:
    def __init__(self, index: SourceIndex, mro: list[ClassRef]) -> None:
        self.index = index
        self.methods = methods(mro)
        self.mro = mro

    def _local(self, mod: Module, name: str, func: ast.AST | None, depth: int) -> ClassRef | None:
        """A variable: its assignments in the same function first, then in the pipeline's other methods."""
        scopes = [func] if func is not None else []
        scopes += [fn for cls in self.mro if cls.module is mod for fn in cls.node.body
                   if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn is not func]
        for scope in scopes:
            for node in facts_of(scope).local_assigns.get(name, ()):
                found = self.from_expr(mod, node.value, scope, depth + 1)
                if found:
                    return found
        return None

    def from_expr(self, mod: Module, expr: ast.AST | None, func: ast.AST | None, depth: int = 0) -> ClassRef | None:
        if expr is None or depth > 6:
            return None
        if isinstance(expr, ast.IfExp):
            return self.from_expr(mod, expr.body, func, depth + 1) or self.from_expr(mod, expr.orelse, func, depth + 1)
        if isinstance(expr, ast.Name):  # a class itself (class-valued variable), or a local variable
            return self.index.resolve_class(mod, expr.id) or self._local(mod, expr.id, func, depth)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr == "to":
            return self.from_expr(mod, expr.func.value, func, depth + 1)
        if not isinstance(expr, ast.Call):
            return None
        name = dotted_name(expr.func)
        if not name:
            return None
        head, _, last = name.rpartition(".")
        if head and last in FACTORY_SUFFIXES:
            return self.index.resolve_class(mod, head) if not head.startswith("self.") else None
        if head == "self" and last in self.methods:
            cls, fn = self.methods[last]
            return self._from_function(cls.module, fn, depth)
        found = self.index.resolve_class(mod, name)
        if found is not None:
            return found
        fn_mod, fn = self._function(mod, name)
        if fn is not None:
            found = self._from_function(fn_mod, fn, depth)
            if found is not None:
                return found
        if "." not in name:
            found = self._local(mod, name, func, depth)  # `transformer_cls(...)`
            if found is not None:
                return found
        # A loader helper given the constructor: helper(X.from_pretrained, ...)
        for arg in expr.args:
            ref = dotted_name(arg)
            if ref and ref.rpartition(".")[2] in FACTORY_SUFFIXES:
                found = self.index.resolve_class(mod, ref.rpartition(".")[0])
                if found is not None:
                    return found
        return None

    def _function(self, mod: Module, name: str):
        if name in mod.functions:
            return mod, mod.functions[name]
        target = mod.imports.get(name)
        if target and target[1] and target[0].startswith("vllm_omni"):
            other = self.index.module(target[0])
            if other is not None and target[1] in other.functions:
                return other, other.functions[target[1]]
        return mod, None

    def _from_function(self, mod: Module, fn, depth: int) -> ClassRef | None:
        if fn.returns is not None:
            ann = dotted_name(fn.returns)
            if ann:
                found = self.index.resolve_class(mod, ann)
                if found is not None:
                    return found
        for node in ast.walk(fn):
            if isinstance(node, ast.Return):
                found = self.from_expr(mod, node.value, fn, depth + 1)
                if found is not None:
                    return found
        return None


def model_classes(index: SourceIndex, pipeline: ClassRef) -> ModelClasses:
    mro, external = index.mro(pipeline)
    attrs = list(DEFAULT_DIT_ATTRS)
    declared = class_attr(mro, ("_dit_modules",))
    if declared is not None:
        names = [k for k, _ in string_keys(declared[3])]
        if names:
            attrs = names
    out = ModelClasses(pipeline, mro, external, attrs)
    resolver = _Resolver(index, mro)
    wanted = set(attrs) | {"vae"}
    for cls in mro:  # the pipeline's own assignments first, then its bases'
        for fn in (s for s in cls.node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for attr, node in facts_of(fn).self_assigns:
                if attr not in wanted or (attr == "vae" and out.vae) or attr in out.dits:
                    continue
                found = resolver.from_expr(cls.module, node.value, fn)
                if found is None:
                    continue
                if attr == "vae":
                    out.vae, out.vae_evidence = found, cls.at(node)
                else:
                    out.dits[attr] = found
                    out.dit_evidence[attr] = cls.at(node)
    ordered = {a: out.dits[a] for a in attrs if a in out.dits}
    out.dits = ordered
    if out.dit is not None:
        out.dit_mro, out.dit_external = index.mro(out.dit)
    return out
