"""Background jobs: progress, results, cancel, crashes, and honesty after omnitune restarts."""

from __future__ import annotations

import threading

import pytest
from mcp import Client
from pydantic import BaseModel

from omnitune.server.main import build_server
from omnitune.tools.errors import BenchmarkError, NotFoundError
from omnitune.tools.jobs import JobManager
from omnitune.tools.store import Store


class Done(BaseModel):
    steps: int


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db.sqlite")
    yield s
    s.close()


def test_a_job_reports_progress_and_its_result(store):
    jobs = JobManager(store)
    release = threading.Event()

    def work(ctx):
        ctx.report(1, 3, "first step")
        assert release.wait(10)
        ctx.report(3, 3, "last step")
        return Done(steps=3)

    started = jobs.start("demo", {"x": 1}, work)
    assert started.status == "working" and started.poll_interval_ms and started.next_poll_at
    assert f"job_wait(job_id='{started.id}')" in started.next_step
    release.set()
    final = jobs.wait(started.id, timeout=10)
    assert final.status == "completed" and final.result == {"steps": 3}
    assert final.poll_interval_ms is None and final.next_poll_at is None and final.ttl_s is None
    assert (final.progress, final.total) == (3, 3)


def test_cancel_stops_a_job_at_its_next_check_and_keeps_the_partial_result(store):
    jobs = JobManager(store)
    at_step = threading.Event()

    def work(ctx):
        at_step.set()
        for _ in range(1000):
            if ctx.cancelled.wait(0.01):
                return Done(steps=1)  # partial result recorded
        return Done(steps=1000)

    job = jobs.start("demo", {}, work)
    assert at_step.wait(10)
    jobs.cancel(job.id)
    final = jobs.wait(job.id, timeout=10)
    assert final.status == "cancelled" and final.result == {"steps": 1}


def test_a_failing_job_records_the_error_with_its_fix(store):
    jobs = JobManager(store)

    def work(ctx):
        raise BenchmarkError("the server answered nothing.", "check server_logs.")

    final = jobs.wait(jobs.start("demo", {}, work).id, timeout=10)
    assert final.status == "failed" and "Fix: check server_logs." in final.error


def test_a_crashing_job_is_failed_not_lost(store):
    jobs = JobManager(store)
    final = jobs.wait(jobs.start("demo", {}, lambda ctx: 1 / 0).id, timeout=10)
    assert final.status == "failed" and "ZeroDivisionError" in final.error


def test_jobs_of_a_dead_omnitune_are_reported_failed_interrupted_after_restart(store):
    store.insert("jobs", {"id": "tune-old", "kind": "tune", "status": "working", "created_at": 1.0,
                          "updated_at": 1.0, "owner_pid": 999999999})
    jobs = JobManager(store)
    status = jobs.status("tune-old")
    assert status.status == "failed" and (status.error or "").startswith("interrupted:")
    assert "results recorded so far are kept" in (status.message or "")
    assert "tune_start(resume='tune-old')" in status.next_step


def test_job_states_of_an_older_workspace_are_renamed_as_the_tasks_extension_names_them(tmp_path):
    import sqlite3

    from omnitune.tools.store import MIGRATIONS
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "PRAGMA user_version=1;")
    for i, state in enumerate(["pending", "running", "interrupted", "completed", "failed", "cancelled"]):
        conn.execute("INSERT INTO jobs (id, kind, status, created_at, updated_at, owner_pid, error) VALUES "
                     "(?, 'tune', ?, 1, 1, 999999999, ?)", (f"job-{state}", state, "boom" if i == 4 else None))
    conn.commit()
    conn.close()
    store = Store(path)
    try:
        got = {r["id"]: (r["status"], r["error"]) for r in store.query("SELECT id, status, error FROM jobs")}
        assert {k: v[0] for k, v in got.items()} == {
            "job-pending": "working", "job-running": "working", "job-interrupted": "failed",
            "job-completed": "completed", "job-failed": "failed", "job-cancelled": "cancelled"}
        assert got["job-interrupted"][1].startswith("interrupted:") and got["job-failed"][1] == "boom"
        jobs = JobManager(store)  # the dead owner's working jobs are failed (interrupted) on start
        assert {jobs.status(f"job-{s}").status for s in ("pending", "running")} == {"failed"}
    finally:
        store.close()


def test_an_unknown_job_names_recent_ones(store):
    jobs = JobManager(store)
    with pytest.raises(NotFoundError, match="no job 'nope'"):
        jobs.status("nope")


@pytest.mark.anyio
async def test_job_tools_answer_an_unknown_id_with_a_tool_error_and_the_fix(settings):
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("job_status", {"job_id": "missing"})
    assert result.is_error is True
    assert "no job 'missing'" in result.content[0].text and "Fix:" in result.content[0].text
