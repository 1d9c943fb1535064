"""MCP surface of ``tools.launch``: launch_server, stop_server, list_servers, server_logs."""

from __future__ import annotations

import importlib.util
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from omnitune.server.state import DEFAULT_WAIT_S, AppState, agent_errors, annotations, follow_job, in_thread, state_of
from omnitune.tools.jobs import JobStatus
from omnitune.tools.launch import Launcher, ServeConfig, ServerView, StopResult
from omnitune.tools.launch.launcher import LaunchResult, quote
from omnitune.tools.servers import get_server
from omnitune.tools.workspace import new_id

ServerId = Annotated[str, Field(description="Id from launch_server or list_servers, e.g. srv-20261128-201502-3f9a1c.")]


def launcher(state: AppState) -> Launcher:
    def make(s: AppState) -> Launcher:
        capabilities = None
        if importlib.util.find_spec("omnitune.tools.capabilities") is not None:
            from omnitune.tools.capabilities import inspect_model
            capabilities = lambda model: inspect_model(s.settings, model)  # noqa: E731
        made = Launcher(s.settings, s.workspace, capabilities)
        if s.settings.stop_on_exit:
            s.on_shutdown(made.stop_owned)
        return made
    return state.service("launcher", make)


class LaunchCall(LaunchResult):
    """What launch_server returns: the healthy server, or (still loading after wait_s) the launch job to follow."""

    job: JobStatus | None = Field(default=None, description="While the server still loads: its launch job (server "
                                  "state 'starting'); job_wait until completed, its result is the launch result.")
    next_step: str = Field("", description="What to do now.")


def _launch_call(state: AppState, job_id: str, status: JobStatus) -> LaunchCall:
    if status.status == "completed" and status.result:
        sid = status.result["server"]["id"]
        return LaunchCall.model_validate({**status.result, "next_step": (
            f"benchmark(server_id='{sid}') measures it; stop_server(server_id='{sid}') when done.")})
    if status.status in ("failed", "cancelled"):
        raise ToolError(status.error or f"the launch {status.status}.")
    rows = state.workspace.store.query(
        "SELECT id FROM servers WHERE json_extract(data, '$.labels.launch_job') = ?", (job_id,))
    server = get_server(state.workspace.store, rows[0]["id"]) if rows else None
    return LaunchCall.model_validate({
        "dry_run": False, "argv": server.argv if server else [], "env": server.env if server else {},
        "warnings": server.data.get("warnings", []) if server else [], "server": server,
        "command": quote(server.argv) if server else "", "job": status, "next_step": status.next_step})


class ServerList(BaseModel):
    servers: list[ServerView]


class ServerLog(BaseModel):
    server_id: str
    log_path: str
    text: str = Field(description="The last lines of the server's stdout+stderr.")


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=annotations(destructive=True, open_world=False, title="Launch vllm serve"))
    @agent_errors
    async def launch_server(config: ServeConfig, ctx: Context, dry_run: bool = False,
                            wait_s: Annotated[float, Field(ge=1, le=600, description=(
                                "Longest time this call blocks, seconds; a server still loading then goes on as a "
                                "job. Over ~50 s risks the client's own tool-call limit."))] = DEFAULT_WAIT_S,
                            ) -> LaunchCall:
        """Start `vllm serve MODEL --omni ...` from a typed configuration and wait until /health answers 200.

        The configuration is validated first against detect_gpus and the model's capability report: refused
        configurations fail with the reason and the fix before any process starts. dry_run=true returns the exact
        argv and environment only. The server runs in its own process group on 127.0.0.1 (a free port unless
        given), logs to its run folder, and is stopped with stop_server. Baseline: enforce_eager=true, one GPU.
        Blocks at most `wait_s` (40 s by default), with progress notifications: a model still loading then keeps
        loading as a launch job (`job`, server state 'starting'); follow it with job_wait.
        """
        state = state_of(ctx)
        run = launcher(state)
        if dry_run:
            planned = await in_thread(run.launch, config, True)
            return LaunchCall.model_validate({**planned.model_dump(), "next_step": "launch_server without dry_run "
                                                                                  "starts it."})
        job_id = new_id("launch")
        await in_thread(lambda: state.jobs.start("launch", {"config": config.model_dump(mode="json")}, lambda job: (
            run.launch(config, False, job.report, labels={"launch_job": job_id})), job_id=job_id))
        status = await follow_job(ctx, state.jobs, job_id, wait_s, cancel_on_abort=False)
        return await in_thread(_launch_call, state, job_id, status)

    @mcp.tool(annotations=annotations(destructive=True, idempotent=True, title="Stop a server"))
    @agent_errors
    async def stop_server(server_id: ServerId, ctx: Context,
                          grace_s: Annotated[float, Field(ge=0, le=120, description="Seconds between SIGTERM and "
                                                                                     "SIGKILL.")] = 10) -> StopResult:
        """Stop a server (also an orphan of an earlier omnitune): SIGTERM to its process group, SIGKILL after the
        grace period, then confirm no process is left and its GPUs' memory is released."""
        return await in_thread(launcher(state_of(ctx)).stop, server_id, grace_s)

    @mcp.tool(annotations=annotations(read_only=True, idempotent=True, title="List servers"))
    @agent_errors
    async def list_servers(ctx: Context) -> ServerList:
        """Every server omnitune launched in this workspace: running, orphaned (alive, launched by an omnitune that
        is gone), exited, failed (with its classified cause) or stopped."""
        return ServerList(servers=await in_thread(launcher(state_of(ctx)).list))

    @mcp.tool(annotations=annotations(read_only=True, idempotent=True, title="Server log"))
    @agent_errors
    async def server_logs(server_id: ServerId, ctx: Context,
                          lines: Annotated[int, Field(ge=1, le=2000, description="How many last lines.")] = 100,
                          ) -> ServerLog:
        """The last lines of a server's log (stdout and stderr): read it when a launch failed or a server misbehaves."""
        state = state_of(ctx)
        text = await in_thread(launcher(state).logs, server_id, lines)
        from omnitune.tools.servers import get_server
        return ServerLog(server_id=server_id, log_path=get_server(state.workspace.store, server_id).log_path, text=text)
