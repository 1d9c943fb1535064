"""The real protocol path: omnitune as a stdio subprocess, driven by the SDK client and by the MCP Inspector CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import FAKE_NVML_DIR, H200, write_scenario

REPO = Path(__file__).resolve().parents[1]
INSPECTOR = "@modelcontextprotocol/inspector@0.15.0"  # the release Node 20 runs


def server_env(tmp_path: Path, gpus: list[dict]) -> dict[str, str]:
    """omnitune's environment with simulated GPUs: the fake pynvml comes first on the path."""
    scenario = write_scenario(tmp_path / "scenario.json", gpus=gpus, topology="nvswitch")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")}
    env.update(PYTHONPATH=os.pathsep.join([str(FAKE_NVML_DIR), str(REPO)]), VLLM_EMU_SCENARIO=str(scenario),
               OMNITUNE_WORKSPACE=str(tmp_path / "ws"))
    return env


@pytest.mark.anyio
async def test_stdio_subprocess_lists_tools_and_returns_structured_gpus(tmp_path):
    params = StdioServerParameters(command=sys.executable, args=[str(REPO / "server" / "main.py")],
                                   env=server_env(tmp_path, [H200, H200]), cwd=str(REPO))
    async with Client(params) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["detect_gpus"].output_schema["type"] == "object"
        result = await client.call_tool("detect_gpus", {})
    assert result.is_error is False
    report = result.structured_content
    assert report["gpu_count"] == 2 and report["links"][0]["nvlink"] is True
    assert json.loads(result.content[0].text) == report  # the text block mirrors the structure for older clients


def inspector(tmp_path: Path, *method_args: str) -> dict:
    npx = shutil.which("npx")
    assert npx, "Node.js/npx is required for the Inspector test (CI installs it)"
    env = server_env(tmp_path, [H200]) | {"npm_config_yes": "true"}
    proc = subprocess.run([npx, "-y", INSPECTOR, "--cli", sys.executable, str(REPO / "server" / "main.py"),
                           *method_args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_mcp_inspector_cli_lists_and_calls_detect_gpus(tmp_path):
    listed = inspector(tmp_path, "--method", "tools/list")
    assert "detect_gpus" in {t["name"] for t in listed["tools"]}
    called = inspector(tmp_path, "--method", "tools/call", "--tool-name", "detect_gpus")
    assert called["structuredContent"]["gpus"][0]["name"] == "NVIDIA H200"
    assert called.get("isError") in (None, False)


@pytest.mark.anyio
async def test_mcp_run_loads_server_main_py_by_path(tmp_path):
    """`mcp run server/main.py` (what `mcp dev` does too) finds the module-level server object."""
    mcp_cli = Path(sys.executable).parent / "mcp"
    params = StdioServerParameters(command=str(mcp_cli), args=["run", str(REPO / "server" / "main.py")],
                                   env=server_env(tmp_path, [H200]), cwd=str(tmp_path))
    async with Client(params) as client:
        result = await client.call_tool("detect_gpus", {})
    assert result.structured_content["gpus"][0]["compute_capability"] == "9.0"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.anyio
async def test_streamable_http_transport_serves_on_loopback(tmp_path):
    import anyio
    import httpx
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "omnitune.server.main", "--transport", "streamable-http",
                             "--port", str(port)],
                            cwd=REPO, env=server_env(tmp_path, [H200]), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        with anyio.fail_after(30):
            while True:  # bounded by fail_after: wait until the port answers
                try:
                    httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                    await anyio.sleep(0.1)
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("detect_gpus", {})
        assert "detect_gpus" in names and result.structured_content["gpu_count"] == 1
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
