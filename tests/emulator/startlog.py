"""Startup logs as long and noisy as the real ones, built from real 0.30.0 logs captured on a machine without GPU.

``reference/vllm-omni-0.30.0/logs/`` holds real `vllm serve MODEL --omni` logs (ANSI-coloured ``(APIServer pid=N)``
prefixes, carriage returns, four copies of the traceback). The emulator prints the real head at start and, on a
refusal, the real tail with the cause swapped in: an orchestrator-side failure ends in
``RuntimeError: Orchestrator initialization failed: <cause>`` with the cause itself ~60 lines up, as real; a
failure in the API server process (config projection, HSDP) ends with the exception. So omnitune's log
classification is tested against what the real engine writes.
"""

from __future__ import annotations

import os
import re
import time
from functools import lru_cache
from pathlib import Path

LOGS = Path(__file__).resolve().parent / "reference" / "vllm-omni-0.30.0" / "logs"
ORCHESTRATOR = "no-gpu.log"      # the real engine failing in stage init (set_device raises NotImplementedError)
MAIN = "hsdp-standalone.log"      # the real engine refusing --use-hsdp in the API server process
CAPTURED_MODEL = "/models/tiny-zimage"
CAPTURED_PIPELINE = "ZImagePipeline"
STAMP = re.compile(r"\d\d-\d\d \d\d:\d\d:\d\d")
HEAD_END = "[OmniEngine] Initializing with model"


@lru_cache(maxsize=4)
def _lines(name: str) -> tuple[str, ...]:
    return tuple((LOGS / name).read_text(errors="replace").split("\n"))


def _fill(lines, model: str, pipeline: str = CAPTURED_PIPELINE) -> str:
    stamp = time.strftime("%m-%d %H:%M:%S")
    text = "\n".join(lines)
    text = text.replace(CAPTURED_MODEL, model).replace(CAPTURED_PIPELINE, pipeline)
    text = re.sub(r"pid=\d+\)", f"pid={os.getpid()})", text)
    glog = time.strftime("W%m%d %H:%M:%S.000000 ") + str(os.getpid())  # torch's C++ warning prefix
    text = re.sub(r"W\d{4} \d\d:\d\d:\d\d\.\d{6} \d+", glog, text)
    return STAMP.sub(stamp, text)


def _split(name: str) -> int:
    return next(i for i, line in enumerate(_lines(name)) if HEAD_END in line) + 1


def head(model: str, non_default: dict) -> str:
    """What the real server prints before it starts the engine (imports, logo, version, non-default args)."""
    lines = list(_lines(ORCHESTRATOR)[: _split(ORCHESTRATOR)])
    lines = [re.sub(r"non-default args: \{.*\}", f"non-default args: {non_default}", line) for line in lines]
    return _fill(lines, model) + "\n"


def _exception_lines(prefix: str, error: str, cr: str) -> list[str]:
    return [prefix + part + cr for part in error.split("\n")]


# Real orchestrator-side failure logs: (file, the cause's line as captured, frame lines the swap leaves out).
CONFIG_CAUSE = ("ValueError: diffusion_compile_granularity='full' is incompatible with sequence parallelism; use "
                "'regional' compilation instead")
TEMPLATES = {"load": (ORCHESTRATOR, "NotImplementedError", ("set_device", "raise NotImplementedError")),
             "config": ("compile-full-usp2.log", CONFIG_CAUSE, ())}
FAILED = "RuntimeError: Orchestrator initialization failed: "


def orchestrator_failure(model: str, pipeline: str, error: str | None, stage: str = "load") -> str:
    """The real tail after the head for a stage-init failure: ``stage`` "load" (the worker failed: the no-GPU log)
    or "config" (OmniDiffusionConfig or the device count refused: the compile-full log). ``error``: "Type: message"
    of the cause (None: the captured cause as it is)."""
    name, cause, leave_out = TEMPLATES[stage]
    out = []
    for line in _lines(name)[_split(name):]:
        body = line.rstrip("\r")
        cr = "\r" if line.endswith("\r") else ""
        if error is None:
            out.append(line)
        elif any(body.endswith(x) or f"in {x}" in body or f".{x}(" in body for x in leave_out):
            continue
        elif body.endswith(FAILED + cause.split(": ", 1)[-1]) or body.endswith(FAILED):
            message = error.split(": ", 1)[1] if ": " in error.split("\n")[0] else error
            out += _exception_lines(body[: body.index(FAILED)], FAILED + message, cr)
        elif body.endswith(cause) and body[: -len(cause)][-2:] in ("", "] ", "m "):
            out += _exception_lines(body[: -len(cause)], error, cr)  # the cause line, in each of its copies
        else:
            out.append(line)
    return _fill(out, model, pipeline)


def main_failure(model: str, error: str) -> str:
    """The real tail after the head for a refusal raised in the API server process: the traceback through
    ``vllm serve`` ending with the exception (``error``: "Type: message", possibly several lines)."""
    lines = list(_lines(MAIN)[_split(MAIN):])
    while lines and not lines[-1].strip():
        lines.pop()
    prefixes = [re.match(r"^(.*?pid=\d+\)(?:\x1b\[0;0m)? )?(.*)$", line) for line in lines]
    start = max(i for i, m in enumerate(prefixes) if m and m.group(2)[:1].strip())  # the exception's first line
    found = prefixes[start]
    prefix = (found.group(1) or "") if found else ""
    if error.startswith("ValidationError:"):  # as Python prints pydantic's exception class
        error = "pydantic_core._pydantic_core." + error
    return _fill(lines[:start] + _exception_lines(prefix, error, ""), model) + "\n"
