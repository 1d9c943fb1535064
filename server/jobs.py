"""MCP surface of ``tools.jobs``: one set of status/result/cancel tools for every kind of job."""

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from omnitune.server.state import DEFAULT_WAIT_S, agent_errors, annotations, follow_job, in_thread, state_of
from omnitune.tools.jobs import JobStatus

JobId = Annotated[str, Field(description="The id a start tool (benchmark_start, tune_start) returned.")]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=annotations(read_only=True, idempotent=True, title="Job status"))
    @agent_errors
    async def job_status(job_id: JobId, ctx: Context) -> JobStatus:
        """Progress of a background job (benchmark or tune): status, progress/total, what it is doing now.

        Status as the MCP tasks extension names it: working, input_required, completed, failed (an `error` says
        why; "interrupted: ..." when its omnitune died), cancelled. While working, poll again after
        `poll_interval_ms`; once finished `result` holds what the job produced (partial for cancelled runs),
        `pictures` links its pictures and `next_step` says what to do.
        """
        return await in_thread(state_of(ctx).jobs.status, job_id)

    @mcp.tool(annotations=annotations(read_only=True, idempotent=True, title="Wait for a job"))
    @agent_errors
    async def job_wait(job_id: JobId, ctx: Context,
                       timeout_s: Annotated[float, Field(ge=0, le=600, description=(
                           "Longest wait, seconds. Over ~50 s risks the client's own tool-call limit."))
                       ] = DEFAULT_WAIT_S,
                       ) -> JobStatus:
        """Wait (40 s by default) for a background job to finish, relaying its progress as notifications; returns
        its status either way. Still `working`: call job_wait again (the job keeps running meanwhile)."""
        state = state_of(ctx)
        return await follow_job(ctx, state.jobs, job_id, timeout_s, cancel_on_abort=False)

    @mcp.tool(annotations=annotations(destructive=False, idempotent=True, title="Cancel a job"))
    @agent_errors
    async def job_cancel(job_id: JobId, ctx: Context) -> JobStatus:
        """Ask a background job to stop after its current step. Servers stay up; what was measured is kept."""
        return await in_thread(state_of(ctx).jobs.cancel, job_id)
