"""The ONE catalogue of `vllm serve MODEL --omni` options: names, action, type, choices, nargs.

Read from the engine itself when the serving environment can answer (its parser's actions, via the preflight
worker; cached on disk per serving Python and installed versions). Otherwise the shipped
``resources/vllm_serve_args.json``: every action of the real vLLM 0.30.0 + vLLM-Omni 0.30.0 parser, marked
``exact: false`` when the installed versions differ or are unknown. Validation, the ``omnitune://serve-flags``
resource and inspect all read this module, so they cannot disagree.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from omnitune.tools.capabilities.nodes import walk
from omnitune.tools.capabilities.source import SourceIndex

SERVE_MODULE = "vllm_omni.entrypoints.cli.serve"
OMNI_GROUP = "OmniConfig"
SWITCHES = {"_StoreTrueAction", "_StoreFalseAction", "_StoreConstAction", "_CountAction", "_HelpAction",
            "_VersionAction", "_AppendConstAction", "BooleanOptionalAction"}
JSON_TYPES = {"loads", "parse_dataclass", "_json_object", "_parse_stage_overrides"}
_VERSIONS_PROBE = ("import importlib.metadata as m, json\nv = {}\nfor d in ('vllm', 'vllm-omni'):\n    try:\n"
                   "        v[d] = m.version(d)\n    except m.PackageNotFoundError:\n        v[d] = None\n"
                   "print(json.dumps(v))")


@dataclass(frozen=True)
class Flag:
    """One argparse action of the serve parser (all its option strings share it)."""

    names: tuple[str, ...]
    dest: str
    action: str
    type: str | None = None
    choices: tuple[str, ...] | None = None
    nargs: Any = None
    default: Any = None
    group: str | None = None

    @property
    def switch(self) -> bool:
        return self.action in SWITCHES

    @property
    def negatable(self) -> bool:
        return self.action == "BooleanOptionalAction"

    @property
    def base_type(self) -> str | None:
        return self.type.split(":", 1)[1] if self.type and self.type.startswith("optional:") else self.type

    @property
    def json(self) -> bool:
        return self.base_type in JSON_TYPES


@dataclass
class Catalogue:
    flags: dict[str, Flag]
    source: str                      # "engine" (asked the serving environment) | "resource" (shipped copy)
    exact: bool                      # True: this is the installed parser (or the shipped copy of the same versions)
    versions: dict[str, str | None] = field(default_factory=dict)
    how: str = ""

    def names(self) -> set[str]:
        return set(self.flags)

    def summary(self) -> dict:
        return {"source": self.source, "exact": self.exact, "versions": self.versions, "how": self.how}


def from_actions(actions: list[dict], source: str, exact: bool, versions: dict, how: str) -> Catalogue:
    flags: dict[str, Flag] = {}
    for a in actions:
        if a.get("positional") or not a.get("flags"):
            continue
        f = Flag(names=tuple(a["flags"]), dest=a["dest"], action=a.get("action") or "_StoreAction", type=a.get("type"),
                 choices=tuple(a["choices"]) if a.get("choices") is not None else None, nargs=a.get("nargs"),
                 default=a.get("default"), group=a.get("group"))
        for name in f.names:
            flags.setdefault(name, f)
    return Catalogue(flags, source, exact, dict(versions), how)


@lru_cache(maxsize=1)
def _shipped_data() -> dict:
    return json.loads(resources.files("omnitune.resources").joinpath("vllm_serve_args.json").read_text("utf-8"))


def shipped(installed: dict[str, str | None] | None = None) -> Catalogue:
    """The shipped copy; exact only when the installed versions are known and equal to the copy's."""
    data = _shipped_data()
    same = bool(installed) and all(installed.get(k) == data["versions"].get(k) for k in ("vllm", "vllm-omni"))
    how = f"shipped copy of the real vllm {data['versions']['vllm']} + vllm-omni {data['versions']['vllm-omni']} parser"
    if not same:
        how += (f"; installed versions {installed} differ, so this is an approximation" if installed
                else "; installed versions unknown, so this is an approximation")
    return from_actions(data["actions"], "resource", same, data["versions"], how)


_VERSIONS: dict[tuple[str, float], dict | None] = {}


def installed_versions(python: Path) -> dict | None:
    """vllm / vllm-omni versions of a serving Python (package metadata only: no vLLM import, well under a second)."""
    try:
        key = (str(python), python.stat().st_mtime)
    except OSError:
        return None
    if key not in _VERSIONS:
        try:
            out = subprocess.run([str(python), "-c", _VERSIONS_PROBE], capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL, check=False)
            _VERSIONS[key] = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            _VERSIONS[key] = None
    return _VERSIONS[key]


def for_serving(python: Path | None, cache_dir: Path, wait_s: float) -> Catalogue:
    """The engine's own catalogue when it can answer within ``wait_s`` (or was cached), else the shipped copy."""
    from omnitune.tools.serving import preflight

    if python is None:
        return shipped(None)
    versions = installed_versions(python)
    if not versions or not versions.get("vllm"):
        cat = shipped(None)
        cat.how += f"; {python} has no vllm"
        return cat
    key = hashlib.sha256(f"{python}:{versions}".encode()).hexdigest()[:16]
    cache = cache_dir / f"serve-catalogue-{key}.json"
    how = f"the serving environment's own `vllm serve --omni` parser ({python}, vllm {versions.get('vllm')}, " \
          f"vllm-omni {versions.get('vllm-omni')})"
    if cache.is_file():
        try:
            return from_actions(json.loads(cache.read_text("utf-8")), "engine", True, versions, how + " (cached)")
        except (OSError, ValueError, KeyError):
            pass
    copy = shipped(versions)
    if copy.exact and not preflight.worker_for(python).ready.is_set():
        return copy  # the same versions as the shipped copy: no need to wait for a cold import
    answer = preflight.catalogue(python, wait_s)
    if answer.get("actions"):
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(answer["actions"]), "utf-8")
        return from_actions(answer["actions"], "engine", True, versions, how)
    cat = shipped(versions)
    cat.how += f"; the serving environment could not answer ({answer.get('unavailable') or answer.get('error')})"
    return cat


def regenerate(python: Path, out: Path, timeout_s: float = 600) -> int:
    """Rewrite the shipped copy from a real serving environment; returns the number of actions."""
    from omnitune.tools.serving import preflight

    answer = preflight.catalogue(python, timeout_s)
    versions = preflight.worker_for(python).request("versions", timeout_s).get("versions") or {}
    if not answer.get("actions"):
        raise RuntimeError(f"the serving environment did not answer: {answer}")
    data = {"provenance": "every argparse action of the real `vllm serve MODEL --omni` parser (built as "
                          "vllm_omni.entrypoints.cli.main builds it), dumped by tools/serving/worker.py `catalogue`; "
                          "regenerate with tools.capabilities.flags.regenerate(<serving python>, <this file>)",
            "versions": versions, "actions": answer["actions"]}
    out.write_text(json.dumps(data, indent=1) + "\n", "utf-8")
    return len(answer["actions"])


def describe(names: set[str]) -> dict[str, dict]:
    """Action, type, choices and nargs of each name (from the shipped parser copy; names it lacks are left out)."""
    cat = shipped(_shipped_data()["versions"])
    out = {}
    for name in sorted(names):
        f = cat.flags.get(name)
        if f is not None:
            out[name] = {"action": f.action, "type": f.type, "choices": list(f.choices) if f.choices else None,
                         "nargs": f.nargs, "switch": f.switch, "negatable": f.negatable, "json": f.json}
    return out


def omni_flags(index: SourceIndex) -> dict[str, str]:
    """vLLM-Omni's own serve options -> evidence (serve.py:line), read from the located source."""
    mod = index.module(SERVE_MODULE)
    out: dict[str, str] = {}
    if mod is None:
        return out
    for node in walk(mod.tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                 and a.value.startswith("-")]
        boolean = any(k.arg == "action" and "BooleanOptional" in ast.unparse(k.value) for k in node.keywords)
        for name in names:
            out.setdefault(name, mod.at(node))
            if boolean and name.startswith("--"):
                out.setdefault("--no-" + name[2:], mod.at(node))
    return out


def serve_flags(index: SourceIndex, version: str | None = None) -> tuple[set[str], dict[str, str], str]:
    """(all options, vllm-omni's own with evidence, how) for the located vllm-omni source.

    The same version as the shipped copy: exactly its names. Another version: the copy's vLLM options plus the
    vllm-omni options read from that version's serve.py (vLLM's options change slowly; this is said in ``how``)."""
    own = omni_flags(index)
    data = _shipped_data()
    cat = from_actions(data["actions"], "resource", True, data["versions"], "")
    if version is not None and version == data["versions"].get("vllm-omni"):
        return cat.names(), own, f"exact: the shipped copy of the real vllm-omni {version} parser"
    vllm = {n for n, f in cat.flags.items() if f.group != OMNI_GROUP}
    how = (f"vllm-omni options read from {SERVE_MODULE.replace('.', '/')[len('vllm_omni/'):]}.py ({len(own)}); "
           f"vLLM engine options ({len(vllm)}) from the shipped copy of vllm {data['versions'].get('vllm')} "
           "(exact: false for another version)")
    return vllm | set(own), own, how
