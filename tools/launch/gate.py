"""The engine's word before any spawn: the real preflight's answer turned into errors, warnings and a record.

Waits are bounded so a launch never spends more than about a minute deciding: the flag catalogue gets
``CATALOGUE_WAIT_S``, the preflight ``PREFLIGHT_WAIT_S``; a cold serving environment (importing vLLM takes
35-100 s) falls back to omnitune's rules for this launch and keeps warming for the next.
"""

from __future__ import annotations

import re
from pathlib import Path

from omnitune.tools.capabilities.flags import Catalogue, for_serving
from omnitune.tools.launch.validate import ValidationResult
from omnitune.tools.serving import preflight
from omnitune.tools.settings import Settings

CATALOGUE_WAIT_S = 10.0
PREFLIGHT_WAIT_S = 40.0
DEVICES = re.compile(r"requires (\d+) device\(s\).*but (\d+) device\(s\) are available")


def python_of(settings: Settings) -> Path | None:
    return preflight.serving_python(settings.serving_python, settings.vllm)


def warm(settings: Settings) -> None:
    """Start importing vLLM in the serving Python now, so the first launch finds the preflight ready."""
    preflight.warm(python_of(settings))


def catalogue(settings: Settings, cache_dir: Path) -> Catalogue:
    return for_serving(python_of(settings), cache_dir, CATALOGUE_WAIT_S)


def explain(answer: dict) -> tuple[str, str]:
    """(problem, fix) for an engine refusal, in the engine's own words."""
    error = (answer.get("error") or "").strip()
    first = error.splitlines()[0] if error else "refused"
    if answer.get("stage") == "parse":
        return (f"vllm's own parser refuses the command (exit 2): {error}",
                "correct or drop the flag it names; omnitune://serve-flags lists each flag's type and choices")
    if answer.get("stage") == "validate":
        return (f"vllm-omni refuses the command before starting: {error}", "change the setting the message names")
    m = DEVICES.search(error)
    if m:
        return (f"vllm-omni's parallel config needs {m.group(1)} GPU(s) but the launch gives it {m.group(2)} "
                f"({first})", f"give {m.group(1)} GPUs (gpus) or lower the parallel degrees and flags that add to it")
    detail = "\n".join(ln for ln in error.splitlines()[:4] if "errors.pydantic.dev" not in ln)
    where = f" at {answer['where']}" if answer.get("where") else ""
    return (f"vllm-omni's config build refuses the command{where}: {detail}",
            "change or drop the setting the message names (the same error would end the server at start)")


def engine_check(settings: Settings, argv: list[str], devices: str, result: ValidationResult) -> dict:
    """Run the real preflight on ``argv``; its refusal becomes the launch's refusal. Returns the record."""
    answer = preflight.check(python_of(settings), argv, devices, PREFLIGHT_WAIT_S)
    record = {k: v for k, v in answer.items() if k in ("source", "ok", "stage", "error", "where", "reason", "python",
                                                       "elapsed_s", "waited_s", "cached")}
    if answer["source"] == "rules":
        result.warnings.append(f"preflight: {answer['reason']}")
        return record
    if not answer["ok"]:
        problem, fix = explain(answer)
        result.error(problem, fix)
        return record
    stages = (answer.get("config") or {}).get("diffusion") or []
    if stages:
        record["world_size"] = stages[0].get("world_size")
        used = len([d for d in devices.split(",") if d])
        if isinstance(record["world_size"], int) and record["world_size"] < used:
            result.warnings.append(f"vllm-omni uses {record['world_size']} of the {used} GPUs given")
    return record
