"""launch_server / stop_server / list_servers / server_logs against the emulator, through the MCP client."""

from __future__ import annotations

import json
import os
import socket
import sys

import psutil
import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.launch_helpers import QWEN, ZIMAGE, emulator_processes, emulator_settings, world

pytestmark = pytest.mark.anyio


def zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def call(client, tool, **args):
    return await client.call_tool(tool, args)


async def test_launch_waits_for_health_records_memory_and_stop_leaves_nothing(emulator, tmp_path):
    emulator.write(world(1))
    settings = emulator_settings(emulator, tmp_path)
    progress = []

    async def on_progress(p, t, m):
        progress.append(m)

    async with Client(build_server(settings)) as client:
        result = await client.call_tool("launch_server", {"config": {"model": ZIMAGE, "enforce_eager": True}},
                                        progress_callback=on_progress)
        assert result.is_error is False, result.content
        server = result.structured_content["server"]
        assert server["status"] == "running" and server["gpus"] == [0]
        assert 0 < server["startup_s"] < 10
        assert server["memory_after_load"]["0"] > 20000  # the emulator holds the model's weights on GPU 0
        assert result.structured_content["argv"][1:4] == ["serve", ZIMAGE, "--omni"]
        assert "--enforce-eager" in result.structured_content["argv"]
        assert len(emulator_processes(emulator)) == 1
        listed = (await call(client, "list_servers")).structured_content["servers"]
        assert [(s["server"]["id"], s["state"]) for s in listed] == [(server["id"], "running")]
        logs = (await call(client, "server_logs", server_id=server["id"], lines=20)).structured_content
        assert "Application startup complete" in logs["text"]
        stopped = (await call(client, "stop_server", server_id=server["id"])).structured_content
        # reaped at once, not left a zombie of this (still running) omnitune until it exits
        assert not zombie(server["pid"])
    assert stopped["stopped"] is True and stopped["forced"] is False and stopped["leftover_pids"] == []
    assert stopped["gpu_memory_released"] is True and stopped["gpu_memory_mib"] == {"0": 0}
    assert emulator_processes(emulator) == []


async def test_dry_run_returns_the_exact_argv_and_environment_and_starts_nothing(emulator, tmp_path):
    emulator.write(world(4))
    config = {"model": QWEN, "usp": 2, "cfg_parallel_size": 2, "quantization": "fp8", "gpus": [2, 3, 0, 1],
              "port": 18555, "cache_backend": "tea_cache", "cache_config": {"rel_l1_thresh": 0.2}}
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        out = (await call(client, "launch_server", config=config, dry_run=True)).structured_content
    assert out["argv"] == [str(emulator.shim), "serve", QWEN, "--omni", "--host", "127.0.0.1", "--port", "18555",
                           "--usp", "2", "--cfg-parallel-size", "2", "--quantization", "fp8",
                           "--cache-backend", "tea_cache", "--cache-config", '{"rel_l1_thresh":0.2}']
    assert out["env"] == {"CUDA_VISIBLE_DEVICES": "2,3,0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "HF_HUB_OFFLINE": "1"}
    assert out["server"] is None and emulator_processes(emulator) == []


async def test_every_stopped_server_exits_the_registry_as_stopped_and_restart_sees_it(emulator, tmp_path):
    emulator.write(world(1))
    settings = emulator_settings(emulator, tmp_path)
    async with Client(build_server(settings)) as client:
        sid = (await call(client, "launch_server", config={"model": ZIMAGE})).structured_content["server"]["id"]
        await call(client, "stop_server", server_id=sid)
    async with Client(build_server(settings)) as client:
        listed = (await call(client, "list_servers")).structured_content["servers"]
    assert [(s["server"]["id"], s["state"]) for s in listed] == [(sid, "stopped")]


@pytest.mark.parametrize("fault, cause, needle", [
    # the emulator's crash is the real 0.30.0 no-GPU log: its cause stands 61 lines above an empty last line
    ({"startup_crash": True}, "no_gpu", "NotImplementedError"),
    ({}, "out_of_memory", "CUDA out of memory"),
])
async def test_a_server_that_dies_at_startup_fails_fast_with_its_cause_and_log_tail(emulator, tmp_path, fault, cause,
                                                                                     needle):
    scenario = world(1, faults=fault)
    if cause == "out_of_memory":
        scenario["gpus"] = [{"name": "NVIDIA L4", "memory_mib": 23034, "compute_capability": [8, 9]}]
        scenario["model"] = {"dit_gib": 40.0}
    emulator.write(scenario)
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        result = await call(client, "launch_server", config={"model": ZIMAGE, "health_timeout_s": 60})
        text = result.content[0].text
        listed = (await call(client, "list_servers")).structured_content["servers"]
    assert result.is_error is True
    assert f"({cause})" in text and needle in text and "Fix:" in text and "--- log tail ---" in text
    assert listed[0]["state"] == "failed" and listed[0]["server"]["cause"] == cause
    assert emulator_processes(emulator) == []


async def test_a_server_that_never_becomes_healthy_times_out_and_its_group_is_killed(emulator, tmp_path):
    emulator.write(world(2, faults={"startup_hang": True}))
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        result = await call(client, "launch_server", config={"model": QWEN, "usp": 2, "health_timeout_s": 1})
    assert result.is_error is True and "(timeout)" in result.content[0].text
    assert emulator_processes(emulator) == []  # the leader and its worker process are gone


async def test_a_server_that_ignores_sigterm_is_killed_after_the_grace_period(emulator, tmp_path):
    emulator.write(world(1, faults={"ignore_sigterm": True}))
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        sid = (await call(client, "launch_server", config={"model": ZIMAGE})).structured_content["server"]["id"]
        stopped = (await call(client, "stop_server", server_id=sid, grace_s=0.5)).structured_content
    assert stopped["stopped"] is True and stopped["forced"] is True
    assert emulator_processes(emulator) == []


async def test_a_port_already_in_use_is_refused_before_anything_starts(emulator, tmp_path):
    emulator.write(world(1))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
            result = await call(client, "launch_server", config={"model": ZIMAGE, "port": port})
    assert result.is_error is True and f"port {port}" in result.content[0].text and "already in use" in \
        result.content[0].text
    assert emulator_processes(emulator) == []


async def test_the_emulator_refusing_a_port_is_classified_port_in_use(emulator, tmp_path, monkeypatch):
    """If the port is taken between the check and the bind, the log is classified, not guessed."""
    from omnitune.tools.launch import process
    emulator.write(world(1))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setattr(process, "port_in_use", lambda host, p: False)
        async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
            result = await call(client, "launch_server", config={"model": ZIMAGE, "port": port})
    assert result.is_error is True and "(port_in_use)" in result.content[0].text


async def test_read_only_mode_refuses_launch_and_stop(emulator, tmp_path):
    emulator.write(world(1))
    async with Client(build_server(emulator_settings(emulator, tmp_path, read_only=True))) as client:
        launch = await call(client, "launch_server", config={"model": ZIMAGE})
        stop = await call(client, "stop_server", server_id="srv-x")
        dry = await call(client, "launch_server", config={"model": ZIMAGE}, dry_run=True)
    assert launch.is_error and "read-only mode" in launch.content[0].text
    assert stop.is_error and "read-only mode" in stop.content[0].text
    assert dry.is_error is False  # a dry run changes nothing


async def test_launch_and_stop_are_annotated_destructive(emulator, tmp_path):
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert tools["launch_server"].annotations.destructive_hint is True
    assert tools["stop_server"].annotations.destructive_hint is True
    assert tools["list_servers"].annotations.read_only_hint is True
    assert tools["launch_server"].output_schema is not None
    assert json.dumps(tools["launch_server"].input_schema).count("health_timeout_s") == 1


def test_a_server_whose_launcher_dies_before_recording_it_never_starts(tmp_path):
    """The gate: a server execs only after its pid is in the store, so a crash in between leaves nothing running."""
    from omnitune.tools.launch import process
    marker = tmp_path / "started"
    argv = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x')"]
    held, _ = process.spawn(argv, dict(os.environ), tmp_path / "held.log")
    held.stdin.close()  # what the launcher's death does to the pipe
    assert held.wait(timeout=10) == 70 and not marker.exists()
    released, release = process.spawn(argv, dict(os.environ), tmp_path / "released.log")
    release()
    assert released.wait(timeout=10) == 0 and marker.read_text() == "x"
