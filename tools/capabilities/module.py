"""One parsed module of the vllm_omni package, and the text tests that spare walking its tree.

A name a node's tree uses is spelled in that node's lines, so ``str.find`` over them (``Module.says``,
:func:`words_in`) can rule a node out before :func:`~omnitune.tools.capabilities.nodes.facts_of` walks it;
only a possible use is confirmed on the tree (comments and strings never count).
"""

from __future__ import annotations

import ast
import bisect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

from omnitune.tools.capabilities.nodes import facts_of, walk


@dataclass
class Module:
    name: str                     # dotted, e.g. vllm_omni.diffusion.registry
    path: Path
    rel: str                      # path relative to the package folder's parent's package: diffusion/registry.py
    tree: ast.Module
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # local -> (module, attr|None)
    classes: dict[str, ast.ClassDef] = field(default_factory=dict)
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)   # `Alias = Original` at module level
    text: str = ""
    memo: dict = field(default_factory=dict)   # derived answers about this module (they live with the tree)
    _starts: list[int] | None = None
    _line_starts: list[int] | None = None
    _spans: dict[int, tuple[int, int]] = field(default_factory=dict)   # id(node) -> span (the tree outlives it)

    @property
    def line_starts(self) -> list[int]:
        """The offset in ``text`` where each line starts (``[0]`` is line 1)."""
        if self._line_starts is None:
            lengths = map((1).__add__, map(len, self.text.split("\n")[:-1]))   # each line and its "\n"
            self._line_starts = list(accumulate(lengths, initial=0))
        return self._line_starts

    def span(self, node: ast.AST) -> tuple[int, int]:
        """Offsets of the whole lines ``node`` covers, its decorators included."""
        starts = self.line_starts
        first = min([getattr(node, "lineno", 1), *(d.lineno for d in getattr(node, "decorator_list", ()))])
        last = getattr(node, "end_lineno", None) or first
        return starts[first - 1], starts[last] if last < len(starts) else len(self.text)

    def says(self, node: ast.AST, words: Iterable[str]) -> bool:
        """Whether the lines of ``node`` (a node of this module) hold any of ``words``: a name its tree uses is
        in its text, so a node that fails this need not be walked to look for them. True once the node's facts
        exist: reading them is cheaper than the text."""
        if hasattr(node, "_omnitune_facts"):
            return True
        span = self._spans.get(id(node))
        if span is None:
            span = self._spans[id(node)] = self.span(node)
        find, (start, end) = self.text.find, span
        return any(find(word, start, end) >= 0 for word in words)

    def first_use(self, names: set[str]) -> ast.AST | None:
        """The first node (outside imports) using any of ``names`` as a Name or Attribute.

        The text finds candidate lines cheaply; ``ast`` confirms each (comments and strings do not count).
        """
        if self._starts is None:
            self._starts = [stmt.lineno for stmt in self.tree.body]
        starts, lines = self._starts, self.line_starts
        best: ast.AST | None = None
        for name in names:
            if name not in self.text:
                continue
            for offset in words_in(self.text, name):
                line = bisect.bisect_right(lines, offset)
                i = bisect.bisect_right(starts, line) - 1
                if i < 0:
                    continue
                stmt = self.tree.body[i]
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    continue
                node = self._use_in(stmt, name)
                if node is not None:
                    if best is None or _line(node) < _line(best):
                        best = node
                    break
        return best

    def _use_in(self, stmt: ast.AST, name: str) -> ast.AST | None:
        """The first line under ``stmt`` using ``name`` (``facts_of(stmt).names[name]``'s line), walking only
        the members of a class whose text names it: a whole pipeline class is not walked for one identifier."""
        if not isinstance(stmt, ast.ClassDef) or hasattr(stmt, "_omnitune_facts"):
            return facts_of(stmt).names.get(name)
        header = [n for f in stmt._fields if f not in ("name", "body") for n in _nodes(getattr(stmt, f, None))]
        best = _first_named(header, name)
        for child in stmt.body:   # in line order: the first member that uses it has the first use
            start, end = self.span(child)
            if next(words_in(self.text, name, start, end), None) is None:
                continue
            node = self._use_in(child, name)
            if node is not None:
                return node if best is None or _line(node) < _line(best) else best
        return best

    def at(self, node: ast.AST) -> str:
        return f"{self.rel}:{getattr(node, 'lineno', 0)}"


def _line(node: ast.AST) -> int:
    return getattr(node, "lineno", 0)


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"   # what the regex ``\w`` matches in a str pattern


def words_in(text: str, name: str, start: int = 0, end: int | None = None) -> Iterator[int]:
    """Offsets of ``name`` as a whole word in ``text[start:end]``: the matches of ``\bname\b`` (with ``pos`` and
    ``endpos``), found with ``str.find``, much faster than a pattern that starts with ``\b``."""
    end = len(text) if end is None else end
    if not (name and _word_char(name[0]) and _word_char(name[-1])):
        yield from (m.start() for m in re.compile(r"\b" + re.escape(name) + r"\b").finditer(text, start, end))
        return
    i = text.find(name, start, end)
    while i >= 0:
        after = i + len(name)
        if (i == 0 or not _word_char(text[i - 1])) and (after >= end or not _word_char(text[after])):
            yield i
            i = text.find(name, after, end)
        else:
            i = text.find(name, i + 1, end)


def _nodes(value: object) -> list[ast.AST]:
    """Every node under a field's value (a node, a list of nodes, or neither)."""
    items = value if isinstance(value, list) else [value]
    return [n for item in items if isinstance(item, ast.AST) for n in walk(item)]


def _first_named(nodes: list[ast.AST], name: str) -> ast.AST | None:
    found = [n for n in nodes if (n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute)
                                  else None) == name]
    return min(found, key=_line) if found else None


@dataclass
class ClassRef:
    module: Module
    node: ast.ClassDef

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def key(self) -> tuple[str, str]:
        return (self.module.name, self.node.name)

    def at(self, node: ast.AST | None = None) -> str:
        return self.module.at(node or self.node)
