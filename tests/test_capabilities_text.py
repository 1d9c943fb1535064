"""The shortcuts that keep the cold support table fast give the answers of the plain code they replace.

Checked on real vllm-omni 0.30.0 modules: the fast walk against ``ast.walk``, whole-word search against
``\\bname\\b``, the lazy-import scan against its regex, ``Module.says`` against every name a function's
facts hold, and ``first_use`` against walking the whole top-level statement.
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path

import pytest

from omnitune.tools.capabilities.module import Module, words_in
from omnitune.tools.capabilities.nodes import facts_of, walk
from omnitune.tools.capabilities.source import LAZY_IMPORT, SourceIndex, _lazy_imports

ROOT = Path(__file__).resolve().parents[1] / ".venv" / "vllm-omni-src" / "0.30.0" / "vllm_omni"
LEAVES = (ast.expr_context, ast.operator, ast.boolop, ast.unaryop, ast.cmpop)


@pytest.fixture(scope="module")
def modules() -> list[Module]:
    index = SourceIndex(ROOT)
    paths = sorted(ROOT.glob("diffusion/models/*/*.py"))[::6] + [ROOT / "diffusion" / "registry.py"]
    found = [index.module_at(index.rel(p)) for p in paths]
    return [m for m in found if m is not None]


def test_walk_is_ast_walk_without_contexts_and_operators(modules):
    for mod in modules:
        expected = [n for n in ast.walk(mod.tree) if not isinstance(n, LEAVES)]
        got = walk(mod.tree)
        assert len(got) == len(expected) and all(a is b for a, b in zip(got, expected)), mod.rel


def test_words_in_finds_what_the_word_boundary_pattern_finds(modules):
    rng = random.Random(14)
    for mod in modules:
        text = mod.text
        names = sorted(set(re.findall(r"\w+", text)))
        for name in [*rng.sample(names, min(12, len(names))), "self", "_", "x"]:
            start = rng.randrange(len(text))
            end = rng.randrange(start, len(text) + 1)
            pattern = re.compile(r"\b" + re.escape(name) + r"\b")
            assert list(words_in(text, name)) == [m.start() for m in pattern.finditer(text)], (mod.rel, name)
            assert list(words_in(text, name, start, end)) == \
                [m.start() for m in pattern.finditer(text, start, end)], (mod.rel, name, start, end)


def test_lazy_import_scan_matches_its_pattern():
    tricky = "  # c\n    from a import\n    from b import c\nx\n\tfrom c  import d\n"
    for text in [tricky, *(p.read_text(encoding="utf-8") for p in sorted(ROOT.glob("diffusion/models/*/*.py")))]:
        assert [m.span() for m in _lazy_imports(text)] == [m.span() for m in LAZY_IMPORT.finditer(text)]


def test_says_never_rules_out_a_name_the_facts_hold(modules):
    for mod in modules:
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                text = mod.text[slice(*mod.span(node))]
                facts = facts_of(node)
                named = {*facts.names, *facts.self_uses, *facts.local_assigns, *(a for a, _ in facts.self_assigns)}
                assert all(name in text for name in named), (mod.rel, node.name)


def _whole_statement_first_use(mod: Module, name: str) -> int | None:
    """first_use as it was: the first textual hit whose top-level statement uses the name, walked whole."""
    starts = [stmt.lineno for stmt in mod.tree.body]
    for m in re.finditer(r"\b" + re.escape(name) + r"\b", mod.text):
        line = mod.text.count("\n", 0, m.start()) + 1
        i = max((k for k, s in enumerate(starts) if s <= line), default=-1)
        stmt = mod.tree.body[i] if i >= 0 else None
        if stmt is None or isinstance(stmt, (ast.Import, ast.ImportFrom)):
            continue
        lines = [n.lineno for n in ast.walk(stmt) if (n.id if isinstance(n, ast.Name) else
                                                       n.attr if isinstance(n, ast.Attribute) else None) == name]
        if lines:
            return min(lines)
    return None


def test_first_use_reads_only_the_members_that_name_it(modules):
    rng = random.Random(14)
    for mod in modules:
        names = sorted(set(re.findall(r"[A-Za-z_]\w+", mod.text)))
        for name in [*rng.sample(names, min(8, len(names))), "guidance_scale", "FusedMoE"]:
            node = mod.first_use({name})
            assert (node.lineno if node is not None else None) == _whole_statement_first_use(mod, name), \
                (mod.rel, name)
