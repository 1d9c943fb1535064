"""Who owns a record: the ONE liveness rule for jobs, runs and servers (pid + process start time).

A pid alone is not an owner: another omnitune on the same workspace has another pid but is alive, and a dead
omnitune's pid may be reused by an unrelated process. So an owner is (pid, create_time) and it is alive only
when a process with that pid exists, is not a zombie, and started at that time (within a second).
"""

from __future__ import annotations

import os

import psutil


def identity(pid: int) -> float | None:
    """create_time of a live process (tells a reused pid apart), None if gone or a zombie."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p.create_time()
    except (psutil.Error, OSError):
        return None


_ME: tuple[int, float | None] | None = None


def me() -> tuple[int, float | None]:
    """This omnitune process as an owner: (pid, start time); computed once per process (a fork gets its own)."""
    global _ME
    if _ME is None or _ME[0] != os.getpid():
        _ME = (os.getpid(), identity(os.getpid()))
    return _ME


def alive(pid: int | None, start_time: float | None) -> bool:
    """The owner (pid, start time) still runs. A record without a start time (older omnitune) counts as alive
    only while its pid does: never marking a live owner's work dead matters more than tidying at once."""
    if pid is None:
        return False
    started = identity(pid)
    if started is None:
        return False
    return start_time is None or abs(started - start_time) < 1.0


def is_me(pid: int | None, start_time: float | None) -> bool:
    own_pid, own_start = me()
    return pid == own_pid and (start_time is None or own_start is None or abs(own_start - start_time) < 1.0)


def stopped(pid: int | None, start_time: float | None) -> bool:
    """The process is frozen by a signal (SIGSTOP, SIGTSTP) or a debugger."""
    try:
        proc = psutil.Process(pid) if pid is not None else None
        return proc is not None and (start_time is None or abs(proc.create_time() - start_time) < 1) and \
            proc.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


def process_problem(pid: int | None, start_time: float | None) -> str | None:
    """Why the server's leader process cannot answer (stopped by a signal, gone), or None."""
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        if start_time is not None and abs(proc.create_time() - start_time) >= 1:
            return f"process {pid} is gone"
        status = proc.status()
    except psutil.Error:
        return f"process {pid} is gone"
    if status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
        return f"process {pid} is stopped (SIGSTOP or a debugger); it answers nothing until continued (SIGCONT)"
    if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
        return f"process {pid} has exited"
    return None
