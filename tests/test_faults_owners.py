"""Two omnitune processes on one workspace: one owner-liveness rule (pid + start time) everywhere.

A second omnitune must never mark a live first one's jobs interrupted or its runs failed, must refuse to resume
a job that still runs there, and must not stop its servers; what a dead omnitune left is closed at once.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from mcp import Client

from tests.faults_helpers import SRC, db_rows, driver, stdio_params, until
from tests.launch_helpers import QWEN, ZIMAGE, emulator_processes, emulator_settings, world
from tests.test_benchmark import known_latency

pytestmark = [pytest.mark.anyio, pytest.mark.slow(seconds=60)]
SLOW = {"sizes": ["64x64"], "measured": 4000, "warmup": 0, "num_inference_steps": 10}


async def test_a_second_omnitune_leaves_a_live_first_ones_tune_its_run_and_its_server_alone(emulator, tmp_path):
    emulator.write("lossy_cliff", cost={"step_s_per_megapixel": 0.6})  # ~50 ms a request: the tune lasts
    ws = tmp_path / "ws"
    db = ws / "omnitune.db"
    request = {"model": QWEN, "goal": {"quality": "lossy"},
               "workload": {"sizes": ["64x64"], "measured": 30, "warmup": 1, "num_inference_steps": 20}}
    async with Client(stdio_params(emulator, ws)) as first:
        job = (await first.call_tool("tune_start", {"request": request})).structured_content
        until(lambda: db_rows(db, "SELECT id FROM runs WHERE status = 'running'"), 60, "the tune's first run")
        [run] = db_rows(db, "SELECT id FROM runs WHERE status = 'running'")
        async with Client(stdio_params(emulator, ws)) as second:  # starts while the first one's run is going
            status = (await second.call_tool("job_status", {"job_id": job["id"]})).structured_content
            resumed = await second.call_tool("tune_start", {"resume": job["id"]})
            cancel = await second.call_tool("job_cancel", {"job_id": job["id"]})
            servers = (await second.call_tool("list_servers", {})).structured_content["servers"]
            run_now = db_rows(db, "SELECT status FROM runs WHERE id = ?", run["id"])[0]["status"]
        assert status["status"] == "working", status
        assert resumed.is_error and "is working in omnitune process" in resumed.content[0].text
        assert cancel.is_error and "another omnitune process" in cancel.content[0].text
        assert servers and not [s for s in servers if s["state"] == "orphaned"], servers  # its owner is alive
        assert run_now in ("running", "completed")  # never closed as failed by the second one's sweep
        # the second one's exit stopped none of the first one's servers: the tune goes on and finishes, and no
        # candidate lost its server mid-measurement (between two candidates no server may be up at all, so a look
        # at the processes at this instant would prove nothing on a busy machine)
        final = (await first.call_tool("job_wait", {"job_id": job["id"], "timeout_s": 300})).structured_content
    assert final["status"] == "completed", final
    lost = [c for c in final["result"]["candidates"] if c["cause"] in ("crashed", "no_measurement")]
    assert lost == [], lost
    assert final["result"]["winner"] is not None and final["result"]["launches"] >= 3
    assert {r["status"] for r in db_rows(db, "SELECT status FROM runs")} == {"completed"}
    until(lambda: not emulator_processes(emulator), 10, "every server stopped")


async def test_a_run_and_a_job_left_by_a_sigkilled_omnitune_are_closed_by_the_next_one_at_start(emulator, tmp_path):
    emulator.write(world(1, cost=known_latency(0.02)))
    settings = emulator_settings(emulator, tmp_path, vllm_omni_source=SRC)
    db = settings.db_path
    launcher = driver(settings, "launch_server", {"config": {"model": ZIMAGE}})
    try:
        sid = json.loads(launcher.stdout.readline())["server"]["id"]
    finally:
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)
    bench = driver(settings, "benchmark_start", {"server_id": sid, "workload": SLOW})
    try:
        job_id = json.loads(bench.stdout.readline())["id"]
        until(lambda: db_rows(db, "SELECT count(*) n FROM requests")[0]["n"] >= 3, 60, "a few requests recorded")
    finally:
        os.kill(bench.pid, signal.SIGKILL)
        bench.wait(timeout=10)
    [run] = db_rows(db, "SELECT id, status FROM runs")
    assert run["status"] == "running"  # what the dead one left
    from omnitune.server.main import build_server
    async with Client(build_server(settings)) as client:
        # closed at start, before any benchmark runs (the liveness rule, not 'some later benchmark')
        [after] = db_rows(db, "SELECT status, data FROM runs WHERE id = ?", run["id"])
        job = (await client.call_tool("job_status", {"job_id": job_id})).structured_content
        await client.call_tool("stop_server", {"server_id": sid})
    assert after["status"] == "failed" and "omnitune stopped" in json.loads(after["data"])["aborted_reason"]
    assert job["status"] == "failed" and job["error"].startswith("interrupted"), job
    assert emulator_processes(emulator) == []
