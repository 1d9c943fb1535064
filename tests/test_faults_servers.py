"""Servers that misbehave and servers that compete: a frozen server (SIGSTOP) is noticed, a multi-GPU server whose
leader died is ended as a group, and omnitune's own servers never share a GPU they cannot share."""

from __future__ import annotations

import os
import signal
import time

import anyio
import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.faults_helpers import SRC, db_rows, until
from tests.launch_helpers import ZIMAGE, emulator_processes, emulator_settings, world
from tests.test_benchmark import known_latency, launch
from tests.test_tune import IMAGE

pytestmark = [pytest.mark.anyio, pytest.mark.slow(seconds=40)]
WORKLOAD = {"sizes": ["16x16"], "num_inference_steps": 10, "warmup": 0}


async def servers(client) -> dict:
    listed = (await client.call_tool("list_servers", {})).structured_content["servers"]
    return {s["server"]["id"]: s for s in listed}


async def test_a_frozen_server_is_listed_unresponsive_and_a_benchmark_on_it_fails_fast(emulator, tmp_path):
    emulator.write(world(1, cost=known_latency(0.05)))
    settings = emulator_settings(emulator, tmp_path)
    async with Client(build_server(settings)) as client:
        sid = await launch(client, enforce_eager=True)
        pid = (await servers(client))[sid]["server"]["pid"]
        job = (await client.call_tool("benchmark_start", {"server_id": sid, "workload": {
            **WORKLOAD, "measured": 200, "timeout_s": 3600}})).structured_content
        until(lambda: db_rows(settings.db_path, "SELECT count(*) n FROM requests")[0]["n"] >= 2, 60, "two requests")
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            final = (await client.call_tool("job_wait", {"job_id": job["id"], "timeout_s": 60})).structured_content
            ended_in = time.monotonic() - t0
            listed = (await servers(client))[sid]
            again = await client.call_tool("benchmark", {"server_id": sid, "workload": {**WORKLOAD, "measured": 1}})
        finally:
            os.kill(pid, signal.SIGCONT)
        stopped = (await client.call_tool("stop_server", {"server_id": sid})).structured_content
    # the per-request timeout is an hour: only the liveness check ends the run, within seconds
    assert final["status"] == "failed" and ended_in < 20, (final, ended_in)
    assert "unresponsive" in final["error"] and "stopped (SIGSTOP" in final["error"]
    summary = final["result"]["summary"]
    unanswered = db_rows(settings.db_path, "SELECT idx, error FROM requests WHERE run_id = ? AND ok = 0",
                         summary["run_id"])
    assert summary["requests_ok"] >= 2 and len(unanswered) == 1 and unanswered[0]["error"].startswith("unanswered")
    assert listed["state"] == "unresponsive" and "stopped" in listed["problem"]
    assert again.is_error and "unresponsive" in again.content[0].text
    assert stopped["stopped"] is True and emulator_processes(emulator) == []


async def test_a_server_silent_on_health_is_noticed_by_the_probe_when_omnitune_does_not_know_its_process(
        emulator, tmp_path):
    emulator.write(world(1, cost=known_latency(0.05)))
    settings = emulator_settings(emulator, tmp_path)
    async with Client(build_server(settings)) as client:
        sid = await launch(client, enforce_eager=True)
        server = (await servers(client))[sid]["server"]
        job = (await client.call_tool("benchmark_start", {"base_url": f"http://127.0.0.1:{server['port']}",
                                                          "workload": {**WORKLOAD, "measured": 400,
                                                                       "timeout_s": 3600}})).structured_content
        until(lambda: db_rows(settings.db_path, "SELECT count(*) n FROM requests")[0]["n"] >= 2, 60, "two requests")
        os.kill(server["pid"], signal.SIGSTOP)
        try:
            final = (await client.call_tool("job_wait", {"job_id": job["id"], "timeout_s": 90})).structured_content
        finally:
            os.kill(server["pid"], signal.SIGCONT)
        await client.call_tool("stop_server", {"server_id": sid})
    assert final["status"] == "failed", final
    assert "/health unanswered 3 times in a row" in final["error"]
    assert emulator_processes(emulator) == []


async def test_a_multi_gpu_server_whose_leader_died_is_not_running_and_its_workers_are_stopped(emulator, tmp_path):
    emulator.write(world(2))
    settings = emulator_settings(emulator, tmp_path)
    async with Client(build_server(settings)) as client:
        sid = await launch(client, usp=2, gpus=[0, 1])
        view = (await servers(client))[sid]
        assert view["state"] == "running" and len(view["alive_pids"]) == 2  # leader + one worker
        leader = view["server"]["pid"]
        [worker] = [p for p in view["alive_pids"] if p != leader]
        os.kill(leader, signal.SIGKILL)
        until(lambda: not _alive(leader), 10, "the leader gone")
        assert _alive(worker)  # the worker outlives its leader and holds its GPU
        after = (await servers(client))[sid]
        gpus = (await client.call_tool("detect_gpus", {})).structured_content
    assert after["state"] == "exited" and after["server"]["cause"] == "leader_died"
    assert "worker process" in after["problem"] and after["alive_pids"] == []
    assert not _alive(worker) and emulator_processes(emulator) == []
    assert all(g["memory_used_mib"] == 0 for g in gpus["gpus"]), gpus["gpus"]


def _alive(pid: int) -> bool:
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def test_two_launches_on_one_gpu_at_once_cannot_both_start(emulator, tmp_path):
    emulator.write(world(1, cost={"startup_s": 1.0}))
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        results = []

        async def one() -> None:
            results.append(await client.call_tool("launch_server", {"config": {"model": ZIMAGE, "gpus": [0]}}))
        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
        listed = await servers(client)
    ok = [r for r in results if not r.is_error]
    refused = [r for r in results if r.is_error]
    assert len(ok) == 1 and len(refused) == 1, [r.content for r in results]
    assert "is being loaded by omnitune server" in refused[0].content[0].text
    assert [s["state"] for s in listed.values()] == ["running"]


async def test_a_server_is_not_launched_onto_a_gpu_omnitunes_own_servers_fill(emulator, tmp_path):
    emulator.write(world(2, model={"dit_gib": 80.0}))  # about 90 GiB a server: one fits on an H200, two do not
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        first = await launch(client, enforce_eager=True, gpus=[0])
        second = await client.call_tool("launch_server", {"config": {"model": ZIMAGE, "enforce_eager": True,
                                                                     "gpus": [0]}})
        elsewhere = await client.call_tool("launch_server", {"config": {"model": ZIMAGE, "enforce_eager": True,
                                                                        "gpus": [1]}})
        listed = await servers(client)
    assert second.is_error and "needed" in second.content[0].text and first in second.content[0].text
    assert elsewhere.is_error is False
    assert sorted(s["state"] for s in listed.values()) == ["running", "running"]


async def test_plan_says_which_gpus_omnitune_holds_and_a_tune_beside_a_running_server_refuses(emulator, tmp_path):
    emulator.write("image_fp8_compile")
    settings = emulator_settings(emulator, tmp_path, vllm_omni_source=SRC)
    async with Client(build_server(settings)) as client:
        sid = await launch(client, model=ZIMAGE, enforce_eager=True)
        plan = (await client.call_tool("plan", {"model": ZIMAGE})).structured_content
        job = (await client.call_tool("tune_start", {"request": {"model": ZIMAGE, "workload": IMAGE}}))
        final = (await client.call_tool("job_wait", {"job_id": job.structured_content["id"],
                                                     "timeout_s": 60})).structured_content
        listed = await servers(client)
    assert any(sid in note and "held by omnitune server" in note for note in plan["notes"]), plan["notes"]
    assert final["status"] == "failed" and sid in final["error"] and "not be alone" in final["error"]
    assert list(listed) == [sid]  # nothing launched beside it


async def test_a_server_frozen_while_loading_fails_its_launch_at_once_and_leaves_no_process(emulator, tmp_path):
    emulator.write(world(1, cost={"startup_s": 3.0}))
    settings = emulator_settings(emulator, tmp_path)
    frozen: list[int] = []

    async def freeze() -> None:
        for _ in range(400):  # bounded: until the launcher has recorded the pid
            rows = db_rows(settings.db_path, "SELECT pid FROM servers WHERE pid IS NOT NULL") \
                if settings.db_path.exists() else []
            if rows:
                os.kill(rows[0]["pid"], signal.SIGSTOP)
                frozen.append(rows[0]["pid"])
                return
            await anyio.sleep(0.02)

    async with Client(build_server(settings)) as client:
        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(freeze)
            result = await client.call_tool("launch_server", {"config": {"model": ZIMAGE, "health_timeout_s": 600}})
        spent = time.monotonic() - t0
        listed = await servers(client)
    assert frozen and result.is_error and "frozen (SIGSTOP) while loading" in result.content[0].text
    assert spent < 30 and [s["server"]["cause"] for s in listed.values()] == ["unresponsive"]
    assert emulator_processes(emulator) == []
