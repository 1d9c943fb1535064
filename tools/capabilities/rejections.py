"""Where a model's own code refuses a feature: ``if <feature requested>: raise ...`` and ``assert``.

Conditions are read structurally: the setting the test reads (``parallel_config.tensor_parallel_size``,
``od_config.cache_backend``, a local ``cfg_size``...) and how it is compared. A test on one feature
("> 1", "is not None", a bare flag) rejects it; a limit ("not in (1, 2)", "> 2") becomes a constraint;
a test combining several settings becomes a combination constraint, not a rejection.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from omnitune.tools.capabilities.module import Module
from omnitune.tools.capabilities.nodes import facts_of, walk
from omnitune.tools.capabilities.source import dotted_name, string_keys

# Setting name (attribute, local variable or getattr string) -> method keys.
FEATURES: dict[str, tuple[str, ...]] = {
    "sequence_parallel_size": ("ulysses_sp", "ring_sp"), "sp_size": ("ulysses_sp", "ring_sp"),
    "ulysses_degree": ("ulysses_sp",), "ring_degree": ("ring_sp",),
    "cfg_parallel_size": ("cfg_parallel",), "cfg_size": ("cfg_parallel",), "cfg_world_size": ("cfg_parallel",),
    "tensor_parallel_size": ("tensor_parallel",), "tp_size": ("tensor_parallel",),
    "vae_patch_parallel_size": ("vae_patch_parallel",),
    "use_hsdp": ("hsdp",), "enable_expert_parallel": ("expert_parallel",),
    "enable_cpu_offload": ("cpu_offload",), "enable_layerwise_offload": ("layerwise_offload",),
    "diffusion_offload_config": ("cpu_offload", "layerwise_offload"),
    "quantization_config": ("fp8",), "quantization": ("fp8",),
    "cache_backend": ("tea_cache", "cache_dit"),
}
_SCAN_WORDS = (*FEATURES, "resolve_offload_strategy")
CACHE_METHODS = {"tea_cache": "tea_cache", "cache_dit": "cache_dit"}
NONE_LIKE = {None, "", "none"}


@dataclass
class Finding:
    kind: str                       # rejected | one_of | combination
    methods: tuple[str, ...]
    parameter: str
    condition: str
    message: str
    evidence: str
    values: list[int] = field(default_factory=list)


# Local names bound to a setting in the function being read (``size = getattr(pc, field, 1) or 1``).
_ENV: dict[str, str] = {}


def _setting(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and node.attr in FEATURES:
        return node.attr
    if isinstance(node, ast.Name):
        return _ENV.get(node.id) or (node.id if node.id in FEATURES else None)
    if isinstance(node, ast.Call) and dotted_name(node.func) == "getattr" and len(node.args) >= 2:
        arg = node.args[1]
        if isinstance(arg, ast.Constant) and arg.value in FEATURES:
            return arg.value
        if isinstance(arg, ast.Name) and arg.id in _ENV:
            return _ENV[arg.id]
        return None
    if isinstance(node, ast.Call) and dotted_name(node.func) in ("bool", "int"):
        return _setting(node.args[0]) if node.args else None
    if isinstance(node, ast.Call) and (dotted_name(node.func) or "").endswith("resolve_offload_strategy"):
        return "diffusion_offload_config"
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(node.values) == 2 \
            and isinstance(node.values[1], ast.Constant):  # `x or 1`
        return _setting(node.values[0])
    return None


def _consts(node: ast.AST) -> list:
    if isinstance(node, ast.Constant):
        return [node.value]
    if isinstance(node, ast.Attribute) and node.attr == "NONE":  # OffloadStrategy.NONE
        return [None]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant)]
    return []


def _settings_in(node: ast.AST) -> set[str]:
    return {s for n in walk(node) if (s := _setting(n))}


def classify(test: ast.AST, negate: bool = False) -> list[tuple[str, tuple[str, ...], str, list[int]]]:
    """(kind, methods, parameter, values) for each way ``test`` (true means: refuse) names a feature."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or) and not negate:
        return [r for v in test.values for r in classify(v)]
    if isinstance(test, ast.BoolOp):
        found = _settings_in(test)
        if not found:
            return []
        if len(found) == 1 and isinstance(test.op, ast.And) and not negate \
                and all(_settings_in(v) for v in test.values):  # `x is not None and x > 1`: one setting
            strongest = [r for v in test.values for r in classify(v) if r[0] != "combination"]
            if strongest:
                return strongest[-1:]
        methods = tuple(dict.fromkeys(m for s in sorted(found) for m in FEATURES[s]))
        return [("combination", methods, ",".join(sorted(found)), [])]
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return classify(test.operand, not negate)
    setting = _setting(test)
    if setting is not None:  # a bare flag: `if parallel_config.use_hsdp: raise`
        return [] if negate else [("rejected", FEATURES[setting], setting, [])]
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        found = _settings_in(test)
        if not found:
            return []
        return [("combination", tuple(m for s in found for m in FEATURES[s]), ",".join(sorted(found)), [])]
    left, op, right = test.left, test.ops[0], test.comparators[0]
    setting = _setting(left)
    if setting is None:
        return []
    values = _consts(right)
    if setting == "cache_backend":
        return _cache(op, values, negate)
    # Normalise "refuse when" for numeric sizes and None checks.
    if negate:
        op = {ast.Eq: ast.NotEq(), ast.NotEq: ast.Eq(), ast.LtE: ast.Gt(), ast.Lt: ast.GtE(), ast.In: ast.NotIn(),
              ast.NotIn: ast.In(), ast.Is: ast.IsNot(), ast.IsNot: ast.Is()}.get(type(op), op)
    methods = FEATURES[setting]
    if isinstance(op, ast.IsNot) and values == [None]:
        return [("rejected", methods, setting, [])]
    ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if not ints:
        return []
    if (isinstance(op, ast.Gt) and ints == [1]) or (isinstance(op, ast.NotEq) and ints == [1]) \
            or (isinstance(op, ast.GtE) and ints == [2]):
        return [("rejected", methods, setting, [])]
    if isinstance(op, ast.Gt) and ints[0] > 1:
        return [("one_of", methods, setting, list(range(1, ints[0] + 1)))]
    if isinstance(op, ast.NotIn):
        every_const = isinstance(right, (ast.Tuple, ast.List, ast.Set)) and all(
            isinstance(e, ast.Constant) for e in right.elts)
        if ints == [1] and not every_const:  # `x not in (1, world_size)`: a limit, not a refusal
            return []
        return [("rejected" if ints == [1] else "one_of", methods, setting, sorted(ints))]
    if isinstance(op, ast.NotEq) and ints[0] > 1:
        return [("one_of", methods, setting, sorted({1, ints[0]}))]
    return []


def _cache(op: ast.cmpop, values: list, negate: bool):
    backends = {v for v in values if isinstance(v, str)} | ({None} if None in values else set())
    refused: set[str] = set()
    if isinstance(op, (ast.NotIn, ast.NotEq, ast.IsNot)) != negate:  # refuse anything outside `values`
        refused = {m for b, m in CACHE_METHODS.items() if b not in backends} if backends & NONE_LIKE or \
            isinstance(op, ast.NotIn) else set()
    else:                                                             # refuse exactly `values`
        refused = {CACHE_METHODS[b] for b in backends if b in CACHE_METHODS}
    return [("rejected", tuple(sorted(refused)), "cache_backend", [])] if refused else []


def _message(node: ast.AST | None) -> str:
    if node is None:
        return ""
    parts = []
    for n in walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            parts.append(n.value)
        elif isinstance(n, ast.FormattedValue):
            parts.append("{" + (dotted_name(n.value) or "…") + "}")
    return "".join(parts).strip()[:240]


def _raises(body: list[ast.stmt], collectors: dict[str, ast.Raise] | None = None) -> ast.Raise | None:
    """The raise a branch ends in; ``problems.append(...)`` counts when ``if problems: raise`` follows."""
    for stmt in body:
        if isinstance(stmt, ast.Raise):
            return stmt
        if collectors and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) \
                and isinstance(stmt.value.func, ast.Attribute) and stmt.value.func.attr in ("append", "extend", "add") \
                and isinstance(stmt.value.func.value, ast.Name) and stmt.value.func.value.id in collectors:
            return collectors[stmt.value.func.value.id]
    return None


def _collectors(fn: ast.AST) -> dict[str, ast.Raise]:
    """Local lists of problems raised together at the end: ``if unsupported: raise ValueError(...)``."""
    out: dict[str, ast.Raise] = {}
    for node in facts_of(fn).checks:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name):
            found = _raises(node.body)
            if found is not None:
                out[node.test.id] = found
    return out


STEP_MODE = re.compile(r"(^|_)step(_|$)")


def step_mode_only(fn: ast.AST) -> bool:
    """Code of the step-execution mode only (``_validate_step_request(self, state: StepRequestState)``)."""
    name = getattr(fn, "name", "")
    if STEP_MODE.search(name):
        return True
    args = getattr(fn, "args", None)
    if isinstance(args, ast.arguments):
        for a in args.args:
            ann = a.annotation
            text = ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) else \
                (dotted_name(ann) if ann is not None else None)
            if text and "Step" in text:
                return True
    return False


def _aliases(fn: ast.AST) -> dict[str, str]:
    """Local names that hold one setting: ``cfg = pc.cfg_parallel_size or 1``."""
    env: dict[str, str] = {}
    for name, nodes in facts_of(fn).local_assigns.items():
        if len(nodes) == 1 and name not in FEATURES:
            found = _setting(getattr(nodes[0], "value", None) or ast.Pass())
            if found is not None:
                env[name] = found
    return env


def _loop_keys(loop: ast.For, fn: ast.AST) -> tuple[str, list[str]] | None:
    """``for field, _ in D.items()`` / ``for field in ("a", "b")``: the loop name and the settings it takes."""
    target = loop.target.elts[0] if isinstance(loop.target, ast.Tuple) and loop.target.elts else loop.target
    if not isinstance(target, ast.Name):
        return None
    it = loop.iter
    if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr in ("items", "keys"):
        it = it.func.value
    if isinstance(it, ast.Name):
        assigned = facts_of(fn).local_assigns.get(it.id, [])
        it = getattr(assigned[0], "value", None) if len(assigned) == 1 else None
    keys = [k for k, _ in string_keys(it)] if it is not None else []
    keys = [k for k in keys if k in FEATURES]
    return (target.id, keys) if keys else None


def _guard(test: ast.AST, inner: tuple[str, ...]) -> bool:
    """An enclosing test that only says "this feature is on" (or that a config exists) adds no condition."""
    settings = _settings_in(test)
    if settings:
        return all(set(FEATURES[x]) & set(inner) for x in settings)
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.IsNot):
        return True  # `if parallel_config is not None:`
    return isinstance(test, (ast.Name, ast.Attribute)) and "config" in (dotted_name(test) or "")


def _walk(body: list[ast.stmt], outer: list[ast.AST], fn: ast.AST, out: list[tuple[ast.AST, list[ast.AST], dict]]):
    """(check, enclosing tests, loop bindings) for every If/Assert, in order."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            out.append((stmt, outer, dict(_ENV)))
            _walk(stmt.body, [*outer, stmt.test], fn, out)
            _walk(stmt.orelse, [*outer, ast.UnaryOp(op=ast.Not(), operand=stmt.test)], fn, out)
        elif isinstance(stmt, ast.Assert):
            out.append((stmt, outer, dict(_ENV)))
        elif isinstance(stmt, ast.For):
            keys = _loop_keys(stmt, fn)
            for key in (keys[1] if keys else [None]):
                saved = dict(_ENV)
                if keys and key:
                    _ENV[keys[0]] = key
                    for name, nodes in facts_of(fn).local_assigns.items():  # `size = getattr(pc, field)`
                        for n in nodes:
                            if any(n is x for x in walk(stmt)):
                                found = _setting(getattr(n, "value", None) or ast.Pass())
                                if found:
                                    _ENV[name] = found
                _walk(stmt.body, outer, fn, out)
                _ENV.clear()
                _ENV.update(saved)
        elif isinstance(stmt, (ast.While, ast.With, ast.AsyncWith, ast.AsyncFor, ast.Try)):
            for part in ("body", "orelse", "finalbody"):
                _walk(getattr(stmt, part, []) or [], outer, fn, out)
            for h in getattr(stmt, "handlers", []):
                _walk(h.body, outer, fn, out)


def scan(mod: Module, fn: ast.AST) -> list[Finding]:
    """Refusals of features inside one function (or a whole module body).

    A refusal nested under a test on another setting or mode (``if sp > 1: if cfg > 1: raise``,
    ``if self.is_distilled and cfg > 1``) is a combination constraint, not a rejection of the feature.
    """
    out: list[Finding] = []
    words: list[str] | None = mod.memo.get("scan_words")
    if words is None:
        words = mod.memo["scan_words"] = [w for w in _SCAN_WORDS if w in mod.text]
    if not mod.says(fn, words):
        return out   # names no setting: its tree need not be walked
    facts = facts_of(fn)
    if not FEATURES.keys() & facts.names.keys() and "resolve_offload_strategy" not in facts.names:
        return out
    _ENV.clear()
    _ENV.update(_aliases(fn))
    collectors = _collectors(fn)
    mode = step_mode_only(fn)
    found: list[tuple[ast.AST, list[ast.AST], dict]] = []
    _walk(getattr(fn, "body", []), [], fn, found)
    for node, outer, env in found:
        if isinstance(node, ast.If):
            raise_ = _raises(node.body, collectors)
            if raise_ is None:
                continue
            test, negate, msg_node = node.test, False, raise_.exc
        elif isinstance(node, ast.Assert):
            test, negate, msg_node = node.test, True, node.msg
        else:
            continue
        _ENV.clear()
        _ENV.update(env)
        for kind, methods, parameter, values in classify(test, negate):
            if not methods:
                continue
            extra = [t for t in outer if not _guard(t, methods)]
            condition = " and ".join(ast.unparse(t) for t in [*extra, test]) if extra else ast.unparse(test)
            if mode:
                condition = f"step_execution and {condition}"
            if (extra or mode) and kind == "rejected":
                kind = "combination"
            out.append(Finding(kind, methods, parameter, condition, _message(msg_node), mod.at(node), values))
    _ENV.clear()
    return out


__all__ = ["Finding", "scan", "classify", "FEATURES", "string_keys"]
