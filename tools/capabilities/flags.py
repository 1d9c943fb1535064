"""The options `vllm serve MODEL --omni` accepts in the located version, derived without running it.

vLLM-Omni's own options are read with ``ast`` from ``entrypoints/cli/serve.py`` (every
``add_argument`` call, plus the ``--no-`` twins of ``BooleanOptionalAction``). vLLM's engine options
are not in vllm_omni's source: they come from ``resources/vllm_serve_args.json``, derived from the
real 0.30.0 CLI dump (``serve-args.json``) minus vllm-omni 0.30.0's own options. For other versions
that vLLM half is an approximation (vLLM's options change slowly; vLLM-Omni's are read exactly).
For the exact list of an installed pair, tools/launch/flags.py asks the `vllm` executable itself.
"""

from __future__ import annotations

import ast
import json
from functools import lru_cache
from pathlib import Path

from omnitune.tools.capabilities.source import SourceIndex

SERVE_MODULE = "vllm_omni.entrypoints.cli.serve"
VLLM_ARGS = Path(__file__).resolve().parents[2] / "resources" / "vllm_serve_args.json"


def omni_flags(index: SourceIndex) -> dict[str, str]:
    """vLLM-Omni's own serve options -> evidence (serve.py:line)."""
    mod = index.module(SERVE_MODULE)
    out: dict[str, str] = {}
    if mod is None:
        return out
    for node in ast.walk(mod.tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"):
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                 and a.value.startswith("-")]
        boolean = any(k.arg == "action" and "BooleanOptional" in ast.unparse(k.value) for k in node.keywords)
        for name in names:
            out.setdefault(name, mod.at(node))
            if boolean and name.startswith("--"):
                out.setdefault("--no-" + name[2:], mod.at(node))
    return out


@lru_cache(maxsize=4)
def vllm_flags(path: Path = VLLM_ARGS) -> tuple[frozenset[str], str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return frozenset(data["flags"]), data["provenance"]


def derive_vllm_flags(reference_serve_args: Path, index: SourceIndex) -> list[str]:
    """vLLM's own options: every option of the reference CLI dump that vllm_omni's serve.py does not define."""
    actions = json.loads(reference_serve_args.read_text(encoding="utf-8"))
    every = {f for a in actions for f in a.get("flags", [])}
    return sorted(every - set(omni_flags(index)))


def serve_flags(index: SourceIndex) -> tuple[set[str], dict[str, str], str]:
    """(all options, vllm-omni's own with evidence, how the list was derived)."""
    own = omni_flags(index)
    vllm, provenance = vllm_flags()
    how = (f"vllm-omni options read from {SERVE_MODULE.replace('.', '/')[len('vllm_omni/'):]}.py ({len(own)}); "
           f"vLLM engine options ({len(vllm)}) from {provenance}")
    return set(own) | set(vllm), own, how
