"""`vllm serve MODEL --omni` argument parsing rebuilt from the captured 0.30.0 argparse actions.

Built from ``serve-args.json`` (dumped from the real parser), so names, aliases, types, choices and
nargs match the real CLI, and errors come out as argparse's own: usage on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

REFERENCE = Path(os.environ.get("VLLM_EMU_SERVE_ARGS")
                 or Path(__file__).resolve().parent / "reference" / "vllm-omni-0.30.0" / "serve-args.json")


def _json_value(text: str):
    return json.loads(text)


def _named(name: str, fn):
    """``fn`` under the real type's name: argparse quotes it ("invalid loads value: ...")."""
    def typed(text: str):
        return fn(text)
    typed.__name__ = name
    return typed


def _finite_nonneg(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative finite number")
    return value


def human_readable_int(text: str) -> int:
    """vLLM's human_readable_int: 25600, 25.6k, 1M, 1Gi ... (named as the real one: argparse quotes the name)."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    low = text.strip().lower()
    for suffix in sorted(units, key=len, reverse=True):
        if low.endswith(suffix):
            return int(float(low[: -len(suffix)]) * units[suffix])
    return int(low)


def human_readable_int_or_auto(text: str) -> int:
    """--max-model-len: "auto" or -1 means fit the model, else a human-readable integer."""
    return -1 if text.strip().lower() in ("auto", "-1") else human_readable_int(text)


_TYPES = {"int": int, "float": float, "str": str, "loads": _named("loads", _json_value),
          "_json_object": _named("_json_object", _json_value),
          "_nonneg_finite_float": _finite_nonneg, "human_readable_int": human_readable_int,
          "human_readable_int_or_auto": human_readable_int_or_auto}


@lru_cache(maxsize=1)
def actions() -> list[dict]:
    return json.loads(REFERENCE.read_text())


@lru_cache(maxsize=1)
def build_parser() -> argparse.ArgumentParser:
    """The serve parser, built once per process (about 600 arguments: 20 ms, paid by every emulated server and,
    in the contract tests, by every invocation checked). Parsing leaves it unchanged, so it is shared."""
    parser = argparse.ArgumentParser(prog="vllm serve", usage="vllm serve [model_tag] --omni [options]", add_help=True)
    parser.add_argument("model_tag", nargs="?", default=None)
    for action in actions():
        flags = action.get("flags") or []
        kind = action.get("action")
        if not flags or kind == "_HelpAction":
            continue
        common = {"dest": action["dest"], "default": action["default"] if action["default"] != "==SUPPRESS==" else None}
        if kind == "BooleanOptionalAction":
            positive = [f for f in flags if not f.startswith("--no-")]
            parser.add_argument(*positive, action=argparse.BooleanOptionalAction, **common)
        elif kind == "_StoreTrueAction":
            parser.add_argument(*flags, action="store_true", **common)
        elif kind == "_StoreFalseAction":
            parser.add_argument(*flags, action="store_false", **common)
        else:
            kwargs = dict(common)
            kwargs["type"] = _TYPES.get(action.get("type") or "str", str)
            if action.get("choices"):
                kwargs["choices"] = action["choices"]
            if action.get("nargs") not in (None, 0):
                kwargs["nargs"] = action["nargs"]
            if kind == "_AppendAction":
                kwargs["action"] = "append"
            parser.add_argument(*flags, **kwargs)
    return parser


class FlexibleError(ValueError):
    """What vLLM's FlexibleArgumentParser raises (a traceback and exit 1, not argparse's exit 2)."""


def flexible(args: list[str]) -> list[str]:
    """vLLM's FlexibleArgumentParser rewrites before argparse sees the serve arguments.

    ``--model M`` moves M to the positional slot; ``--served-model-name`` with no positional model is a
    ValueError; ``_`` becomes ``-`` in flag names (``--enforce_eager`` is ``--enforce-eager``); ``-O3`` is
    ``--optimization-level 3``.
    """
    for i, arg in enumerate(args):
        if re.match(r"^--model(=.+|$)", arg):
            model, rest = (args[i + 1], i + 2) if arg == "--model" and i + 1 < len(args) else \
                (arg.removeprefix("--model="), i + 1)
            args = [model, *args[:i], *args[rest:]]
            break
    if args and args[0].startswith("-") and not any(re.match(r"^--config(=.+|$)", a) for a in args) and \
            any(re.match(r"^--served[-_]model[-_]name(=.+|$)", a) for a in args):
        raise FlexibleError("`model` should be provided as the first positional argument when using `vllm serve`. "
                            "i.e. `vllm serve <model> --<arg> <value>`.")
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            head, dot, tail = key[2:].partition(".")
            out.append("--" + head.replace("_", "-") + dot + tail + eq + value)
        elif arg.startswith("-O") and arg != "-O":
            out += ["--optimization-level", arg[3:] if arg[2:3] == "=" else arg[2:]]
        elif arg == "-O" and i + 1 < len(args) and args[i + 1] in {"0", "1", "2", "3"}:
            out.append("--optimization-level")
        else:
            out.append(arg)
    return _dotted(out)


def _dotted(args: list[str]) -> list[str]:
    """``--json-arg.key value`` (``+`` appends list items) folded into ``--json-arg '{"key": value}'``, last."""
    folded: dict[str, dict] = {}
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        name, eq, value = arg.partition("=")
        if not (arg.startswith("-") and "." in name) or (not eq and i + 1 >= len(args)):
            out.append(arg)
            continue
        if not eq:
            value, skip = args[i + 1], True
        if name.endswith("+"):
            name, value = name[:-1], json.dumps(value.split(","))
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            try:
                parsed = human_readable_int(value)
            except ValueError:
                parsed = value
        key, *path = name.split(".")
        node = folded.setdefault(key, {})
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = node[path[-1]] + parsed if isinstance(parsed, list) and isinstance(
            node.get(path[-1]), list) else parsed
    for key, value in folded.items():
        out += [key, json.dumps(value)]
    return out


TOP_USAGE = "usage: vllm [-h] [-v] {serve,bench} ...\n"


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse ``serve MODEL ...`` (what follows the ``vllm`` executable's name) as the real CLI does.

    Unknown flags are reported by the top-level ``vllm`` parser (the real one parses the subcommand with
    ``parse_known_args``), every other argparse error by ``vllm serve``: usage on stderr, exit 2.
    """
    if argv[:1] in (["--version"], ["-v"]):
        print("0.30.0")
        raise SystemExit(0)
    for arg in argv:
        if arg.startswith("--help="):  # vLLM's `--help=all` / `--help=GROUP`: the captured real text where we have it
            captured = {"all": "serve-help-all.txt", "omniconfig": "serve-help-omniconfig.txt"}
            name = captured.get(arg.split("=", 1)[1].lower())
            if name and (REFERENCE.parent / name).is_file():
                print((REFERENCE.parent / name).read_text(), end="")
            else:
                build_parser().print_help()
            raise SystemExit(0)
    top = argparse.ArgumentParser(prog="vllm")
    top.add_argument("command", choices=["serve"])
    command, rest = top.parse_known_args(argv[:1])
    del command
    ns, unknown = build_parser().parse_known_args(flexible(argv[1:] + rest))
    if unknown:
        sys.stderr.write(TOP_USAGE + f"vllm: error: unrecognized arguments: {' '.join(unknown)}\n")
        raise SystemExit(2)
    return ns
