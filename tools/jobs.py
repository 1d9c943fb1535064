"""Background jobs (benchmark, tune): start returns an id at once; status, result and cancel later.

Each job runs in its own thread so an agent is never blocked for minutes and a slow job cannot
stall the MCP event loop. State lives in the ``jobs`` table, written on every change, so a
restarted omnitune still answers for jobs it ran before (a job whose omnitune died while it ran
is reported ``failed`` with an "interrupted" error; tune resumes such jobs from its own records).

States and fields follow the MCP tasks extension (``io.modelcontextprotocol/tasks``: working, input_required,
completed, failed, cancelled; a time-to-live and a poll interval), so a later switch to protocol tasks is a rename.

Ownership follows the one liveness rule (:mod:`omnitune.tools.owner`, pid + start time): another live
omnitune's jobs on the same workspace are never touched. A terminal state that cannot be written (full
disk) is kept in memory, reported by status/wait/cancel and written again on every later call, so a job
never stays ``working`` because its last write failed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from omnitune.tools import owner
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
        self._unwritten: dict[str, dict[str, Any]] = {}  # terminal changes a failed write could not store yet
        self._closed = False
        self._mark_interrupted()

    # -- ownership ------------------------------------------------------------------------------
    def _orphaned(self, row: Any) -> bool:
        """A working job whose omnitune is gone (never one of a live omnitune, this one included)."""
        pid, started = row["owner_pid"], row["owner_start_time"]
        return not owner.is_me(pid, started) and not owner.alive(pid, started)

    def _interrupt(self, job_id: str) -> None:
        self.store.execute(
            "UPDATE jobs SET status = 'failed', updated_at = ?, message = ?, error = ? "
            "WHERE id = ? AND status = 'working'", (now(), INTERRUPTED, INTERRUPTED, job_id))

    def _mark_interrupted(self) -> None:
        """Jobs left 'working' by an omnitune that is gone can never finish: failed, with the interrupted error."""
        for row in self.store.query("SELECT id, owner_pid, owner_start_time FROM jobs WHERE status = 'working'"):
            if self._orphaned(row):
                self._interrupt(row["id"])

    # -- start, resume, run ---------------------------------------------------------------------
    def start(self, kind: str, params: dict[str, Any], fn: JobFn, job_id: str | None = None) -> JobStatus:
        job_id = job_id or new_id(kind)
        t = now()
        pid, started = owner.me()
        self.store.insert("jobs", {"id": job_id, "kind": kind, "status": "working", "created_at": t, "updated_at": t,
                                   "params": params, "owner_pid": pid, "owner_start_time": started})
        return self._spawn(job_id, fn)

    def resume(self, job_id: str, fn: JobFn) -> JobStatus:
        """Run a job that ended without completing again, under its own id (its records are kept)."""
        status = self.status(job_id)
        if status.status not in ("failed", "cancelled"):
            row = self.store.query_one("SELECT owner_pid FROM jobs WHERE id = ?", (job_id,))
            where = "" if row is None or row["owner_pid"] == os.getpid() else f" in omnitune process {row['owner_pid']}"
            raise InvalidRequestError(
                f"job {job_id} is {status.status}{where}; "
                "only a failed (or interrupted) or cancelled job can be resumed.",
                "follow a running job with job_wait; a completed job's result is in job_status.")
        pid, started = owner.me()
        claimed = self.store.execute(  # one claim wins when two omnitunes resume the same job at once
            "UPDATE jobs SET status = 'working', owner_pid = ?, owner_start_time = ?, updated_at = ?, message = ?, "
            "error = NULL, result = NULL WHERE id = ? AND status = ?",
            (pid, started, now(), f"resumed (was {status.status})", job_id, status.status))
        if claimed != 1:
            raise InvalidRequestError(f"job {job_id} was resumed by another omnitune process at the same time.",
                                      "follow it with job_status; it runs there.")
        self._unwritten.pop(job_id, None)
        return self._spawn(job_id, fn)

    def _spawn(self, job_id: str, fn: JobFn) -> JobStatus:
        ctx = JobContext(self, job_id)
        thread = threading.Thread(target=self._run, args=(ctx, fn), name=f"job-{job_id}", daemon=True)
        self._contexts[job_id] = ctx
        self._threads[job_id] = thread
        thread.start()
        return self.status(job_id)

    def _run(self, ctx: JobContext, fn: JobFn) -> None:
        try:
            result = fn(ctx)
        except JobCancelled:
            self._finish(ctx.id, status="cancelled", message="cancelled on request")
        except OmnituneError as exc:
            self._finish(ctx.id, status="failed", error=str(exc), message="failed")
        except Exception as exc:  # a bug: keep the job record honest and the traceback in the log
            log.exception("job %s crashed", ctx.id)
            self._finish(ctx.id, status="failed", error=f"internal error: {type(exc).__name__}: {exc}",
                         message="failed")
        else:
            self._finish(ctx.id, **_ending(result, ctx.cancelled.is_set()))

    def _finish(self, job_id: str, **changes: Any) -> None:
        """The terminal write; if it fails (full disk) the state is kept in memory, reported, and retried."""
        try:
            self._update(job_id, **changes)
        except Exception as exc:
            log.error("job %s: recording its end (%s) failed: %s; kept in memory and retried", job_id,
                      changes.get("status"), exc)
            extra = f" (this state could not be written to the workspace database: {exc})"
            changes["error"] = (changes.get("error") or changes.get("message") or "") + extra
            changes["updated_at"] = now()
            self._unwritten[job_id] = changes
            with self._changed:
                self._changed.notify_all()

    def _flush(self) -> None:
        """Write terminal states kept in memory (they failed once); keep those that fail again."""
        for job_id, changes in list(self._unwritten.items()):
            try:
                self.store.update("jobs", {"id": job_id}, {**changes, "result": dumps(changes["result"])}
                                  if "result" in changes else changes)
            except Exception:
                continue
            self._unwritten.pop(job_id, None)

    def _update(self, job_id: str, **changes: Any) -> None:
        if self._closed:  # shut down: the job was already marked; a late thread must not overwrite that
            return
        changes = {k: v for k, v in changes.items() if v is not None}
        if "result" in changes:
            changes["result"] = dumps(changes["result"])
        changes["updated_at"] = now()
        self.store.update("jobs", {"id": job_id}, changes)
        with self._changed:
            self._changed.notify_all()

    def status(self, job_id: str) -> JobStatus:
        self._flush()
        row = self.store.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            known = [r["id"] for r in self.store.query("SELECT id FROM jobs ORDER BY created_at DESC LIMIT 5")]
            raise NotFoundError(f"no job {job_id!r}.",
                                f"use a job id returned by a start tool; recent: {known or 'none'}.")
        if row["status"] == "working" and job_id not in self._contexts and \
                job_id not in self._unwritten and self._orphaned(row):
            self._interrupt(job_id)  # its omnitune died after this one started: say so now
            row = self.store.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,)) or row
        values: dict[str, Any] = dict(row)
        values["result"] = json.loads(row["result"]) if row["result"] else None
        values.update(self._unwritten.get(job_id, {}))
        poll = POLL_INTERVAL_MS.get(values["kind"], 5000) if values["status"] not in FINISHED else None
        return JobStatus(id=values["id"], kind=values["kind"], status=values["status"], progress=values["progress"],
                         total=values["total"], message=values["message"], created_at=values["created_at"],
                         updated_at=values["updated_at"], error=values["error"], result=values["result"],
                         poll_interval_ms=poll, next_poll_at=now() + poll / 1000 if poll else None,
                         next_step=next_step(values["id"], values["kind"], values["status"]),
                         pictures=job_links(values["id"], values["kind"], values["result"]))

    def cancel(self, job_id: str) -> JobStatus:
        status = self.status(job_id)
        if status.status in FINISHED:
            return status
        ctx = self._contexts.get(job_id)
        if ctx is None:
            row = self.store.query_one("SELECT owner_pid FROM jobs WHERE id = ?", (job_id,))
            raise InvalidRequestError(f"job {job_id} is run by another omnitune process (pid "
                                      f"{row['owner_pid'] if row else '?'}), not this one.",
                                      "cancel it through that omnitune; this one never touches another's jobs.")
        ctx.cancelled.set()
        try:
            self._update(job_id, message="cancel requested")
        except OmnituneError as exc:  # the flag is set all the same: the job ends at its next check
            log.warning("job %s: could not record the cancel request: %s", job_id, exc)
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

    # -- shutdown ---------------------------------------------------------------------------------
    def cancel_all(self) -> None:
        """First step of a shutdown: every job of this process is asked to stop (before its servers are)."""
        for ctx in self._contexts.values():
            ctx.cancelled.set()

    def join(self, timeout: float) -> bool:
        """Wait (bounded) for this process's job threads; True when none is left."""
        deadline = now() + timeout
        for thread in self._threads.values():
            thread.join(max(0.0, deadline - now()))
        return not any(t.is_alive() for t in self._threads.values())

    def close(self) -> None:
        """Last step of a shutdown: a job whose thread is still going is recorded as interrupted (its own
        later writes are dropped), and terminal states kept in memory get one more try."""
        self._flush()
        for job_id, thread in self._threads.items():
            if thread.is_alive():
                log.warning("job %s did not stop in time; recorded as failed (interrupted)", job_id)
                why = "interrupted: omnitune shut down before this job could stop; results recorded so far are kept"
                try:
                    self.store.execute(
                        "UPDATE jobs SET status = 'failed', updated_at = ?, message = ?, error = ? WHERE id = ? AND "
                        "status = 'working'", (now(), why, why, job_id))
                except OmnituneError as exc:
                    log.error("job %s: could not record the interruption: %s", job_id, exc)
        for job_id in self._unwritten:
            log.error("job %s ended %s but the workspace database could not record it", job_id,
                      self._unwritten[job_id].get("status"))
        self._closed = True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every running job and give each a bounded time to record what it has."""
        self.cancel_all()
        self.join(timeout)
        self.close()


def _ending(result: BaseModel, cancelled: bool) -> dict[str, Any]:
    """The job's terminal state from what its function returned: a result that says it failed (a benchmark run
    ended early) fails the job too, so a job never says completed while its run says failed."""
    dumped = result.model_dump(mode="json")
    if cancelled or getattr(result, "status", None) == "cancelled":
        return {"status": "cancelled", "result": dumped, "message": "cancelled on request; partial result kept"}
    if getattr(result, "status", None) == "failed":
        summary = getattr(result, "summary", None)
        reason = getattr(summary, "aborted_reason", None) or "the run failed (see its result)"
        return {"status": "failed", "result": dumped, "error": reason, "message": "failed; partial result kept"}
    return {"status": "completed", "result": dumped, "message": "done"}
