"""Inputs that used to crash bare ("Internal server error", a traceback, "file name too long") give clear errors."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from omnitune.server.main import build_server
from omnitune.tools.settings import Settings
from tests.conftest import REPO

pytestmark = pytest.mark.anyio
SRC = REPO / ".venv" / "vllm-omni-src" / "0.30.0"


def omni(tmp_path) -> Settings:
    return Settings.model_validate({"workspace": tmp_path / "ws", "vllm_omni_source": SRC})


def text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def test_a_200000_character_model_name_is_a_clear_error_everywhere(tmp_path):
    name = "m" * 200_000
    async with Client(build_server(omni(tmp_path))) as client:
        results = [await client.call_tool("inspect_model_capabilities", {"model": name}),
                   await client.call_tool("plan", {"model": name}),
                   await client.call_tool("launch_server", {"config": {"model": name}, "dry_run": True}),
                   await client.call_tool("inspect_model_capabilities", {"model": "/" + "d" * 300 + "/x"})]
    for result in results:
        assert result.is_error is True
        assert ("at most 1024" in text(result) or "outside the allowed model roots" in text(result)), text(result)
        assert "File name too long" not in text(result)


@pytest.mark.parametrize(("uri", "expected"), [
    ("omnitune://support/" + "A" * 5000, "at most 1024"),
    ("omnitune://support/Two%20Words", "neither a folder"),
    ("omnitune://support/NoSuchPipeline", "is not in vllm-omni's diffusion registry"),
])
async def test_a_support_resource_for_a_bad_name_says_why(tmp_path, uri, expected):
    async with Client(build_server(omni(tmp_path))) as client:
        with pytest.raises(MCPError) as err:
            await client.read_resource(uri)
        good = await client.read_resource("omnitune://support/ZImagePipeline")
    assert expected in str(err.value) and "Error creating resource" not in str(err.value)
    assert err.value.error.code == -32602  # invalid params: the caller's to fix
    assert "ZImagePipeline" in getattr(good.contents[0], "text", "")


async def test_the_prompt_without_its_model_names_the_missing_argument(tmp_path):
    async with Client(build_server(omni(tmp_path))) as client:
        with pytest.raises(MCPError) as missing:
            await client.get_prompt("tune_diffusion_serving", {})
        with pytest.raises(MCPError) as unknown:
            await client.get_prompt("no_such_prompt", {"model": "x"})
        with pytest.raises(MCPError) as typo:
            await client.get_prompt("tune_diffusion_serving", {"model": "x", "allow_lossi": "yes"})
        ok = await client.get_prompt("tune_diffusion_serving", {"model": "Qwen/Qwen-Image"})
    assert "needs the argument(s) model" in str(missing.value) and missing.value.error.code == -32602
    assert "did you mean 'allow_lossy'" in str(typo.value) and typo.value.error.code == -32602
    assert "Unknown prompt" in str(unknown.value) and "Internal server error" not in str(unknown.value)
    assert "Qwen/Qwen-Image" in getattr(ok.messages[0].content, "text", "")


@pytest.mark.parametrize("table", ["jobs", "runs", "servers"])
def test_starting_on_a_database_with_a_dropped_table_is_a_clear_error(tmp_path, table):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")}
    env.update(PYTHONPATH=str(REPO), OMNITUNE_WORKSPACE=str(tmp_path / "ws"))
    argv = [sys.executable, "-m", "omnitune.server.main"]
    first = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr[-2000:]
    with sqlite3.connect(tmp_path / "ws" / "omnitune.db") as conn:
        conn.execute(f"DROP TABLE {table}")
    second = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert f"lacks the table(s) {table}" in second.stderr and "Traceback" not in second.stderr


def test_raw_json_rpc_over_stdio_gets_clear_errors_for_a_missing_prompt_argument_and_an_unknown_tool_argument(
        tmp_path):
    """What a client without the SDK sees: the JSON-RPC error of prompts/get names the argument, and a typo in a
    tool argument is an isError result at once (job_wait(timeout=1) used to wait its default 60 s)."""
    import json
    import time
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")}
    env.update(PYTHONPATH=str(REPO), OMNITUNE_WORKSPACE=str(tmp_path / "ws"))
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "prompts/get", "params": {"name": "tune_diffusion_serving"}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "job_wait", "arguments": {"job_id": "job-x", "timeout": 1}}},
    ]
    import selectors
    proc = subprocess.Popen([sys.executable, "-m", "omnitune.server.main"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answers: dict[int, dict] = {}
    try:
        assert proc.stdin and proc.stdout
        proc.stdin.write("".join(json.dumps(m) + "\n" for m in messages))
        proc.stdin.flush()
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        # Starting omnitune may take long on a busy machine: the clock for the typo'd call starts once the server
        # has answered initialize. From there, well under job_wait's 60 s default.
        # Read the pipe itself: answers that arrive together in one chunk would otherwise wait in readline's
        # buffer where select cannot see them.
        deadline, pending, fd = time.monotonic() + 120, b"", proc.stdout.fileno()
        while {2, 3} - set(answers) and time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for message in map(json.loads, filter(None, lines)):
                    if "id" in message:
                        answers[message["id"]] = message
                        if message["id"] == 1:
                            deadline = time.monotonic() + 40
    finally:
        _, stderr = proc.communicate(input="", timeout=30)  # closing stdin ends the stdio server
    assert {2, 3} <= set(answers), (answers, stderr[-2000:])
    assert answers[2]["error"]["code"] == -32602 and "needs the argument(s) model" in answers[2]["error"]["message"]
    result = answers[3]["result"]
    assert result["isError"] is True and "did you mean 'timeout_s'" in result["content"][0]["text"]
    assert "Traceback" not in stderr
