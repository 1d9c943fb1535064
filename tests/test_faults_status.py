"""Status wording is truthful: a job never says completed while its run failed; unfinished or identical runs are not
compared; a tune's launch budget counts every launch made, including one just before a kill -9."""

from __future__ import annotations

import json
import os
import signal

import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.faults_helpers import SRC, auntil, db_rows, driver, until
from tests.launch_helpers import QWEN, emulator_processes, emulator_settings, world
from tests.test_benchmark import known_latency, launch
from tests.test_tune import IMAGE

pytestmark = [pytest.mark.anyio, pytest.mark.slow(seconds=55)]
WORKLOAD = {"sizes": ["16x16"], "num_inference_steps": 10, "warmup": 0}


async def test_a_benchmark_job_whose_run_failed_is_failed_with_the_reason(emulator, tmp_path):
    emulator.write(world(1, cost=known_latency(0.01), faults={"die_after_requests": 3}))
    settings = emulator_settings(emulator, tmp_path)
    async with Client(build_server(settings)) as client:
        sid = await launch(client, enforce_eager=True)
        job = (await client.call_tool("benchmark_start", {"server_id": sid, "workload": {
            **WORKLOAD, "measured": 10}})).structured_content
        final = (await client.call_tool("job_wait", {"job_id": job["id"], "timeout_s": 60})).structured_content
    assert final["status"] == "failed" and final["result"]["status"] == "failed"
    assert "stopped answering" in final["error"] and final["result"]["summary"]["requests_ok"] == 3


async def test_a_run_whose_every_request_failed_is_failed_not_completed(emulator, tmp_path):
    emulator.write(world(1, cost=known_latency(0.01), faults={"error_500_on": [1, 2, 3]}))
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        sid = await launch(client, enforce_eager=True)
        out = await client.call_tool("benchmark", {"server_id": sid, "workload": {**WORKLOAD, "measured": 3}})
    result = out.structured_content
    assert result["status"] == "failed" and result["summary"]["requests_failed"] == 3
    assert result["summary"]["aborted_reason"].startswith("every measured request failed")


async def test_compare_outputs_refuses_an_unfinished_run_and_a_run_against_itself(emulator, tmp_path):
    emulator.write(world(1, cost=known_latency(0.02)))
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        sid = await launch(client, enforce_eager=True)
        done = (await client.call_tool("benchmark", {"server_id": sid, "workload": {**WORKLOAD, "measured": 2}}))
        run_id = done.structured_content["run_id"]
        job = (await client.call_tool("benchmark_start", {"server_id": sid, "workload": {
            **WORKLOAD, "measured": 3000}})).structured_content
        await auntil(lambda: _progress(client, job["id"]), 60, "the second run under way")
        running = (await client.call_tool("job_status", {"job_id": job["id"]})).structured_content
        other = running["result"]["run_id"] if running["result"] else None
        other = other or db_rows(emulator_settings(emulator, tmp_path).db_path,
                                 "SELECT id FROM runs WHERE status = 'running'")[0]["id"]
        unfinished = await client.call_tool("compare_outputs", {"baseline_run": run_id, "candidate_run": other})
        itself = await client.call_tool("compare_outputs", {"baseline_run": run_id, "candidate_run": run_id})
        await client.call_tool("job_cancel", {"job_id": job["id"]})
    assert unfinished.is_error and f"run {other} is still running" in unfinished.content[0].text
    assert itself.is_error and "compared with itself" in itself.content[0].text


async def _progress(client, job_id: str) -> bool:
    return (await client.call_tool("job_status", {"job_id": job_id})).structured_content["progress"] >= 2


async def test_a_launch_made_just_before_a_kill_9_counts_in_the_resumed_tunes_budget(emulator, tmp_path):
    emulator.write("lossy_cliff")
    settings = emulator_settings(emulator, tmp_path, vllm_omni_source=SRC)
    db = settings.db_path
    tune = driver(settings, "tune_start", {"request": {"model": QWEN, "goal": {"quality": "lossy"},
                                                       "workload": IMAGE}})
    try:
        job_id = json.loads(tune.stdout.readline())["id"]
        # kill while a launched candidate is not decided yet: one more server row than launches recorded
        until(lambda: _undecided_launch(db, job_id), 120, "a launch not yet decided")
    finally:
        os.kill(tune.pid, signal.SIGKILL)
        tune.wait(timeout=10)
    async with Client(build_server(settings)) as client:
        again = await client.call_tool("tune_start", {"resume": job_id})
        assert again.is_error is False, again.content
        final = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 300})).structured_content
    assert final["status"] == "completed", final["error"]
    launched = db_rows(db, "SELECT count(*) n FROM servers WHERE pid IS NOT NULL")[0]["n"]
    assert final["result"]["launches"] == launched
    assert emulator_processes(emulator) == []


def _undecided_launch(db, job_id: str) -> bool:
    servers = db_rows(db, "SELECT count(*) n FROM servers WHERE pid IS NOT NULL")[0]["n"]
    recorded = sum(json.loads(r["data"]).get("launched", False) for r in db_rows(
        db, "SELECT data FROM tune_candidates WHERE job_id = ?", job_id))
    return servers >= 2 and servers > recorded
