"""Fifty launch/stop cycles with crashes and hangs, and a SIGKILLed omnitune whose orphan is found and stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.conftest import FAKE_NVML_DIR
from tests.launch_helpers import ZIMAGE, emulator_processes, emulator_settings, world

pytestmark = [pytest.mark.anyio, pytest.mark.slow(seconds=60)]
REPO = Path(__file__).resolve().parents[1]


async def test_fifty_cycles_with_crashes_and_hangs_leave_no_process(emulator, tmp_path):
    settings = emulator_settings(emulator, tmp_path)
    outcomes = {"running": 0, "crashed": 0, "timeout": 0}
    async with Client(build_server(settings)) as client:
        for i in range(50):
            fault = {"startup_crash": True} if i % 10 == 3 else {"startup_hang": True} if i % 10 == 7 else {}
            emulator.write(world(1, faults=fault, cost={"startup_s": 0.05}))
            # 3 s: a healthy start takes ~0.4 s even on a loaded 2-core box; a hang is cut there
            result = await client.call_tool("launch_server", {"config": {"model": ZIMAGE, "health_timeout_s": 3}})
            if result.is_error:
                text = result.content[0].text
                # the emulator's crash is the real no-GPU log, classified no_gpu
                cause = "crashed" if "(no_gpu)" in text else "timeout"
                assert "(no_gpu)" in text or "(timeout)" in text, text
                outcomes[cause] += 1
            else:
                outcomes["running"] += 1
                sid = result.structured_content["server"]["id"]
                stopped = (await client.call_tool("stop_server", {"server_id": sid})).structured_content
                assert stopped["stopped"] is True
            assert emulator_processes(emulator) == [], f"cycle {i} left processes behind"
        servers = (await client.call_tool("list_servers", {})).structured_content["servers"]
    assert outcomes == {"running": 40, "crashed": 5, "timeout": 5}
    assert len(servers) == 50 and {s["state"] for s in servers} == {"stopped", "failed"}


async def test_a_sigkilled_omnitune_leaves_an_orphan_that_a_restart_lists_and_stops(emulator, tmp_path):
    emulator.write(world(2))
    settings = emulator_settings(emulator, tmp_path)
    driver = subprocess.Popen([sys.executable, str(REPO / "tests" / "orphan_driver.py"), settings.model_dump_json(),
                               "launch_server", json.dumps({"config": {"model": ZIMAGE}})], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": f"{FAKE_NVML_DIR}{os.pathsep}{REPO}"},
                              stdin=subprocess.DEVNULL)
    try:
        line = driver.stdout.readline()  # bounded: the driver launches (emulator startup 0.1 s) then prints
        server = json.loads(line)["server"]
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
    assert len(emulator_processes(emulator)) == 1  # the server outlived its omnitune
    async with Client(build_server(settings)) as client:
        listed = (await client.call_tool("list_servers", {})).structured_content["servers"]
        assert [(s["server"]["id"], s["state"]) for s in listed] == [(server["id"], "orphaned")]
        stopped = (await client.call_tool("stop_server", {"server_id": server["id"]})).structured_content
        listed = (await client.call_tool("list_servers", {})).structured_content["servers"]
    assert stopped["stopped"] is True and stopped["gpu_memory_released"] is True
    assert listed[0]["state"] == "stopped"
    assert emulator_processes(emulator) == []


async def test_omnitune_shutdown_stops_the_servers_it_started(emulator, tmp_path):
    emulator.write(world(1))
    settings = emulator_settings(emulator, tmp_path)
    async with Client(build_server(settings)) as client:
        await client.call_tool("launch_server", {"config": {"model": ZIMAGE}})
        assert len(emulator_processes(emulator)) == 1
    assert emulator_processes(emulator) == []


async def test_with_stop_on_exit_off_servers_outlive_omnitune(emulator, tmp_path):
    emulator.write(world(1))
    settings = emulator_settings(emulator, tmp_path, stop_on_exit=False)
    async with Client(build_server(settings)) as client:
        launched = await client.call_tool("launch_server", {"config": {"model": ZIMAGE}})
        sid = launched.structured_content["server"]["id"]
    assert len(emulator_processes(emulator)) == 1
    async with Client(build_server(settings)) as client:
        stopped = (await client.call_tool("stop_server", {"server_id": sid})).structured_content
    assert stopped["stopped"] is True and emulator_processes(emulator) == []
