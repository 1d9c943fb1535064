"""``extra_flags`` checked against the ONE flag catalogue: names, values, flags typed fields own, unsafe flags.

Each rule mirrors what the real parser does with the element omnitune will put in argv (``--name=value``,
a bare ``--name`` for true, ``--no-name`` for false on a BooleanOptionalAction), so a flag that passes here
is one the real parser reads as meant. The engine preflight, when it can answer, has the last word.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from omnitune.tools.capabilities.flags import Catalogue, Flag

# Destinations typed ServeConfig fields own: any spelling (--usp, --ulysses-degree, --no-enforce-eager, -tp) is refused.
MANAGED_DESTS = {
    "ulysses_degree": "usp", "ring_degree": "ring", "cfg_parallel_size": "cfg_parallel_size",
    "tensor_parallel_size": "tensor_parallel_size", "vae_patch_parallel_size": "vae_patch_parallel_size",
    "use_hsdp": "use_hsdp", "enable_expert_parallel": "enable_expert_parallel", "enforce_eager": "enforce_eager",
    "enable_cpu_offload": "enable_cpu_offload", "enable_layerwise_offload": "enable_layerwise_offload",
    "vae_use_slicing": "vae_use_slicing", "vae_use_tiling": "vae_use_tiling", "quantization": "quantization",
    "cache_backend": "cache_backend", "cache_config": "cache_config", "flow_shift": "flow_shift",
    "boundary_ratio": "boundary_ratio", "port": "port", "host": "serve_host setting", "served_model_name":
    "served_model_name", "omni": "(always set)", "model": "model", "help": "(not a serving flag)",
}
# Never through extra_flags: omnitune could not watch, reach or account for the server.
FORBIDDEN = {
    "uds": "the server would listen on a unix socket, so /health on the port never answers (the launch waits out "
           "health_timeout_s)",
    "headless": "a headless server has no API server, so /health never answers",
    "ssl_keyfile": "omnitune checks health and benchmarks over plain HTTP on 127.0.0.1",
    "ssl_certfile": "omnitune checks health and benchmarks over plain HTTP on 127.0.0.1",
    "config": "a YAML file of more flags would bypass every check of the typed fields",
    "deploy_config": "a deploy YAML sets parallelism and devices behind omnitune's GPU accounting",
    "strategy_config": "a strategy YAML sets parallelism behind omnitune's GPU accounting",
    "stage_overrides": "stage overrides set parallelism and devices behind omnitune's GPU accounting",
    "stage_id": "distributed stages run across hosts omnitune does not manage",
    "omni_master_address": "distributed stages run across hosts omnitune does not manage",
    "omni_master_port": "distributed stages run across hosts omnitune does not manage",
    "omni_replica_address": "distributed stages run across hosts omnitune does not manage",
    "api_server_count": "extra API server processes are not accounted for (and diffusion models refuse it)",
}
# Allowed only when named in ServeConfig.allow_unsafe_flags (the user accepts the risk explicitly).
UNSAFE = {
    "trust_remote_code": "runs Python code shipped with the model folder or hub repo",
    "worker_cls": "imports and runs an arbitrary worker class",
    "worker_extension_cls": "imports and runs an arbitrary worker extension class",
    "master_addr": "distributed workers would bind or connect beyond this host",
    "master_port": "distributed workers would bind or connect beyond this host",
    "data_parallel_address": "data-parallel workers would bind or connect beyond this host",
    "data_parallel_rpc_port": "data-parallel workers would bind or connect beyond this host",
    "download_dir": "weights would be downloaded or written outside omnitune's workspace and model roots",
    "allowed_local_media_path": "requests could read local files from that folder",
    "hf_token": "a token in argv is visible to every user of the machine (ps)",
}
HUMAN_INT = re.compile(r"^-?\d+(\.\d+)?[kKmMgGtT]?$")


@dataclass
class FlagIssue:
    problem: str
    fix: str
    warning: bool = False


def _negative(flag: Flag, name: str) -> bool:
    return flag.negatable and name.startswith("--no-") and name != flag.names[0]


def check_value(flag: Flag, name: str, value: str | int | float | bool) -> FlagIssue | None:
    """What the real parser would say about ``name`` with ``value`` as omnitune renders it (None: fine)."""
    if flag.switch:
        if value is True:
            return None
        if value is False:
            if flag.negatable and not _negative(flag, name):
                return None  # rendered as --no-NAME
            return FlagIssue(f"{name} is a switch: false cannot be expressed with it",
                             "leave it out (false is its default)" if not _negative(flag, name)
                             else f"use {flag.names[0]}: false, or leave it out")
        return FlagIssue(f"{name} is a switch and takes no value ({name}={value} fails in vllm's parser)",
                         f"use {name}: true to add it" + (f", or {name}: false for --no-{name[2:]}"
                                                          if flag.negatable and not _negative(flag, name) else ""))
    if isinstance(value, bool):
        return FlagIssue(f"{name} needs a value ({flag.base_type or 'a string'}), not {str(value).lower()}",
                         f"give {name} a value" + (f": one of {list(flag.choices)}" if flag.choices else ""))
    text = str(value)
    if text.strip() == "":
        return FlagIssue(f"{name} has an empty value", f"give {name} a value or drop it")
    if flag.choices is not None and text not in flag.choices:
        close = difflib.get_close_matches(text, list(flag.choices), n=1)
        return FlagIssue(f"{name}={text} is not one of its choices {list(flag.choices)}",
                         f"use {close[0]!r}" if close else f"use one of {list(flag.choices)}")
    optional = bool(flag.type and flag.type.startswith("optional:")) and text in ("None",)
    return None if optional else _type_issue(flag, name, text)


def _type_issue(flag: Flag, name: str, text: str) -> FlagIssue | None:
    kind = flag.base_type
    try:
        if kind == "int":
            int(text)
        elif kind in ("float", "_nonneg_finite_float"):
            number = float(text)
            if kind == "_nonneg_finite_float" and (not math.isfinite(number) or number < 0):
                raise ValueError("must be a finite non-negative number")
        elif kind in ("human_readable_int", "human_readable_int_or_auto"):
            if not (HUMAN_INT.match(text.strip()) or (kind.endswith("auto") and text.strip() == "auto")):
                raise ValueError("not an integer like 4096, 4k or 2M")
        elif flag.json or (kind == "union_dict_and_str" and text.lstrip().startswith("{")):
            parsed = json.loads(text)
            if kind in ("parse_dataclass", "_json_object", "_parse_stage_overrides") and not isinstance(parsed, dict):
                raise ValueError("must be a JSON object")
    except ValueError as exc:
        return FlagIssue(f"{name}={text} is not a valid {kind} ({exc})",
                         f"give {name} a {'JSON object' if flag.json else kind} value")
    return None


def _path_inside(value: str, roots: list[Path]) -> bool:
    path = Path(value).expanduser().resolve()
    return any(path == r or r in path.parents for r in roots) and path != Path("/")


def check_extra_flags(extra: dict, catalogue: Catalogue, allow_unsafe: list[str],
                      roots: list[Path]) -> list[FlagIssue]:
    """Every problem with ``extra``: unknown names, wrong values, managed/forbidden/unsafe flags."""
    issues: list[FlagIssue] = []
    for name, value in extra.items():
        flag = catalogue.flags.get(name)
        if flag is None:
            close = difflib.get_close_matches(name, sorted(catalogue.names()), n=3)
            issues.append(FlagIssue(f"{name} is not a flag of the installed vLLM-Omni ({catalogue.how})",
                                    f"did you mean {', '.join(close)}?" if close else "drop it"))
            continue
        if flag.dest in MANAGED_DESTS:
            field = MANAGED_DESTS[flag.dest]
            issues.append(FlagIssue(f"extra flag {name} duplicates a typed field ({field}): it would override it",
                                    f"set the typed field {field} instead" if not field.startswith("(") else "drop it"))
            continue
        if flag.dest in FORBIDDEN:
            issues.append(FlagIssue(f"extra flag {name} is not allowed: {FORBIDDEN[flag.dest]}", "drop it"))
            continue
        if flag.dest in UNSAFE and name not in allow_unsafe and not (
                flag.dest == "allowed_local_media_path" and isinstance(value, str) and _path_inside(value, roots)):
            issues.append(FlagIssue(f"extra flag {name} is unsafe: {UNSAFE[flag.dest]}",
                                    f"drop it, or accept the risk with allow_unsafe_flags: [{name!r}]"))
            continue
        problem = check_value(flag, name, value)
        if problem:
            issues.append(problem)
    return issues + cli_rules(extra)


def cli_rules(extra: dict) -> list[FlagIssue]:
    """Cross-flag rules of vLLM-Omni 0.30.0's ``OmniServeCommand.validate`` (entrypoints/cli/serve.py)."""
    issues = []
    if extra.get("--lora-backend") == "distill" and not extra.get("--lora-path"):
        issues.append(FlagIssue("--lora-backend distill requires --lora-path (vLLM-Omni refuses it at start)",
                                "add --lora-path or drop --lora-backend"))
    for name in ("--omni-heartbeat-timeout", "--omni-dp-size-local"):
        try:
            number = float(str(extra[name])) if name in extra and not isinstance(extra[name], bool) else None
        except ValueError:
            number = None
        if number is not None and number <= 0 if name.endswith("timeout") else number not in (None, 1):
            issues.append(FlagIssue(f"{name}={extra[name]} is refused by vLLM-Omni here ("
                                    + ("must be > 0)" if name.endswith("timeout") else "!= 1 requires --stage-id, "
                                       "which omnitune does not run)"), f"drop {name}"))
    return issues


def render(name: str, value: str | int | float | bool) -> str:
    """One argv element: a bare switch, its --no- form for false, or --name=value (never two elements)."""
    if value is True:
        return name
    if value is False:
        return "--no-" + name[2:]
    return f"{name}={value}"
