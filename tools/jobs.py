"""Background jobs (benchmark, tune): start returns an id at once; status, result and cancel later.

Each job runs in its own thread so an agent is never blocked for minutes and a slow job cannot
stall the MCP event loop. State lives in the ``jobs`` table, written on every change, so a
restarted omnitune still answers for jobs it ran before (a job whose omnitune died while it ran
is reported ``failed`` with an "interrupted" error; tune resumes such jobs from its own records).

States and fields follow the MCP tasks extension (``io.modelcontextprotocol/tasks``: working, input_required,
completed, failed, cancelled; a time-to-live and a poll interval), so a later switch to protocol tasks is a rename.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from omnitune.tools.errors import InvalidRequestError, NotFoundError, OmnituneError
from omnitune.tools.pictures import PictureLink, job_links
from omnitune.tools.store import Store, dumps, now
from omnitune.tools.workspace import new_id

log = logging.getLogger(__name__)

JobState = Literal["working", "input_required", "completed", "failed", "cancelled"]
FINISHED = ("completed", "failed", "cancelled")
# Polling hints per kind: a benchmark request takes seconds, a tune candidate a launch plus a benchmark.
POLL_INTERVAL_MS = {"launch": 5000, "benchmark": 2000, "tune": 10000}
# The longest a tool call blocks by default (benchmark, job_wait): clients cut calls after about a minute, and
# a call's own overhead (a comparison, the last progress relay) must still fit under 45 s.
WAIT_S = 40.0
INTERRUPTED = "interrupted: omnitune stopped while this job ran; results recorded so far are kept"


class JobStatus(BaseModel):
    id: str
    kind: str
    status: JobState
    progress: float = Field(0, description="Units done (see total).")
    total: float | None = Field(None, description="Units in all, when known.")
    message: str | None = Field(None, description="What the job is doing now, or why it ended.")
    created_at: float
    updated_at: float
    error: str | None = None
    result: dict[str, Any] | None = Field(None, description="The job's result once completed (or partial, if "
                                                            "cancelled).")
    ttl_s: float | None = Field(default=None, description="How long the record and result are kept after "
                                "creation, seconds; null: unlimited (kept in the workspace database).")
    poll_interval_ms: int | None = Field(default=None, description="While working: wait this long before the next "
                                         "job_status (or call job_wait, which blocks up to 40 s).")
    next_poll_at: float | None = Field(default=None, description="While working: the epoch second of the next "
                                       "useful poll.")
    next_step: str = Field("", description="What to do now with this job.")
    pictures: list[PictureLink] = Field(default_factory=list, description="Pictures of the result (a tune's Pareto "
                                                                          "plot, a run's outputs): show_picture or "
                                                                          "read the uri.")


def next_step(job_id: str, kind: str, status: str) -> str:
    """The hint an agent acts on (it may see only the structured result, never a text summary)."""
    if status not in FINISHED:
        return (f"job_wait(job_id='{job_id}') blocks up to {WAIT_S:.0f} s and relays progress; call it again until "
                "the status is completed, failed or cancelled. job_cancel stops it.")
    if status == "completed":
        return {"tune": "`result` holds the tune: winner, command, candidates; show_picture(picture='pareto', "
                        f"id='{job_id}') shows its Pareto plot.",
                "launch": "`result` holds the launch: server.id to benchmark (state running)."}.get(
                    kind, "`result` holds the benchmark: run_id (for compare_outputs) and summary.")
    if status == "cancelled" and kind != "tune":
        return "`result` holds what was measured before the cancel (partial); the server keeps running."
    if kind == "tune":
        return (f"tune_start(resume='{job_id}') continues it under its own id (measured candidates are reused); "
                "read `error` first.")
    return "read `error` (server_logs for a launch); start it again once the cause is fixed."


class JobCancelled(Exception):
    """Raised inside a job (by :meth:`JobContext.check`) once cancel was asked for."""


class JobContext:
    """What a job function gets: progress reporting and a cancel flag to check between steps."""

    def __init__(self, manager: JobManager, job_id: str) -> None:
        self._manager = manager
        self.id = job_id
        self.cancelled = threading.Event()

    def report(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        self._manager._update(self.id, progress=progress, total=total, message=message)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled()


JobFn = Callable[[JobContext], BaseModel]


class JobManager:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._contexts: dict[str, JobContext] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._changed = threading.Condition()
        self._mark_interrupted()

    def _mark_interrupted(self) -> None:
        """Jobs left 'working' by an omnitune that is gone can never finish: failed, with the interrupted error."""
        for row in self.store.query("SELECT id, owner_pid FROM jobs WHERE status = 'working'"):
            if row["owner_pid"] != os.getpid():
                self.store.update("jobs", {"id": row["id"]}, {
                    "status": "failed", "updated_at": now(), "error": INTERRUPTED, "message": INTERRUPTED})

    def start(self, kind: str, params: dict[str, Any], fn: JobFn, job_id: str | None = None) -> JobStatus:
        job_id = job_id or new_id(kind)
        t = now()
        self.store.insert("jobs", {"id": job_id, "kind": kind, "status": "working", "created_at": t, "updated_at": t,
                                   "params": params, "owner_pid": os.getpid()})
        return self._spawn(job_id, fn)

    def resume(self, job_id: str, fn: JobFn) -> JobStatus:
        """Run a job that ended without completing again, under its own id (its records are kept)."""
        status = self.status(job_id)
        if status.status not in ("failed", "cancelled"):
            raise InvalidRequestError(
                f"job {job_id} is {status.status}; only a failed (or interrupted) or cancelled job can be resumed.",
                "follow a running job with job_wait; a completed job's result is in job_status.")
        self.store.update("jobs", {"id": job_id}, {"status": "working", "owner_pid": os.getpid(), "updated_at": now(),
                                                   "message": f"resumed (was {status.status})", "error": None,
                                                   "result": None})
        return self._spawn(job_id, fn)

    def _spawn(self, job_id: str, fn: JobFn) -> JobStatus:
        ctx = JobContext(self, job_id)
        thread = threading.Thread(target=self._run, args=(ctx, fn), name=f"job-{job_id}", daemon=True)
        self._contexts[job_id] = ctx
        self._threads[job_id] = thread
        thread.start()
        return self.status(job_id)

    def _run(self, ctx: JobContext, fn: JobFn) -> None:
        self._update(ctx.id, status="working")
        try:
            result = fn(ctx)
        except JobCancelled:
            self._update(ctx.id, status="cancelled", message="cancelled on request")
        except OmnituneError as exc:
            self._update(ctx.id, status="failed", error=str(exc), message="failed")
        except Exception as exc:  # a bug: keep the job record honest and the traceback in the log
            log.exception("job %s crashed", ctx.id)
            self._update(ctx.id, status="failed", error=f"internal error: {type(exc).__name__}: {exc}",
                         message="failed")
        else:
            status = "cancelled" if ctx.cancelled.is_set() else "completed"
            self._update(ctx.id, status=status, result=result.model_dump(mode="json"),
                         message="cancelled on request; partial result kept" if status == "cancelled" else "done")

    def _update(self, job_id: str, **changes: Any) -> None:
        changes = {k: v for k, v in changes.items() if v is not None}
        if "result" in changes:
            changes["result"] = dumps(changes["result"])
        changes["updated_at"] = now()
        self.store.update("jobs", {"id": job_id}, changes)
        with self._changed:
            self._changed.notify_all()

    def status(self, job_id: str) -> JobStatus:
        row = self.store.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            known = [r["id"] for r in self.store.query("SELECT id FROM jobs ORDER BY created_at DESC LIMIT 5")]
            raise NotFoundError(f"no job {job_id!r}.",
                                f"use a job id returned by a start tool; recent: {known or 'none'}.")
        result = json.loads(row["result"]) if row["result"] else None
        poll = POLL_INTERVAL_MS.get(row["kind"], 5000) if row["status"] not in FINISHED else None
        return JobStatus(id=row["id"], kind=row["kind"], status=row["status"], progress=row["progress"],
                         total=row["total"], message=row["message"], created_at=row["created_at"],
                         updated_at=row["updated_at"], error=row["error"], result=result,
                         poll_interval_ms=poll, next_poll_at=now() + poll / 1000 if poll else None,
                         next_step=next_step(row["id"], row["kind"], row["status"]),
                         pictures=job_links(row["id"], row["kind"], result))

    def cancel(self, job_id: str) -> JobStatus:
        status = self.status(job_id)
        if status.status in FINISHED:
            return status
        ctx = self._contexts.get(job_id)
        if ctx is None:
            raise InvalidRequestError(f"job {job_id} is not run by this omnitune process.",
                                      "nothing to cancel: its owner is gone, so it was marked failed (interrupted).")
        ctx.cancelled.set()
        self._update(job_id, message="cancel requested")
        return self.status(job_id)

    def wait(self, job_id: str, timeout: float, since: float | None = None) -> JobStatus:
        """Block until the job finishes (or, given ``since``, its record changes after that time) or ``timeout``
        seconds pass; its status either way."""
        deadline = now() + timeout
        with self._changed:
            while True:
                status = self.status(job_id)
                left = deadline - now()
                if status.status in FINISHED or left <= 0 or (since is not None and status.updated_at > since):
                    return status
                self._changed.wait(min(left, 0.5))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every running job and give each a bounded time to record what it has."""
        for ctx in self._contexts.values():
            ctx.cancelled.set()
        deadline = now() + timeout
        for thread in self._threads.values():
            thread.join(max(0.0, deadline - now()))
