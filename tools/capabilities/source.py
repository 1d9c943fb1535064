"""An `ast` view of the vllm_omni package: modules parsed on demand, names resolved through imports.

Nothing is imported: a class is found by parsing the module that defines it and following
``import``/``from ... import`` (absolute and relative, re-exports in ``__init__``) inside the package.
Base classes outside the package (torch, diffusers) are kept as names. Every file read is
recorded so that the analysis cache can be invalidated by file mtimes.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from omnitune.tools.capabilities.module import ClassRef, Module

PKG = "vllm_omni"
LAZY_IMPORT = re.compile(r"^[ \t]+from\s+\S+\s+import\s", re.M)
_INDENTED_FROM = re.compile(r"\n(?=[ \t]+from\s)")   # where LAZY_IMPORT can match: found far faster than by it


def _lazy_imports(text: str) -> Iterator[re.Match[str]]:
    """``LAZY_IMPORT.finditer(text)``, tried only at the line starts that can begin a match."""
    end = 0
    for start in ([0] if text[:1] in (" ", "\t") else []) + [m.end() for m in _INDENTED_FROM.finditer(text)]:
        m = LAZY_IMPORT.match(text, start) if start >= end else None
        if m is not None:
            end = m.end()
            yield m


def _top_level(tree: ast.Module):
    """Top-level statements, including those inside ``if``/``try`` blocks (TYPE_CHECKING, fallbacks)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop(0)
        if isinstance(node, (ast.If, ast.Try)):
            stack[:0] = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                         *[s for h in getattr(node, "handlers", []) for s in h.body]]
            continue
        yield node


def _import_source(node: ast.ImportFrom, pkg_parts: list[str]) -> str:
    """The dotted module a ``from ... import`` reads (relative imports resolved against the package)."""
    if not node.level:
        return node.module or ""
    base = pkg_parts[: len(pkg_parts) - (node.level - 1)] if node.level > 1 else pkg_parts
    return ".".join([*base, *(node.module.split(".") if node.module else [])])


class SourceIndex:
    """Parses modules of one vllm_omni package folder lazily and resolves names across them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._modules: dict[str, Module | None] = {}
        self.files: dict[str, float] = {}     # rel path -> mtime of every file read
        self._local_imports: dict[str, dict[str, tuple[str, str | None]]] = {}
        self._texts: dict[Path, str | Exception] = {}
        self._paths: dict[str, Path | None] = {}

    # -- modules ------------------------------------------------------------------------------------
    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def read(self, path: Path) -> str:
        """A file's text, read once per index (some files are looked at for every pipeline of their folder);
        a failed read raises the same error again, for each caller to handle as it would."""
        found = self._texts.get(path)
        if found is None:
            try:
                found = path.read_text(encoding="utf-8")
            except (OSError, ValueError) as exc:
                found = exc
            self._texts[path] = found
        if isinstance(found, Exception):
            raise found
        return found

    def path_of(self, dotted: str) -> Path | None:
        if dotted not in self._paths:
            self._paths[dotted] = self._path_of(dotted)
        return self._paths[dotted]

    def _path_of(self, dotted: str) -> Path | None:
        parts = dotted.split(".")
        if parts[0] != PKG:
            return None
        base = self.root.joinpath(*parts[1:])
        for cand in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
            if cand is not None and cand.is_file():
                return cand
        return None

    def module(self, dotted: str) -> Module | None:
        if dotted in self._modules:
            return self._modules[dotted]
        path = self.path_of(dotted)
        mod = None
        if path is not None:
            text = ""
            try:
                text = self.read(path)
                tree = ast.parse(text, filename=str(path))
            except (OSError, SyntaxError, ValueError):
                tree = None
            if tree is not None:
                mod = Module(dotted, path, self.rel(path), tree, text=text)
                self.files[mod.rel] = path.stat().st_mtime
                self._index(mod, is_pkg=path.name == "__init__.py")
        self._modules[dotted] = mod
        return mod

    def text_of(self, dotted: str) -> str:
        """A module's source text without parsing it (cheap checks before a parse is worth it)."""
        mod = self._modules.get(dotted)
        if mod is not None:
            return mod.text
        path = self.path_of(dotted)
        if path is None:
            return ""
        try:
            text = self.read(path)
        except OSError:
            return ""
        self.files[self.rel(path)] = path.stat().st_mtime
        return text

    def module_at(self, rel: str) -> Module | None:
        dotted = PKG + "." + rel[:-3].replace("/", ".")
        return self.module(dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted)

    def _index(self, mod: Module, is_pkg: bool) -> None:
        pkg_parts = mod.name.split(".") if is_pkg else mod.name.split(".")[:-1]
        for node in _top_level(mod.tree):
            if isinstance(node, ast.ClassDef):
                mod.classes[node.name] = node
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                mod.functions[node.name] = node
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                    and isinstance(node.value, (ast.Name, ast.Attribute)):
                mod.aliases[node.targets[0].id] = dotted_name(node.value) or ""
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        mod.imports[a.asname] = (a.name, None)
                    else:
                        mod.imports.setdefault(a.name.split(".")[0], (a.name.split(".")[0], None))
            elif isinstance(node, ast.ImportFrom):
                src = _import_source(node, pkg_parts)
                for a in node.names:
                    if a.name != "*":
                        mod.imports[a.asname or a.name] = (src, a.name)

    # -- names --------------------------------------------------------------------------------------
    def resolve_class(self, mod: Module, name: str, depth: int = 0) -> ClassRef | None:
        """The class ``name`` means inside ``mod`` (a dotted ``a.B`` follows module aliases)."""
        if depth > 12:
            return None
        if "." in name:
            head, _, attr = name.rpartition(".")
            target = mod.imports.get(head.split(".")[0])
            if target is None:
                return None
            dotted = target[0] if target[1] is None else f"{target[0]}.{target[1]}"
            rest = head.split(".")[1:]
            other = self.module(".".join([dotted, *rest]))
            return self.resolve_class(other, attr, depth + 1) if other else None
        if name in mod.classes:
            return ClassRef(mod, mod.classes[name])
        if mod.aliases.get(name) and mod.aliases[name] != name:
            return self.resolve_class(mod, mod.aliases[name], depth + 1)
        target = mod.imports.get(name)
        if target is None or not target[0].startswith(PKG):
            return None
        src, attr = target
        if attr is None:
            return None
        other = self.module(src)
        if other is not None:
            found = self.resolve_class(other, attr, depth + 1)
            if found:
                return found
        return None  # `from pkg import submodule` is not a class

    def local_imports(self, mod: Module) -> dict[str, tuple[str, str | None]]:
        """``from .x import Y`` inside functions (lazy imports), which ``_index`` does not see."""
        found = self._local_imports.get(mod.name)
        if found is None:
            found = self._local_imports[mod.name] = {}
            pkg_parts = mod.name.split(".") if mod.path.name == "__init__.py" else mod.name.split(".")[:-1]
            for m in _lazy_imports(mod.text):
                # Parse just the statement (to its closing parenthesis), not the whole module again.
                start = m.start() + len(m.group(0)) - len(m.group(0).lstrip())
                end = mod.text.find("\n", start)
                if "(" in mod.text[start:end if end >= 0 else None]:
                    end = mod.text.find(")", start) + 1
                try:
                    node = ast.parse(mod.text[start:end if end > 0 else None]).body[0]
                except (SyntaxError, IndexError):
                    continue
                if isinstance(node, ast.ImportFrom):
                    src = _import_source(node, pkg_parts)
                    for a in node.names:
                        if a.name != "*":
                            found.setdefault(a.asname or a.name, (src, a.name))
        return found

    def resolve_local_import(self, mod: Module, name: str) -> ClassRef | None:
        target = self.local_imports(mod).get(name) if "." not in name else None
        if target is None or not target[0].startswith(PKG) or target[1] is None:
            return None
        other = self.module(target[0])
        return self.resolve_class(other, target[1]) if other is not None else None

    def external_name(self, mod: Module, name: str) -> str:
        """A readable name for a base outside the package (e.g. ``diffusers...ModelMixin`` -> ModelMixin)."""
        return name.rpartition(".")[2]

    def mro(self, cls: ClassRef) -> tuple[list[ClassRef], list[str]]:
        """The class and its in-package bases (depth first, left to right), plus external base names."""
        seen: dict[tuple[str, str], ClassRef] = {}
        external: list[str] = []
        self._mro_walk(cls, 0, seen, external)
        return list(seen.values()), external

    def _mro_walk(self, c: ClassRef, depth: int, seen: dict[tuple[str, str], ClassRef], external: list[str]) -> None:
        # A method, not a recursive closure: a closure cell referring to itself is a reference cycle that
        # would keep this index (and every parsed tree) alive until the cyclic GC finds it.
        if c.key in seen or depth > 30:
            return
        seen[c.key] = c
        for base in c.node.bases:
            name = dotted_name(base)
            if not name:
                continue
            found = self.resolve_class(c.module, name)
            if found is not None:
                self._mro_walk(found, depth + 1, seen, external)
            elif self.external_name(c.module, name) not in external:
                external.append(self.external_name(c.module, name))


def dotted_name(node: ast.AST) -> str | None:
    """``a.b.C`` for Name/Attribute chains (subscripts like ``Generic[T]`` give ``Generic``)."""
    if isinstance(node, ast.Subscript):
        return dotted_name(node.value)
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def class_attr(mro: list[ClassRef], names: tuple[str, ...]) -> tuple[ClassRef, str, ast.AST, ast.AST] | None:
    """The first class-level assignment of any of ``names`` along the MRO: (class, name, stmt, value)."""
    for cls in mro:
        for stmt in cls.node.body:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(stmt, ast.Assign):
                targets, value = stmt.targets, stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                targets, value = [stmt.target], stmt.value
            for t in targets:
                if isinstance(t, ast.Name) and t.id in names and value is not None:
                    return cls, t.id, stmt, value
    return None


def is_empty(value: ast.AST) -> bool:
    """A marker assigned None, False, or an empty literal does not enable anything."""
    if isinstance(value, ast.Constant):
        return not value.value
    if isinstance(value, (ast.List, ast.Tuple, ast.Set)):
        return not value.elts
    if isinstance(value, ast.Dict):
        return not value.keys
    if isinstance(value, ast.Call) and not value.args and not value.keywords:
        return dotted_name(value.func) in ("dict", "list", "tuple", "set")
    return False


def string_keys(node: ast.AST) -> list[tuple[str, int]]:
    """String keys (or elements) of a dict/set/list literal, with their lines."""
    if isinstance(node, ast.Dict):
        return [(k.value, k.lineno) for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    if isinstance(node, (ast.Set, ast.List, ast.Tuple)):
        return [(e.value, e.lineno) for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    if isinstance(node, ast.Call) and dotted_name(node.func) in ("set", "frozenset", "dict") and node.args:
        return string_keys(node.args[0])
    return []
