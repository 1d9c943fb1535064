"""Which classes a pipeline is made of: its MRO inside vllm_omni and the DiT class(es) it instantiates.

The DiT is what the pipeline assigns to its DiT attributes (``_dit_modules``, else ``transformer`` /
``transformer_2``): a constructor call, ``X.from_pretrained(...)``, or a factory method/function
whose return annotation or ``return`` names the class.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field

from omnitune.tools.capabilities.module import ClassRef, Module
from omnitune.tools.capabilities.nodes import facts_of, walk
from omnitune.tools.capabilities.source import SourceIndex, class_attr, dotted_name, string_keys

FACTORY_SUFFIXES = ("from_pretrained", "from_config", "from_single_file", "from_od_config", "from_model_config",
                    "_from_config")
# Methods that return the module they are called on (``X(...).to(dtype)``, ``model.eval()``).
SAME_MODULE = {"to", "eval", "half", "float", "bfloat16", "cuda", "cpu", "requires_grad_", "train"}
# Where the SP hooks look when a pipeline declares no ``_dit_modules`` (registry.py, 0.22-0.32).
DEFAULT_DIT_ATTRS = ("transformer", "transformer_2", "dit", "unet")
# Class-level markers that only a DiT carries: used to find the DiT of a model folder by its code.
DIT_MARKERS = ("_repeated_blocks", "_sp_plan", "_layerwise_offload_blocks_attrs", "_layerwise_offload_blocks_attr",
               "_hsdp_shard_conditions", "_cache_dit_adapter_config")


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
    vae_assigned: str | None = None                                  # where self.vae is set (class unresolved)
    vae_call: tuple[Module, ast.Call] | None = None                  # (module, call) of that assignment
    vae_late: str | None = None                                      # set only outside __init__'s reach
    dit_how: str = "assigned"                                        # assigned | folder | none
    helpers: list[ClassRef] | None = None                            # helper classes it builds (codepaths)
    dit_note: str = ""

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
        # set by _attr_class: resolves self.<dotted path> to a class
        self.attr_class: Callable[[str, int], ClassRef | None] | None = None

    def _local(self, mod: Module, name: str, func: ast.AST | None, depth: int) -> ClassRef | None:
        """A variable: its assignments in the same function first, then in the pipeline's other methods."""
        scopes = [func] if func is not None else []
        scopes += [fn for cls in self.mro if cls.module is mod for fn in cls.node.body
                   if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn is not func]
        for scope in scopes:
            if not mod.says(scope, (name,)):
                continue
            for node in facts_of(scope).local_assigns.get(name, ()):
                found = self.from_expr(mod, getattr(node, "value", None), scope, depth + 1)
                if found:
                    return found
        return None

    def _annotated(self, mod: Module, name: str, func: ast.AST | None) -> ClassRef | None:
        """A parameter's annotation (``vae: DistributedAutoencoderKLWan | None = None``)."""
        args = getattr(func, "args", None)
        if not isinstance(args, ast.arguments):
            return None
        for a in [*args.args, *args.kwonlyargs]:
            if a.arg == name and a.annotation is not None:
                for n in walk(a.annotation):
                    ref = dotted_name(n) if isinstance(n, (ast.Name, ast.Attribute)) else None
                    found = self.index.resolve_class(mod, ref) if ref else None
                    if found is not None:
                        return found
        return None

    def from_expr(self, mod: Module, expr: ast.AST | None, func: ast.AST | None, depth: int = 0) -> ClassRef | None:
        if expr is None or depth > 6:
            return None
        if isinstance(expr, ast.IfExp):
            return self.from_expr(mod, expr.body, func, depth + 1) or self.from_expr(mod, expr.orelse, func, depth + 1)
        if isinstance(expr, ast.Name):  # a class itself (class-valued variable), or a local variable
            return self.index.resolve_class(mod, expr.id) or self.index.resolve_local_import(mod, expr.id) \
                or self._local(mod, expr.id, func, depth) or self._annotated(mod, expr.id, func)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in SAME_MODULE:
            return self.from_expr(mod, expr.func.value, func, depth + 1)
        if isinstance(expr, ast.Attribute):  # self.language_model.model
            path = dotted_name(expr)
            if path and path.startswith("self.") and self.attr_class is not None:
                return self.attr_class(path[5:], depth + 1)
            return None
        if not isinstance(expr, ast.Call):
            return None
        name = dotted_name(expr.func)
        if not name:
            return None
        head, _, last = name.rpartition(".")
        if head and last in FACTORY_SUFFIXES:
            if head.startswith("self."):
                return None
            return self.index.resolve_class(mod, head) or self.index.resolve_local_import(mod, head)
        if head == "self" and last in self.methods:
            cls, fn = self.methods[last]
            return self._from_function(cls.module, fn, depth)
        found = self.index.resolve_class(mod, name) or self.index.resolve_local_import(mod, name)
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
                head = ref.rpartition(".")[0]
                found = self.index.resolve_class(mod, head) or self.index.resolve_local_import(mod, head)
                if found is None and "." not in head:   # `vae_class = A if cond else B; helper(vae_class.from_...)`
                    found = self._local(mod, head, func, depth)
                if found is not None:
                    return found
        return None

    def _function(self, mod: Module, name: str):
        if name in mod.functions:
            return mod, mod.functions[name]
        target = mod.imports.get(name) or self.index.local_imports(mod).get(name)
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
        for node in facts_of(fn).returns:
            found = self.from_expr(mod, node.value, fn, depth + 1)
            if found is not None:
                return found
        return None


def _is_none(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _assignments(mro: list[ClassRef], attr: str):
    """``self.<attr> = ...`` in the methods of ``mro`` (the class's own first, then its bases')."""
    for cls in mro:
        for fn in (s for s in cls.node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))):
            if not cls.module.says(fn, (attr,)):
                continue
            for name, node in facts_of(fn).self_assigns:
                if name == attr:
                    yield cls, fn, node


def _attr_class(index: SourceIndex, mro: list[ClassRef], path: str, depth: int = 0) -> ClassRef | None:
    """The class of ``self.a.b.c``: the class assigned to ``self.a``, then its ``self.b``, ..."""
    if depth > 6:
        return None
    head, _, rest = path.partition(".")
    resolver = _Resolver(index, mro)
    resolver.attr_class = lambda p, d: _attr_class(index, mro, p, d)
    for cls, fn, node in _assignments(mro, head):
        value = getattr(node, "value", None)
        if isinstance(value, ast.Constant) and value.value is None:
            continue
        found = resolver.from_expr(cls.module, value, fn, depth + 1)
        if found is not None:
            return found if not rest else _attr_class(index, index.mro(found)[0], rest, depth + 1)
    return None


def _init_reach(mro: list[ClassRef]) -> set[str] | None:
    """Methods ``__init__`` runs (through ``self.<method>()`` calls): what exists when the engine inspects it."""
    defs: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = {}
    for cls in mro:  # every definition along the MRO (super() calls reach the bases' versions)
        for stmt in cls.node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defs.setdefault(stmt.name, []).append(stmt)
    if "__init__" not in defs:
        return None
    reach, todo = {"__init__"}, ["__init__"]
    while todo:
        for fn in defs[todo.pop()]:
            for name in facts_of(fn).self_uses:
                if name in defs and name not in reach:
                    reach.add(name)
                    todo.append(name)
    return reach


def _folder_dit(index: SourceIndex, pipeline: ClassRef) -> tuple[ClassRef | None, str]:
    """The DiT of a model folder whose pipeline builds it indirectly (component profiles, loaders).

    A DiT declares the markers the generic code reads (``_repeated_blocks``, ``_sp_plan``, ...); when the
    pipeline's folder defines exactly one class that declares most of them, that class is the DiT.
    """
    folder = pipeline.module.path.parent
    if not pipeline.module.rel.startswith("diffusion/models/"):
        return None, ""
    scored: list[tuple[int, ClassRef]] = []
    for path in sorted(folder.glob("*.py")):
        try:
            text = index.read(path)
        except OSError:
            continue
        if not any(m in text for m in DIT_MARKERS):
            continue
        mod = index.module_at(index.rel(path))
        if mod is None:
            continue
        for node in mod.classes.values():
            ref = ClassRef(mod, node)
            found = {name for name in DIT_MARKERS if class_attr([ref], (name,)) is not None}
            if found:
                scored.append((len(found), ref))
    if not scored:
        return None, "no class of its model folder declares a DiT marker"
    scored.sort(key=lambda t: -t[0])
    best = [r for n, r in scored if n == scored[0][0]]
    # Subclasses of the best candidate (same markers, inherited) do not make it ambiguous.
    roots = [r for r in best if not any(o is not r and o.key in {c.key for c in index.mro(r)[0][1:]} for o in best)]
    if len(roots) == 1:
        return roots[0], (f"{roots[0].name} is the class of {pipeline.module.rel.rsplit('/', 1)[0]}/ that declares "
                          "the DiT markers (the pipeline builds its DiT through a loader the analysis cannot follow)")
    return None, "several classes of its model folder declare DiT markers: " + ", ".join(r.name for r in roots)


def _folder_vae(index: SourceIndex, pipeline: ClassRef, out: ModelClasses) -> None:
    """A VAE attached by a loader function of the model folder (``pipeline.vae = _load(profile.vae_cls, ...)``).

    The class is taken as resolved when every VAE class that loader module names is a DistributedVaeMixin.
    """
    if not pipeline.module.rel.startswith("diffusion/models/"):
        return
    for path in sorted(pipeline.module.path.parent.glob("*.py")):
        try:
            text = index.read(path)
        except OSError:
            continue
        if ".vae =" not in text or path == pipeline.module.path:
            continue
        mod = index.module_at(index.rel(path))
        if mod is None:
            continue
        node = next((n for fn in mod.functions.values() if mod.says(fn, ("vae",)) for n in walk(fn)
                     if isinstance(n, ast.Assign) and any(
                         isinstance(t, ast.Attribute) and t.attr == "vae" and isinstance(t.value, ast.Name)
                         and t.value.id != "self" for t in n.targets)), None)
        if node is None:
            continue
        out.vae_assigned = mod.at(node)
        named = [mod.imports.get(k) for k in mod.imports if "Autoencoder" in k or "Vae" in k or "VAE" in k]
        refs = [index.resolve_class(mod, k) for k in mod.imports if "Autoencoder" in k or "Vae" in k or "VAE" in k]
        refs = [r for r in refs if r is not None]
        if refs and len(refs) == len([n for n in named if n and n[0].startswith("vllm_omni")]):
            dist = [r for r in refs if any(c.name == "DistributedVaeMixin" for c in index.mro(r)[0])]
            if dist and len(dist) == len(refs):
                out.vae, out.vae_evidence = dist[0], out.vae_assigned
        return


def dit_attr_defaults(index: SourceIndex) -> tuple[str, ...]:
    """The attribute names the installed SP hooks try when a pipeline declares no ``_dit_modules``."""
    mod = index.module("vllm_omni.diffusion.registry")
    if mod is None:
        return DEFAULT_DIT_ATTRS
    if "dit_attr_defaults" not in mod.memo:   # every pipeline asks; walk registry.py once
        mod.memo["dit_attr_defaults"] = _dit_attr_defaults(mod)
    return mod.memo["dit_attr_defaults"]


def _dit_attr_defaults(mod: Module) -> tuple[str, ...]:
    for node in walk(mod.tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id == "transformer_attrs" and isinstance(node.value, ast.Tuple):
            names = [k for k, _ in string_keys(node.value)]
            if names:
                return tuple(names)
    return DEFAULT_DIT_ATTRS


def model_classes(index: SourceIndex, pipeline: ClassRef) -> ModelClasses:
    mro, external = index.mro(pipeline)
    attrs = list(dit_attr_defaults(index))
    declared = class_attr(mro, ("_dit_modules",))
    if declared is not None:
        names = [k for k, _ in string_keys(declared[3])]
        if names:
            attrs = names
    out = ModelClasses(pipeline, mro, external, attrs)
    for attr in attrs:
        cls = _attr_class(index, mro, attr)
        if cls is not None:
            out.dits[attr] = cls
            where = next(iter(_assignments(mro, attr.partition(".")[0])), None)
            out.dit_evidence[attr] = where[0].at(where[2]) if where else pipeline.at()
    vae_at = next((a for a in _assignments(mro, "vae")
                   if not _is_none(getattr(a[2], "value", None))), None)
    if vae_at is not None:
        out.vae_assigned = vae_at[0].at(vae_at[2])
        value = getattr(vae_at[2], "value", None)
        for _ in range(4):  # follow `self.vae = self.vae_video` / `= vae_video` to the call that built it
            while isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) \
                    and value.func.attr in SAME_MODULE:
                value = value.func.value
            name = dotted_name(value) if isinstance(value, (ast.Name, ast.Attribute)) else None
            if name is None:
                break
            hop = next(iter(_assignments(mro, name[5:]) if name.startswith("self.") and name.count(".") == 1
                            else []), None)
            if hop is None and "." not in name:
                nodes = facts_of(vae_at[1]).local_assigns.get(name, [])
                value = getattr(nodes[0], "value", None) if nodes else None
            else:
                value = getattr(hop[2], "value", None) if hop else None
        if isinstance(value, ast.Call):
            out.vae_call = (vae_at[0].module, value)
        reach = _init_reach(mro)
        if reach is not None and not any(fn.name in reach for _, fn, _ in _assignments(mro, "vae")):
            out.vae_late = out.vae_assigned
        out.vae = _attr_class(index, mro, "vae")
        if out.vae is not None:
            where = next((c.at(n) for c, f, n in _assignments(mro, "vae")
                          if _Resolver(index, mro).from_expr(c.module, getattr(n, "value", None), f) is not None),
                         out.vae_assigned)
            out.vae_evidence = where
    if vae_at is None:
        _folder_vae(index, pipeline, out)
    if out.dit is None:
        assigned = any(next(iter(_assignments(mro, a.partition(".")[0])), None) for a in attrs)
        found, why = _folder_dit(index, pipeline)
        if found is not None:
            out.dits[attrs[0]] = found
            out.dit_evidence[attrs[0]] = found.at()
            out.dit_how, out.dit_note = "folder", why
        elif not assigned and not declared:
            out.dit_how = "none"
            out.dit_note = (f"{pipeline.name} assigns none of the DiT attributes the generic code looks for "
                            f"({', '.join(attrs)}): there is no DiT for the DiT-level methods to act on")
        else:
            out.dit_how, out.dit_note = "unresolved", why
    if out.dit is not None:
        out.dit_mro, out.dit_external = index.mro(out.dit)
    return out
