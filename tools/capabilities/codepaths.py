"""Which code paths a model's own code reaches: CFG / SP group calls, vLLM TP layers, its own compile step.

Read structurally (never by grep): group calls count under any import alias, a call only inside a
refusal (``if cfg_world() > 1: raise``) checks rather than splits, helper classes count only when the
pipeline builds them (a sibling class in the same file does not), and a layer built with
``disable_tp=True`` is replicated, not sharded.
"""

from __future__ import annotations

import ast
import re
import sys

from omnitune.tools.capabilities.classes import ModelClasses, methods
from omnitune.tools.capabilities.module import ClassRef, Module
from omnitune.tools.capabilities.nodes import Facts, facts_of, names_of, self_calls, walk
from omnitune.tools.capabilities.report import Status
from omnitune.tools.capabilities.source import SourceIndex

MODELS_DIR = "diffusion/models/"
TP_LAYERS = {"ColumnParallelLinear", "RowParallelLinear", "QKVParallelLinear", "MergedColumnParallelLinear"}
CFG_CALLS = frozenset({"get_classifier_free_guidance_world_size", "get_cfg_group",
                       "get_classifier_free_guidance_rank"})


# Built or used: `X(...)`, `X.from_pretrained` (after a \b, checked by hand). The possessive form (3.11+) only
# spares the engine backtracking; both give the same matches.
CAPITALISED = re.compile(r"([A-Z]\w*+)\s*+[(.]" if sys.version_info >= (3, 11) else r"([A-Z]\w*)\s*[(.]")


def class_names(mod: Module, node: ast.ClassDef) -> set[str]:
    """Capitalised identifiers in a class's source (classes it may build); read from the text, which is
    far cheaper than walking the tree of every helper class. Memoised: pipelines share model modules."""
    memo: dict[int, set[str]] = mod.memo.setdefault("class_names", {})
    found = memo.get(node.lineno)
    if found is None:
        found = memo[node.lineno] = _class_names(mod, node)
    return found


def _class_names(mod: Module, node: ast.ClassDef) -> set[str]:
    offsets, text = mod.line_starts, mod.text
    start = offsets[node.lineno - 1]
    end_line = getattr(node, "end_lineno", None) or node.lineno
    end = offsets[end_line] if end_line < len(offsets) else len(text)
    # CAPITALISED's \b, checked by hand: a pattern that starts with a character class is scanned for much faster.
    return {m.group(1) for m in CAPITALISED.finditer(text, start, end)
            if not (m.start() and (text[m.start() - 1].isalnum() or text[m.start() - 1] == "_"))}


def mentions(mod: Module, names: frozenset[str]) -> bool:
    """Whether the text names any of ``names`` (a cheap test before the tree is read; memoised)."""
    memo: dict[frozenset[str], bool] = mod.memo.setdefault("mentions", {})
    found = memo.get(names)
    if found is None:
        found = memo[names] = any(n in mod.text for n in names)
    return found


def _says_self(mod: Module, attr: str) -> bool:
    """``self.<attr>`` appears in the text (memoised: the CFG fixpoint asks again on every round)."""
    memo: dict[str, bool] = mod.memo.setdefault("says_self", {})
    found = memo.get(attr)
    if found is None:
        found = memo[attr] = f"self.{attr}" in mod.text
    return found


def own(cls: ClassRef) -> bool:
    """Model-specific code lives in a model folder (not in shared mixins such as models/interface.py)."""
    return cls.module.rel.startswith(MODELS_DIR) and cls.module.rel.count("/") >= 3


def aliases(index: SourceIndex, mod: Module, names: frozenset[str]) -> frozenset[str]:
    """``names`` plus what ``mod`` imports them as (``get_cfg_group as get_guidance_parallel_group``)."""
    memo: dict[frozenset[str], frozenset[str]] = mod.memo.setdefault("aliases", {})
    found = memo.get(names)
    if found is None:
        out = set(names)
        for table in (mod.imports, index.local_imports(mod)):
            out |= {local for local, (src, attr) in table.items() if attr in names and src.startswith("vllm_omni")}
        found = memo[names] = frozenset(out)
    return found


def real_uses(mod: Module, fn: ast.AST, names: frozenset[str]) -> list[ast.AST]:
    """Uses of ``names`` in ``fn`` (of ``mod``) that do work: a use only inside a refusal (``if cfg_world() > 1:
    raise``, ``assert``) checks the group, it does not split anything."""
    if not mod.says(fn, names):
        return []
    facts = facts_of(fn)
    if not names & facts.names.keys():
        return []
    found = facts.memo.get(names)    # pipelines share classes: each (function, names) is read once
    if found is None:
        found = facts.memo[names] = _real_uses(fn, names, facts)
    return found


def _real_uses(fn: ast.AST, names: frozenset[str], facts: Facts) -> list[ast.AST]:
    checks: set[int] = set()
    for node in facts.checks:
        if isinstance(node, ast.Assert) or (isinstance(node, ast.If) and node.body
                                             and isinstance(node.body[0], ast.Raise)):
            checks |= {id(n) for n in walk(node.test)}
    out = []
    for n in walk(fn):
        name = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else None
        if name in names and id(n) not in checks:
            out.append(n)
    return out


CFG_SWITCHES = {"do_classifier_free_guidance", "do_true_cfg", "do_cfg"}



def cfg_switched_off(mc: ModelClasses) -> str | None:
    """``sp.do_classifier_free_guidance = False`` unconditionally in the pipeline's own code (DMD2 mixins)."""
    for cls in mc.pipeline_mro:
        if not cls.module.rel.startswith(MODELS_DIR):
            continue
        for fn in cls.node.body:
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            todo = list(fn.body)
            while todo:
                stmt = todo.pop(0)
                if isinstance(stmt, (ast.For, ast.With)):
                    todo[:0] = stmt.body
                elif isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant) \
                        and stmt.value.value is False:
                    for t in stmt.targets:
                        name = t.attr if isinstance(t, ast.Attribute) else t.id if isinstance(t, ast.Name) else None
                        if name in CFG_SWITCHES:
                            return cls.at(stmt)
    return None



def used_classes(mc: ModelClasses, own_mods: list[Module]) -> list[ClassRef]:
    """Helper classes of the model's own modules that its code actually builds (samplers, inner pipelines).

    A sibling class that merely shares a file with the pipeline is not part of it.
    """
    if mc.helpers is not None:
        return mc.helpers
    start = [c for c in [*mc.pipeline_mro, *mc.dit_mro] if own(c)]
    seen = {c.key for c in start}
    names: set[str] = set()
    for c in start:
        names |= class_names(c.module, c.node)
    out: list[ClassRef] = []
    changed = True
    while changed:
        changed = False
        for mod in own_mods:
            for cname, node in mod.classes.items():
                ref = ClassRef(mod, node)
                if ref.key not in seen and cname in names:
                    seen.add(ref.key)
                    out.append(ref)
                    names |= class_names(mod, node)
                    changed = True
    mc.helpers = out
    return out



def cfg_reach(index: SourceIndex, mc: ModelClasses, own_mods: list[Module]) -> str | None:
    """Line in the model's own code that reaches the CFG-parallel path (directly or via self-methods)."""
    helpers = used_classes(mc, own_mods)
    table = methods(mc.pipeline_mro + [c for c in mc.dit_mro if own(c)] + helpers)
    known = {m.name: aliases(index, m, CFG_CALLS) for m in own_mods}
    for cls, _ in table.values():
        known.setdefault(cls.module.name, aliases(index, cls.module, CFG_CALLS))
    aware = {name for name, (cls, fn) in table.items()
             if mentions(cls.module, known[cls.module.name]) and real_uses(cls.module, fn, known[cls.module.name])}
    changed = bool(aware)
    while changed:
        changed = False
        for name, (cls, fn) in table.items():
            if name not in aware and any(_says_self(cls.module, a) for a in aware) \
                    and cls.module.says(fn, aware) and aware & self_calls(fn).keys():
                aware.add(name)
                changed = True
    for cls in [*mc.pipeline_mro, *mc.dit_mro, *helpers]:
        if not own(cls):
            continue
        known.setdefault(cls.module.name, aliases(index, cls.module, CFG_CALLS))
        here = mentions(cls.module, known[cls.module.name])
        for stmt in cls.node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                direct = real_uses(cls.module, stmt, known[cls.module.name]) if here else []
                via = [n for i, n in self_calls(stmt).items() if i in aware] \
                    if aware and cls.module.says(stmt, aware) else []
                if direct or via:
                    return cls.at(min(direct + via, key=lambda n: getattr(n, "lineno", 0)))
    for mod in own_mods:  # module-level helpers of the model's folder (denoise / guidance loops)
        if not mentions(mod, known[mod.name]):
            continue
        for fn in mod.functions.values():
            uses = real_uses(mod, fn, known[mod.name])
            if uses:
                return mod.at(uses[0])
    return None



def tp_use(index: SourceIndex, mods: list[Module], depth: int = 0) -> str | None:
    """First vLLM parallel linear layer built with TP on (``disable_tp=True`` replicates the layer).

    Layers wrapped in an in-package class of another module (attention / FFN helpers) count too.
    """
    for mod in mods:
        if "tp_use" not in mod.memo:
            mod.memo["tp_use"] = None      # guards against import cycles while this module is read
            mod.memo["tp_use"] = _tp_in_module(index, mod, depth)
        if mod.memo["tp_use"]:
            return mod.memo["tp_use"]
    return None


TP_CALL = re.compile(r"\b(" + "|".join(sorted(TP_LAYERS)) + r")\(")
DISABLED = re.compile(r"\bdisable_tp\s*=\s*True\b")


def _tp_call_line(mod: Module) -> int | None:
    """Line of the first TP layer constructed without ``disable_tp=True``, read from the text (a call's
    arguments up to its closing parenthesis) rather than by walking the module's tree."""
    text = mod.text
    for m in TP_CALL.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        if text[line_start:m.start()].lstrip().startswith("#"):
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        if not DISABLED.search(text, m.end(), i):
            return text.count("\n", 0, m.start()) + 1
    return None


def _tp_in_module(index: SourceIndex, mod: Module, depth: int) -> str | None:
    best = _tp_call_line(mod)
    if best is not None:
        return f"{mod.rel}:{best}"
    if depth >= 2:
        return None
    helpers = []
    for name, (src, attr) in mod.imports.items():
        if attr and name[:1].isupper() and src.startswith("vllm_omni") and src != mod.name and name in mod.text:
            if any(n in index.text_of(src) for n in TP_LAYERS):   # parse only modules that name TP layers
                other = index.module(src)
                if other is not None:
                    helpers.append(other)
    return tp_use(index, helpers, depth + 1) if helpers else None


COMPILE_CALLS = {"regionally_compile", "compile_regions", "compile_repeated_blocks"}



def setup_compile(mc: ModelClasses) -> tuple[Status, str, str] | None:
    """A pipeline's own ``setup_compile`` replaces the runner's compile step (status, evidence, note)."""
    table = methods(mc.pipeline_mro)
    found = table.get("setup_compile")
    if found is None or not own(found[0]):
        return None
    cls, fn = found
    names = names_of(fn)
    hit = next((names[n] for n in COMPILE_CALLS if n in names), None)
    if hit is None and "compile" in names:
        hit = names["compile"]
    if hit is not None:
        return ("supported", cls.at(hit), f"{mc.pipeline.name}.setup_compile compiles the DiT regions itself "
                "(the runner calls it instead of its own regional compile).")
    return ("unsupported", cls.at(fn), f"{mc.pipeline.name}.setup_compile replaces the runner's compile step and "
            "compiles nothing.")
