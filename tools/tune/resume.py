"""Resuming a tune whose omnitune died: its request from the job record, and its leftover servers stopped.

The dead omnitune's candidate server may still hold GPUs (servers run in their own process groups, so they
outlive it); a resumed tune would measure next to it and OOM or read wrong numbers, so it is stopped first.
"""

from __future__ import annotations

import json
import logging

from omnitune.tools.errors import InvalidRequestError, NotFoundError
from omnitune.tools.launch.launcher import Launcher
from omnitune.tools.tune.models import TuneRequest
from omnitune.tools.workspace import Workspace

log = logging.getLogger(__name__)


def resumable_request(workspace: Workspace, launcher: Launcher, job_id: str) -> tuple[TuneRequest, list[str]]:
    """The job's own request, after stopping the servers it left running; (request, notes)."""
    row = workspace.store.query_one("SELECT kind, params FROM jobs WHERE id = ?", (job_id,))
    if row is None:
        recent = [r["id"] for r in workspace.store.query(
            "SELECT id FROM jobs WHERE kind = 'tune' ORDER BY created_at DESC LIMIT 5")]
        raise NotFoundError(f"no job {job_id!r}.", f"resume one of the recent tune jobs: {recent or 'none'}.")
    if row["kind"] != "tune":
        raise InvalidRequestError(f"job {job_id} is a {row['kind']} job, not a tune.",
                                  "resume takes the id tune_start returned.")
    request = TuneRequest.model_validate(json.loads(row["params"]))
    notes = []
    for view in launcher.list():
        if view.server.data.get("labels", {}).get("tune_job") == job_id and view.state == "orphaned":
            stopped = launcher.stop(view.server.id, grace_s=5)
            notes.append(f"stopped {view.server.id}, left running by the interrupted run "
                         f"({'cleanly' if stopped.stopped else 'with leftovers: ' + str(stopped.leftover_pids)})")
            log.info("resume %s: %s", job_id, notes[-1])
    return request, notes
