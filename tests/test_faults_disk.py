"""Full disk and values sqlite cannot hold: every failed write surfaces, no job stays running, nothing lost silently.

A full disk is simulated two real ways, no root needed: ``PRAGMA max_page_count`` on omnitune's own connection
(sqlite then fails writes with SQLITE_FULL, "database or disk is full"), and RLIMIT_FSIZE on a subprocess (every
write past the limit fails with EFBIG; Python ignores SIGXFSZ).
"""

from __future__ import annotations

import resource
import subprocess
import time

import pytest
from mcp import Client

from omnitune.server.main import build_server
from omnitune.tools import store as store_module
from tests.faults_helpers import auntil, db_rows, omnitune_argv, omnitune_env
from tests.launch_helpers import emulator_processes, emulator_settings, world
from tests.test_benchmark import known_latency, launch

pytestmark = pytest.mark.anyio
WORKLOAD = {"sizes": ["16x16"], "num_inference_steps": 10, "warmup": 0}


@pytest.fixture
def stores(monkeypatch):
    """The Store objects omnitune opens in this process (to fill their disk at a chosen moment)."""
    opened: list = []
    original = store_module.Store.__init__

    def init(self, path):
        original(self, path)
        opened.append(self)
    monkeypatch.setattr(store_module.Store, "__init__", init)
    return opened


def fill_disk(store) -> None:
    """From now on the database cannot grow: the next write that needs a page fails with SQLITE_FULL."""
    with store._lock:
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")


def free_disk(store) -> None:
    with store._lock:
        store._conn.execute("PRAGMA max_page_count = 1073741823")


async def test_a_disk_that_fills_mid_benchmark_fails_the_run_and_the_job_with_the_reason(emulator, tmp_path, stores):
    emulator.write(world(1, cost=known_latency(0.01)))
    settings = emulator_settings(emulator, tmp_path)
    async with Client(build_server(settings)) as client:
        sid = await launch(client, enforce_eager=True)
        [store] = stores
        started = await client.call_tool("benchmark_start", {"server_id": sid, "workload": {**WORKLOAD,
                                                                                              "measured": 3000}})
        job_id = started.structured_content["id"]
        await auntil(lambda: _status(client, job_id, lambda s: s["progress"] >= 5), 60, "five requests")
        fill_disk(store)
        t0 = time.monotonic()
        final = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 60})).structured_content
        waited = time.monotonic() - t0
        # the job ended (not 'running' for ever) and says why, though its own last write failed too
        assert final["status"] == "failed" and waited < 30, final
        assert "database or disk is full" in final["error"], final["error"]
        free_disk(store)
        # once the disk has room again, the kept states are written: nothing is left 'running'
        again = (await client.call_tool("job_status", {"job_id": job_id})).structured_content
        await client.call_tool("benchmark", {"server_id": sid, "workload": {**WORKLOAD, "measured": 1}})
    assert again["status"] == "failed"
    [job] = db_rows(settings.db_path, "SELECT status, error FROM jobs WHERE id = ?", job_id)
    assert job["status"] == "failed" and "database or disk is full" in job["error"]
    statuses = [r["status"] for r in db_rows(settings.db_path, "SELECT status FROM runs ORDER BY created_at")]
    assert statuses == ["failed", "completed"]
    assert emulator_processes(emulator) == []


async def test_a_blocking_benchmark_on_a_full_disk_returns_the_reason_at_once_and_cancel_works(
        emulator, tmp_path, stores):
    emulator.write(world(1, cost=known_latency(0.01)))
    settings = emulator_settings(emulator, tmp_path)
    async with Client(build_server(settings)) as client:
        sid = await launch(client, enforce_eager=True)
        [store] = stores
        job = (await client.call_tool("benchmark_start", {"server_id": sid, "workload": {
            **WORKLOAD, "measured": 3000}})).structured_content
        await auntil(lambda: _status(client, job["id"], lambda s: s["progress"] >= 2), 60, "two requests")
        fill_disk(store)
        cancelled = await client.call_tool("job_cancel", {"job_id": job["id"]})
        ended = (await client.call_tool("job_wait", {"job_id": job["id"], "timeout_s": 30})).structured_content
        t0 = time.monotonic()
        blocking = await client.call_tool("benchmark", {"server_id": sid, "wait_s": 120,
                                                        "workload": {**WORKLOAD, "measured": 50}})
        spent = time.monotonic() - t0
        free_disk(store)
    assert cancelled.is_error is False
    assert ended["status"] in ("cancelled", "failed"), ended
    assert blocking.is_error and spent < 30  # not the whole wait_s
    assert "database or disk is full" in blocking.content[0].text and "Fix: free disk space" in blocking.content[0].text


async def test_a_seed_the_store_cannot_hold_never_loses_requests_silently(emulator, tmp_path):
    emulator.write(world(1, cost=known_latency(0.01)))
    settings = emulator_settings(emulator, tmp_path)
    async with Client(build_server(settings)) as client:
        sid = await launch(client, enforce_eager=True)
        out = await client.call_tool("benchmark", {"server_id": sid, "workload": {
            **WORKLOAD, "measured": 2, "seeds": [2 ** 63]}})
    if out.is_error:  # refused at input (the workload's seed bound) is as good: nothing sent, nothing lost
        assert "seed" in out.content[0].text.lower()
        return
    result = out.structured_content
    runs = db_rows(settings.db_path, "SELECT id, status, summary FROM runs")
    rows = db_rows(settings.db_path, "SELECT count(*) n FROM requests")[0]["n"]
    assert result["status"] == "failed", result
    assert "could not be recorded" in result["summary"]["aborted_reason"]
    assert [r["status"] for r in runs] == ["failed"] and rows == 0


async def _status(client, job_id: str, test) -> bool:
    return test((await client.call_tool("job_status", {"job_id": job_id})).structured_content)


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_starting_on_a_full_disk_says_so_clearly_without_a_traceback(tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.run(omnitune_argv(ws), env=omnitune_env(), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, preexec_fn=_limit_file_size(8192))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("omnitune: writing to the workspace database") or \
        "omnitune: migrating" in proc.stderr, proc.stderr[-2000:]
    assert "Fix: free disk space" in proc.stderr or "the disk is healthy" in proc.stderr  # not "report this bug"
