"""Shared by the fault tests: omnitune as a real stdio subprocess on a workspace, and bounded polling."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp import StdioServerParameters

from tests.conftest import FAKE_NVML_DIR, FIXTURE_MODELS

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / ".venv" / "vllm-omni-src" / "0.30.0"


def stdio_params(emulator, workspace: Path, *flags: str) -> StdioServerParameters:
    """`python server/main.py` (the omnitune command's entry) on ``workspace``, launching the emulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")}
    env.update(emulator.env)
    env.update(PYTHONPATH=os.pathsep.join([str(FAKE_NVML_DIR), str(REPO)]), OMNITUNE_WORKSPACE=str(workspace),
               OMNITUNE_VLLM=str(emulator.shim), OMNITUNE_MODEL_ROOTS=str(FIXTURE_MODELS),
               OMNITUNE_VLLM_OMNI_SOURCE=str(SRC))
    return StdioServerParameters(command=sys.executable, args=[str(REPO / "server" / "main.py"), *flags], env=env,
                                 cwd=str(REPO))


def omnitune_argv(workspace: Path) -> list[str]:
    return [sys.executable, str(REPO / "server" / "main.py"), "--workspace", str(workspace)]


def omnitune_env() -> dict[str, str]:
    """This checkout's omnitune first on the path (not whichever one the venv has installed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")}
    return {**env, "PYTHONPATH": os.pathsep.join([str(FAKE_NVML_DIR), str(REPO)])}


def db_rows(db: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``predicate`` until it is truthy (bounded); its value, or AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


async def auntil(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """``until`` for async predicates (tool calls)."""
    import anyio
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(every)


def driver(settings, tool: str, arguments: dict) -> Any:
    """tests/orphan_driver.py: an omnitune that calls one tool, prints its result, then waits to be killed."""
    import json
    import subprocess
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "orphan_driver.py"), settings.model_dump_json(),
                             tool, json.dumps(arguments)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": f"{FAKE_NVML_DIR}{os.pathsep}{REPO}"})
