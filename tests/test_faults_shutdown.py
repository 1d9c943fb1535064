"""Ending omnitune (client close, SIGTERM) mid-job: jobs are cancelled first and recorded truthfully, then servers.

A candidate whose server was stopped under it is never `measured` from a truncated run nor `failed ... exited
with code 0`; the tune resumes to the same winner as an undisturbed one.
"""

from __future__ import annotations

import json
import signal

import psutil
import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.faults_helpers import SRC, auntil, db_rows, stdio_params, until
from tests.launch_helpers import QWEN, ZIMAGE, emulator_processes, emulator_settings, world
from tests.test_benchmark import known_latency
from tests.test_tune import CLEAR_CLIFF, IMAGE

pytestmark = [pytest.mark.anyio, pytest.mark.slow(seconds=80)]


def truthful_candidates(db) -> list:
    """Every decided candidate: a `measured` one has a completed run; none failed because its server was stopped."""
    rows = db_rows(db, "SELECT c.idx, c.status, c.reason, c.run_id, r.status run_status FROM tune_candidates c "
                       "LEFT JOIN runs r ON r.id = c.run_id")
    for row in rows:
        if row["status"] in ("measured", "reused", "within_noise", "inert", "rejected_quality", "over_memory"):
            assert row["run_status"] == "completed", dict(row)
        assert "exited with code 0" not in (row["reason"] or ""), dict(row)
        assert "stopped" not in (row["reason"] or "") or row["status"] != "failed", dict(row)
    return rows


async def test_closing_the_client_mid_tune_cancels_it_first_and_resume_finds_the_undisturbed_winner(
        emulator, tmp_path):
    emulator.write("lossy_cliff", cost=CLEAR_CLIFF)  # its winner clear of a loaded host's noise (tests/test_tune.py)
    settings = emulator_settings(emulator, tmp_path, vllm_omni_source=SRC)
    db = settings.db_path
    request = {"model": QWEN, "goal": {"quality": "lossy"}, "workload": {**IMAGE, "measured": 6}}
    async with Client(build_server(settings)) as client:
        job_id = (await client.call_tool("tune_start", {"request": request})).structured_content["id"]
        # close while a candidate's run is half done (its server up, requests recorded)
        until(lambda: db_rows(db, "SELECT r.id FROM runs r WHERE r.status = 'running' AND "
                                  "(SELECT count(*) FROM requests q WHERE q.run_id = r.id) >= 3 AND "
                                  "(SELECT count(*) FROM tune_candidates) >= 1"), 120, "a candidate half measured")
    job = db_rows(db, "SELECT status, message, error FROM jobs WHERE id = ?", job_id)[0]
    # cancelled (the tuner stopped in time) or interrupted (still stopping when omnitune closed): never working
    assert job["status"] == "cancelled" or (job["status"] == "failed" and job["error"].startswith("interrupted")), \
        dict(job)
    runs = db_rows(db, "SELECT status FROM runs")
    assert "running" not in {r["status"] for r in runs}
    before = truthful_candidates(db)
    assert emulator_processes(emulator) == []
    servers = db_rows(db, "SELECT status, cause FROM servers")
    assert {s["status"] for s in servers} <= {"stopped", "failed"} and all(s["cause"] is None for s in servers)
    async with Client(build_server(settings)) as client:
        again = await client.call_tool("tune_start", {"resume": job_id})
        assert again.is_error is False, again.content
        final = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 300})).structured_content
    assert final["status"] == "completed", final["error"]
    truthful_candidates(db)
    r = final["result"]
    assert r["winner"]["name"] == "cache_dit 0.24"  # the undisturbed tune's winner (tests/test_tune.py)
    assert sum(c["resumed"] for c in r["candidates"]) == len(before)
    assert r["launches"] == len(db_rows(db, "SELECT id FROM servers WHERE pid IS NOT NULL"))
    assert emulator_processes(emulator) == []


def omnitune_child(workspace) -> psutil.Process:
    me = psutil.Process()
    for child in me.children(recursive=True):
        try:
            if any("server/main.py" in part for part in child.cmdline()) and \
                    child.environ().get("OMNITUNE_WORKSPACE") == str(workspace):
                return child
        except psutil.Error:
            continue
    raise AssertionError("no omnitune child process found")


async def test_sigterm_to_omnitune_runs_the_stop_on_exit_clean_up(emulator, tmp_path):
    emulator.write(world(2, cost=known_latency(0.02)))
    ws = tmp_path / "ws"
    db = ws / "omnitune.db"
    async with Client(stdio_params(emulator, ws)) as client:
        launched = await client.call_tool("launch_server", {"config": {"model": ZIMAGE, "gpus": [0]}})
        sid = launched.structured_content["server"]["id"]
        job = (await client.call_tool("benchmark_start", {"server_id": sid, "workload": {
            "sizes": ["16x16"], "num_inference_steps": 10, "measured": 5000, "warmup": 0}})).structured_content
        await auntil(lambda: _progress(client, job["id"], 3), 60, "a few requests measured")
        omnitune = omnitune_child(ws)
        omnitune.send_signal(signal.SIGTERM)
        code = omnitune.wait(timeout=30)  # None when the client's own child reaper got there first
    assert code in (128 + signal.SIGTERM, None)
    assert emulator_processes(emulator) == []
    [server] = db_rows(db, "SELECT status FROM servers")
    [jobrow] = db_rows(db, "SELECT status FROM jobs WHERE kind = 'benchmark'")
    [run] = db_rows(db, "SELECT status, summary FROM runs")
    assert server["status"] == "stopped" and jobrow["status"] == "cancelled" and run["status"] == "cancelled"
    assert json.loads(run["summary"])["requests_ok"] >= 3


async def _progress(client, job_id: str, at_least: float) -> bool:
    status = (await client.call_tool("job_status", {"job_id": job_id})).structured_content
    return status["progress"] >= at_least
