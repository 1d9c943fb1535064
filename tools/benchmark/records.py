"""Benchmark run records that outlive a run: runs a dead omnitune left 'running' (closed by the one owner rule,
:mod:`omnitune.tools.owner`) and final states a failed write (full disk) could not store yet (retried)."""

from __future__ import annotations

import json
import logging
from typing import Any

from omnitune.tools.benchmark.target import Resolved
from omnitune.tools.owner import alive, is_me
from omnitune.tools.store import now
from omnitune.tools.workspace import Workspace

log = logging.getLogger(__name__)


UNWRITTEN: dict[str, dict[str, Any]] = {}  # a run's final state whose write failed (full disk), to retry


def close_orphaned_runs(ws: Workspace) -> list[str]:
    """Runs left 'running' by an omnitune that is gone can never finish: mark them failed, rows kept. First, final
    states of this process's runs that could not be written (full disk) are written now."""
    for run_id, final in list(UNWRITTEN.items()):
        try:
            ws.store.update("runs", {"id": run_id}, final)
            UNWRITTEN.pop(run_id, None)
        except Exception as exc:
            log.warning("run %s: its final state still cannot be written: %s", run_id, exc)
    closed = []
    for row in ws.store.query("SELECT id, data FROM runs WHERE kind = 'benchmark' AND status = 'running'"):
        data = json.loads(row["data"] or "{}")
        pid, started = data.get("owner_pid"), data.get("owner_start_time")
        if is_me(pid, started) or alive(pid, started):  # the one owner rule: never another live omnitune's run
            continue
        data["aborted_reason"] = "omnitune stopped while this run ran; its requests and outputs rows are kept"
        ws.store.update("runs", {"id": row["id"]}, {"status": "failed", "finished_at": now(), "data": data})
        closed.append(row["id"])
    return closed


def server_process(ws: Workspace, resolved: Resolved) -> tuple[int | None, float | None]:
    """The leader process of a server omnitune launched (None for a base_url target)."""
    if not resolved.server_id:
        return None, None
    row = ws.store.query_one("SELECT pid, proc_start_time FROM servers WHERE id = ?", (resolved.server_id,))
    return (row["pid"], row["proc_start_time"]) if row else (None, None)
