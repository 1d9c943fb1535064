"""Where a model's own code refuses a feature: ``if <feature requested>: raise ...`` and ``assert``.

Conditions are read structurally: the setting the test reads (``parallel_config.tensor_parallel_size``,
``od_config.cache_backend``, a local ``cfg_size``...) and how it is compared. A test on one feature
("> 1", "is not None", a bare flag) rejects it; a limit ("not in (1, 2)", "> 2") becomes a constraint;
a test combining several settings becomes a combination constraint, not a rejection.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from omnitune.tools.capabilities.source import Module, dotted_name, facts_of, string_keys

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


def _setting(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and node.attr in FEATURES:
        return node.attr
    if isinstance(node, ast.Name) and node.id in FEATURES:
        return node.id
    if isinstance(node, ast.Call) and dotted_name(node.func) == "getattr" and len(node.args) >= 2 \
            and isinstance(node.args[1], ast.Constant) and node.args[1].value in FEATURES:
        return node.args[1].value
    if isinstance(node, ast.Call) and dotted_name(node.func) in ("bool", "int"):
        return _setting(node.args[0]) if node.args else None
    return None


def _consts(node: ast.AST) -> list:
    if isinstance(node, ast.Constant):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant)]
    return []


def _settings_in(node: ast.AST) -> set[str]:
    return {s for n in ast.walk(node) if (s := _setting(n))}


def classify(test: ast.AST, negate: bool = False) -> list[tuple[str, tuple[str, ...], str, list[int]]]:
    """(kind, methods, parameter, values) for each way ``test`` (true means: refuse) names a feature."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or) and not negate:
        return [r for v in test.values for r in classify(v)]
    if isinstance(test, ast.BoolOp):
        found = _settings_in(test)
        if not found:
            return []
        methods = tuple(dict.fromkeys(m for s in sorted(found) for m in FEATURES[s]))
        return [("combination", methods, ",".join(sorted(found)), [])]
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return classify(test.operand, not negate)
    setting = _setting(test)
    if setting is not None:  # a bare flag: `if parallel_config.use_hsdp: raise`
        return [] if negate else [("rejected", FEATURES[setting], setting, [])]
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        found = _settings_in(test)
        return [("combination", tuple(m for s in found for m in FEATURES[s]), ",".join(sorted(found)), [])] if found else []
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
        return [("one_of", methods, setting, sorted(ints))]
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
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            parts.append(n.value)
        elif isinstance(n, ast.FormattedValue):
            parts.append("{" + (dotted_name(n.value) or "…") + "}")
    return "".join(parts).strip()[:240]


def _raises(body: list[ast.stmt]) -> ast.Raise | None:
    for stmt in body:
        if isinstance(stmt, ast.Raise):
            return stmt
    return None


def scan(mod: Module, fn: ast.AST) -> list[Finding]:
    """Refusals of features inside one function (or a whole module body)."""
    out: list[Finding] = []
    facts = facts_of(fn)
    if not FEATURES.keys() & facts.names.keys():
        return out
    for node in facts.checks:
        if isinstance(node, ast.If):
            raise_ = _raises(node.body)
            if raise_ is None:
                continue
            test, negate, msg_node = node.test, False, raise_.exc
        elif isinstance(node, ast.Assert):
            test, negate, msg_node = node.test, True, node.msg
        else:
            continue
        for kind, methods, parameter, values in classify(test, negate):
            if methods:
                out.append(Finding(kind, methods, parameter, ast.unparse(test), _message(msg_node),
                                   mod.at(node), values))
    return out


__all__ = ["Finding", "scan", "classify", "FEATURES", "string_keys"]
