"""Facts about ``ast`` nodes, found in one fast walk per function and memoised on the node.

The cold support table walks about a million nodes, so the walk is the analysis's inner loop:
:func:`walk` yields what ``ast.walk`` yields, in the same (breadth-first) order, except the leaf
nodes no rule looks at (``Load``/``Store`` contexts, operators), and builds a list instead of
chaining generators. The order matters: several rules take the first assignment or use found.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

# Fields no rule needs walked: leaf nodes (expression contexts, operators) and plain values (names, levels).
_SKIP = frozenset({"ctx", "op", "ops", "id", "attr", "arg", "asname", "module", "level", "type_comment", "kind",
                   "conversion", "is_async", "tag", "kwd_attrs", "rest"})
_NAMED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.ExceptHandler, ast.alias, ast.MatchAs,
          ast.MatchStar)   # their ``name`` is a string (a TypeAlias's is a node)
_FIELDS: dict[type, tuple[str, ...]] = {ast.Constant: ()}


def _fields(kind: type) -> tuple[str, ...]:
    skip = _SKIP | {"name"} if issubclass(kind, _NAMED) else _SKIP
    found = _FIELDS[kind] = tuple(f for f in getattr(kind, "_fields", ()) if f not in skip)
    return found


def walk(node: ast.AST) -> list[ast.AST]:
    """``node`` and every node under it, breadth first as ``ast.walk`` (contexts and operators left out)."""
    out = [node]
    add = out.append
    node_type = ast.AST
    known = _FIELDS
    for n in out:   # the list grows while it is read: a queue without a deque
        fields = known.get(n.__class__)
        if fields is None:
            fields = _fields(n.__class__)
        for name in fields:
            value = getattr(n, name, None)
            if type(value) is list:
                for item in value:
                    if isinstance(item, node_type):
                        add(item)
            elif isinstance(value, node_type):
                add(value)
    return out


@dataclass
class Facts:
    """What one walk over a function (or statement) finds; memoised on the node itself."""

    names: dict[str, ast.expr] = field(default_factory=dict)        # identifier -> first Name/Attribute
    self_uses: dict[str, ast.AST] = field(default_factory=dict)     # self.<attr> -> first node
    self_assigns: list[tuple[str, ast.AST]] = field(default_factory=list)  # (attr, Assign/AnnAssign)
    local_assigns: dict[str, list[ast.AST]] = field(default_factory=dict)  # name -> its Assign/AnnAssign nodes
    checks: list[ast.AST] = field(default_factory=list)             # If / Assert nodes
    calls: list[ast.Call] = field(default_factory=list)             # calls of a plain name: ``helper(...)``
    returns: list[ast.Return] = field(default_factory=list)
    memo: dict = field(default_factory=dict)                         # answers derived from these (real_uses)


_RECORDED = frozenset({ast.Call, ast.If, ast.Assert, ast.Return, ast.Assign, ast.AnnAssign})


def facts_of(node: ast.AST) -> Facts:
    found = getattr(node, "_omnitune_facts", None)
    if found is not None:
        return found
    f = Facts()
    names, self_uses, self_assigns, local_assigns = f.names, f.self_uses, f.self_assigns, f.local_assigns
    for n in walk(node):
        if type(n) is ast.Name:
            prev = names.get(n.id)
            if prev is None or n.lineno < prev.lineno:
                names[n.id] = n
        elif type(n) is ast.Attribute:
            attr = n.attr
            prev = names.get(attr)
            if prev is None or n.lineno < prev.lineno:
                names[attr] = n
            if type(n.value) is ast.Name and n.value.id == "self" and attr not in self_uses:
                self_uses[attr] = n
        elif type(n) not in _RECORDED:
            continue
        elif isinstance(n, ast.Call):
            if type(n.func) is ast.Name:
                f.calls.append(n)
        elif isinstance(n, (ast.If, ast.Assert)):
            f.checks.append(n)
        elif isinstance(n, ast.Return):
            f.returns.append(n)
        elif isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None:
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                if type(t) is ast.Attribute and type(t.value) is ast.Name and t.value.id == "self":
                    self_assigns.append((t.attr, n))
                elif type(t) is ast.Name:
                    local_assigns.setdefault(t.id, []).append(n)
    node._omnitune_facts = f  # type: ignore[attr-defined]  # the memo lives and dies with the tree
    return f


def names_of(node: ast.AST) -> dict[str, ast.expr]:
    """Identifiers used under ``node`` (Name ids and Attribute attrs) -> first node."""
    return facts_of(node).names


def self_calls(node: ast.AST) -> dict[str, ast.AST]:
    """``self.<name>`` uses under ``node`` -> first node."""
    return facts_of(node).self_uses
