"""Chaos: random kills at random moments of benchmark and tune jobs on the emulator, then restart and resume.

Each trial starts omnitune as a real stdio subprocess (the `omnitune` entry point), starts a tune or a benchmark
job, waits a random moment, and does one of: SIGKILL or SIGTERM omnitune, close the client, SIGKILL or SIGSTOP the
server being measured. A fresh omnitune then opens the same workspace. Checked every time: every record consistent
(no job or run left running, a `measured` candidate always has a completed run, every run's rows match its
summary), a resumed tune finds the same winner as an undisturbed tune on the same world, and no process is left.
Seeded (CHAOS_SEED, CHAOS_TRIALS); the trials and their outcomes are printed (pytest -s) and kept as a property.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time

import anyio
import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.faults_helpers import SRC, db_rows, stdio_params, until
from tests.launch_helpers import ZIMAGE, emulator_processes, emulator_settings
from tests.test_faults_shutdown import omnitune_child
from tests.test_tune import IMAGE

pytestmark = [pytest.mark.anyio, pytest.mark.slow(seconds=55)]
KINDS = ["omnitune_sigkill", "omnitune_sigterm", "client_close", "server_sigkill", "server_sigstop"]
BENCH = {**IMAGE, "measured": 40, "warmup": 1}
DECIDED = ("measured", "reused", "within_noise", "inert", "rejected_quality", "over_memory")


async def test_random_kills_leave_consistent_records_resume_to_the_same_winner_and_no_process(
        emulator, tmp_path, record_property):
    seed = int(os.environ.get("CHAOS_SEED", "16"))
    trials = int(os.environ.get("CHAOS_TRIALS", str(len(KINDS))))
    rng = random.Random(seed)
    emulator.write("image_fp8_compile")
    started = time.monotonic()
    reference = await undisturbed_winner(emulator, tmp_path / "reference")
    outcomes = []
    for i in range(trials):
        # every kind of kill at least once, both kinds of job (a SIGKILLed tune first: the resume that matters
        # most); further trials (CHAOS_TRIALS > 5) draw both at random
        kind = KINDS[i] if i < len(KINDS) else rng.choice(KINDS)
        job_kind = ("tune", "benchmark")[i % 2] if i < len(KINDS) else rng.choice(["tune", "benchmark"])
        delay = round(rng.uniform(0.2, 2.5), 2)
        outcome = await trial(emulator, tmp_path / f"trial-{i}", kind, job_kind, delay, reference)
        outcomes.append({"trial": i, "kill": kind, "job": job_kind, "after_s": delay, **outcome})
    report = {"seed": seed, "trials": trials, "reference_winner": reference,
              "seconds": round(time.monotonic() - started, 1), "outcomes": outcomes}
    print("chaos:", json.dumps(report, indent=1))
    record_property("chaos", json.dumps(report))
    assert emulator_processes(emulator) == []


async def undisturbed_winner(emulator, ws) -> str:
    async with Client(build_server(settings_for(emulator, ws))) as client:
        job = (await client.call_tool("tune_start", {"request": tune_request()})).structured_content
        final = (await client.call_tool("job_wait", {"job_id": job["id"], "timeout_s": 120})).structured_content
    assert final["status"] == "completed", final
    return final["result"]["winner"]["name"]


def settings_for(emulator, ws):
    return emulator_settings(emulator, ws.parent, vllm_omni_source=SRC).model_copy(update={"workspace": ws})


def tune_request() -> dict:
    return {"model": ZIMAGE, "workload": IMAGE}


async def trial(emulator, ws, kind: str, job_kind: str, delay: float, reference: str) -> dict:
    db = ws / "omnitune.db"
    outcome: dict = {}
    async with Client(stdio_params(emulator, ws)) as client:
        if job_kind == "tune":
            job = (await client.call_tool("tune_start", {"request": tune_request()})).structured_content
        else:
            sid = (await client.call_tool("launch_server", {"config": {"model": ZIMAGE, "enforce_eager": True}}))
            job = (await client.call_tool("benchmark_start", {"server_id": sid.structured_content["server"]["id"],
                                                              "workload": BENCH})).structured_content
        await anyio.sleep(delay)
        outcome["hit"] = await disrupt(kind, ws, db, client, job["id"])
    if kind == "client_close":
        clean_up_done(db, ws)
    # a fresh omnitune on the same workspace: what the disrupted one left is closed by the owner rule
    async with Client(build_server(settings_for(emulator, ws))) as client:
        status = (await client.call_tool("job_status", {"job_id": job["id"]})).structured_content
        outcome["job_after"] = status["status"]
        check_records(db)
        if job_kind == "tune" and status["status"] in ("cancelled", "failed"):
            again = await client.call_tool("tune_start", {"resume": job["id"]})
            assert again.is_error is False, again.content
            status = (await client.call_tool("job_wait", {"job_id": job["id"], "timeout_s": 120})).structured_content
            outcome["resumed"] = status["status"]
            assert status["status"] == "completed", status
            assert status["result"]["winner"]["name"] == reference, brief(status)
        if job_kind == "tune":
            outcome["winner"] = ((status["result"] or {}).get("winner") or {}).get("name")
            if kind not in ("server_sigkill", "server_sigstop") or not outcome["hit"].startswith("server"):
                assert outcome["winner"] == reference, (outcome, brief(status))
        for view in (await client.call_tool("list_servers", {})).structured_content["servers"]:
            if view["state"] in ("running", "orphaned", "unresponsive", "starting"):
                await client.call_tool("stop_server", {"server_id": view["server"]["id"], "grace_s": 2})
    check_records(db)
    until(lambda: not emulator_processes(emulator), 15, f"no process left after {kind}")
    return outcome


async def disrupt(kind: str, ws, db, client, job_id: str) -> str:
    if kind.startswith("omnitune_"):
        proc = omnitune_child(ws)
        proc.send_signal(signal.SIGKILL if kind == "omnitune_sigkill" else signal.SIGTERM)
        proc.wait(timeout=30)  # (its exit code goes to the client's own reaper)
        if kind == "omnitune_sigterm":
            clean_up_done(db, ws)
        return kind
    if kind == "client_close":
        return "client closed"
    query = "SELECT id, pid FROM servers WHERE status IN ('running', 'starting') AND pid IS NOT NULL"
    for _ in range(100):  # a tune between candidates launches the next one soon: wait (bounded) for it
        rows = db_rows(db, query)
        if rows:
            break
        await anyio.sleep(0.05)
    if not rows:
        final = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 120})).structured_content
        return f"no server up at that moment (job {final['status']})"
    os.kill(rows[0]["pid"], signal.SIGKILL if kind == "server_sigkill" else signal.SIGSTOP)
    final = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 120})).structured_content
    assert final["status"] in ("completed", "failed"), final  # the job ends by itself, with the truth
    return f"server {rows[0]['id']} {kind.split('_')[1]}; job {final['status']}"


def brief(status: dict) -> list[tuple]:
    """Each candidate's name, status, reason and p50: what a failed winner check needs to be understood."""
    return [(c.get("name"), c.get("status"), c.get("reason"), c.get("p50_s"), c.get("resumed"))
            for c in (status.get("result") or {}).get("candidates", [])]


def clean_up_done(db, ws) -> None:
    """SIGTERM and client close: omnitune itself stopped its servers and ended its jobs before exiting."""
    assert not db_rows(db, "SELECT id FROM jobs WHERE status = 'working'")
    assert not db_rows(db, "SELECT id FROM servers WHERE status IN ('running', 'starting')")
    assert not db_rows(db, "SELECT id FROM runs WHERE status = 'running'")


def check_records(db) -> None:
    """Every record consistent: nothing left running, measured candidates from whole runs, rows match summaries."""
    assert not db_rows(db, "SELECT id FROM jobs WHERE status = 'working'")
    assert not db_rows(db, "SELECT id FROM runs WHERE status = 'running'")
    for c in db_rows(db, "SELECT c.status, c.reason, r.status run_status FROM tune_candidates c "
                         "LEFT JOIN runs r ON r.id = c.run_id"):
        if c["status"] in DECIDED:
            assert c["run_status"] == "completed", dict(c)
        assert "exited with code 0" not in (c["reason"] or ""), dict(c)
    for run in db_rows(db, "SELECT id, status, summary FROM runs WHERE summary IS NOT NULL"):
        summary = json.loads(run["summary"])
        measured = db_rows(db, "SELECT count(*) n FROM requests WHERE run_id = ? AND phase = 'measured'",
                           run["id"])[0]["n"]
        assert measured == summary["requests_measured"], (run["id"], measured, summary["requests_measured"])
        assert run["status"] == summary["status"]
