"""Shared state for the MCP surface: the lifespan that opens the workspace, and tool plumbing.

``AppState`` is what every tool reaches through ``ctx``. Capabilities that need long-lived
objects (the process registry, caches) create them on first use with :meth:`AppState.service`
and register their own clean-up, so this module does not grow with every capability.
"""

import functools
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from omnitune.tools.errors import OmnituneError
from omnitune.tools.jobs import FINISHED, WAIT_S, JobManager, JobStatus
from omnitune.tools.settings import Settings, settings_from_env
from omnitune.tools.workspace import Workspace

log = logging.getLogger("omnitune")
T = TypeVar("T")
JOB_GRACE_S = 2.5  # a cancelled benchmark stops within its 2 s grace; an MCP stdio client allows ~4 s in all


@dataclass(eq=False)
class AppState:
    settings: Settings
    workspace: Workspace
    jobs: JobManager
    _services: dict[str, Any] = field(default_factory=dict)
    _cleanups: list[Callable[[], None]] = field(default_factory=list)
    _closing: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def service(self, name: str, factory: Callable[["AppState"], T]) -> T:
        """A long-lived object created on first use (e.g. the launcher's process registry)."""
        if name not in self._services:
            self._services[name] = factory(self)
        return self._services[name]

    def on_shutdown(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def close(self) -> None:
        """Jobs first (cancelled, given a bounded time to record the cancel truthfully), then the servers, then
        the store: a server stopped under a running job would be recorded as a failed or truncated measurement."""
        self.jobs.cancel_all()
        self.jobs.join(JOB_GRACE_S)
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception:
                log.exception("clean-up %s failed", getattr(fn, "__qualname__", fn))
        self.jobs.join(2.0)  # a job still blocked on a server that was just stopped ends now
        self.jobs.close()
        self.workspace.close()

    def close_once(self) -> None:
        """close() exactly once, whoever asks first (the lifespan's end, or a SIGTERM); the other waits for it."""
        with self._closing:
            if self._closed:
                return
            try:
                self.close()
            finally:
                self._closed = True
                _LIVE.discard(self)


_LIVE: set[AppState] = set()  # states a signal handler must close (server/main.py installs it)


def register_for_signals(state: AppState) -> None:
    _LIVE.add(state)


def close_all() -> None:
    """What SIGTERM runs: the same clean-up as a normal end (jobs marked, servers stopped, store closed)."""
    for state in list(_LIVE):
        try:
            state.close_once()
        except Exception:
            log.exception("clean-up on signal failed")


def make_lifespan(settings: Settings | None):
    """Open the workspace when the server starts, and close everything it started when it stops."""

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[AppState]:
        resolved = settings or settings_from_env()
        workspace = Workspace.open(resolved)
        state = AppState(settings=resolved, workspace=workspace, jobs=JobManager(workspace.store))
        from omnitune.tools.benchmark.records import close_orphaned_runs
        close_orphaned_runs(workspace)  # runs a dead omnitune left 'running' are closed at once, by the owner rule
        log.info("omnitune workspace %s (schema %d)", workspace.root, workspace.store.schema_version)
        register_for_signals(state)
        try:
            yield state
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled server (SIGINT/SIGTERM) still cleans up
                await anyio.to_thread.run_sync(state.close_once)

    return lifespan


def state_of(ctx: Context) -> AppState:
    return cast(AppState, ctx.request_context.lifespan_context)


def annotations(*, read_only: bool = False, destructive: bool = False, idempotent: bool = False,
                open_world: bool = False, title: str | None = None) -> ToolAnnotations:
    return ToolAnnotations(title=title, read_only_hint=read_only, destructive_hint=destructive,
                           idempotent_hint=idempotent, open_world_hint=open_world)


def agent_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn omnitune's anticipated errors into MCP tool errors whose text reaches the agent.

    Anything else is a bug: the SDK reports a generic error and logs the traceback to stderr.
    """
    @functools.wraps(fn)
    async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except OmnituneError as exc:
            raise ToolError(str(exc)) from exc

    @functools.wraps(fn)
    def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OmnituneError as exc:
            raise ToolError(str(exc)) from exc

    wrapper = async_wrapper if inspect.iscoroutinefunction(fn) else sync_wrapper
    wrapper.__doc__ = inspect.cleandoc(fn.__doc__ or "")  # agents read descriptions without source indentation
    return wrapper


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Blocking work (NVML, subprocesses, sqlite) off the event loop."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


DEFAULT_WAIT_S = WAIT_S  # clients cut tool calls after about a minute: a blocking call returns well before
WAIT_SLICE_S = 0.5  # how often a waiting call looks for progress to relay


async def follow_job(ctx: Context, jobs: JobManager, job_id: str, timeout: float, *,
                     cancel_on_abort: bool = True) -> JobStatus:
    """Wait (bounded by ``timeout``) for a job on :meth:`JobManager.wait`, relaying each change of its progress
    to the client as a progress notification (never a smaller value than one already sent).

    The one wait of the MCP surface (launch_server, benchmark, job_wait). With ``cancel_on_abort`` the job is
    cancelled when the call itself is (the agent gave up on a blocking run); job_wait leaves it running.
    """
    deadline = anyio.current_time() + timeout
    since, sent = 0.0, 0.0  # since=0: the first look returns at once; progress 0 says nothing
    try:
        while True:
            left = deadline - anyio.current_time()
            # short slices: a cancelled call is noticed within WAIT_SLICE_S even while nothing changes
            status = await in_thread(jobs.wait, job_id, max(0.0, min(left, WAIT_SLICE_S)), since)
            since = status.updated_at
            if status.progress > sent:
                sent = status.progress
                await ctx.report_progress(status.progress, status.total, status.message)
            if status.status in FINISHED or anyio.current_time() >= deadline:
                return status
    except anyio.get_cancelled_exc_class():
        if cancel_on_abort:
            jobs.cancel(job_id)
        raise
