"""MCP surface of ``tools.plan`` and ``tools.tune``."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from omnitune.server.lifecycle import launcher
from omnitune.server.state import agent_errors, annotations, in_thread, state_of
from omnitune.tools.errors import InvalidRequestError
from omnitune.tools.jobs import JobStatus
from omnitune.tools.plan import Goal, Plan, make_plan, model_capability
from omnitune.tools.tune import TuneRequest, resumable_request, tune_job
from omnitune.tools.workspace import new_id


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=annotations(read_only=True, idempotent=True, title="Plan candidate configurations"))
    @agent_errors
    async def plan(model: Annotated[str, Field(description="Model folder, cached HF id, or pipeline class.")],
                   ctx: Context, goal: Goal | None = None) -> Plan:
        """The guide's decision flowchart applied to this machine and model: an ordered list of candidate
        configurations (baseline, lossless, lossy if the goal allows) with the reason, the evidence (capability
        report path:line, hardware facts) and the expected gain, plus every configuration pruned and why.
        Nothing is launched; tune_start measures the plan."""
        state = state_of(ctx)
        made = await in_thread(make_plan, state.settings, model, goal or Goal.model_validate({}))
        gpus = sorted({g for c in made.candidates for g in (c.config.get("gpus") or [0])})
        for view in await in_thread(launcher(state).holders, gpus):  # GPU accounting: say what is taken
            made.notes.append(f"GPU {sorted(view.server.gpus)} is held by omnitune server {view.server.id} "
                              f"({view.state}): stop it before measuring candidates that use it")
        return made

    @mcp.tool(annotations=annotations(destructive=True, title="Start an automatic tune"))
    @agent_errors
    async def tune_start(ctx: Context, request: TuneRequest | None = None,
                         resume: Annotated[str | None, Field(description=(
                             "Instead of a request: the id of a tune job that failed (also 'interrupted: ...', e.g. a "
                             "lost Ray node) or was cancelled, to continue under its own id."))] = None) -> JobStatus:
        """Find the best serving configuration automatically, as a background job.

        Baseline: eager on one GPU; else offloaded; else the fewest GPUs whose TP fits (all under
        goal.vram_limit_mib, if set). Then lossless candidates (compile + FP8, the parallel layouts the GPUs and
        the model allow), then lossy settings swept gentle to aggressive, each compared with the baseline and
        stopped at the quality cliff (on one GPU with the winning layout's other settings, side by side; the
        best then measured and judged on the layout), then request-level steps and guidance measured inside
        one server. With
        goal.objective 'throughput', every trial keeps the GPUs busy (as many requests in flight as GPUs) and
        replicas of the best configuration are tried too (independent servers on disjoint GPUs, requests spread
        over them: more images per second, the same latency per request).
        Configurations measured before are reused; `resume=<job id>` continues a job whose omnitune died or that a
        lost Ray node interrupted (its outcomes are replayed from the store, trials lost with their node run again,
        servers it left running are stopped). Follow with job_status /
        job_wait; the result holds the winning `vllm serve` command, every candidate's outcome, a Pareto plot
        and a markdown report."""
        state = state_of(ctx)  # read-only mode refuses this tool in server/policy.py
        if (request is None) == (resume is None):
            raise InvalidRequestError("give either a request (a new tune) or resume (a job id), not both or neither.",
                                      "tune_start(request={...}) to start; tune_start(resume='tune-...') to continue.")
        run = launcher(state)
        if resume is not None:
            job_id = resume
            resumed, notes = await in_thread(resumable_request, state.workspace, run, job_id)
            return await in_thread(lambda: state.jobs.resume(job_id, lambda job: tune_job(
                state.workspace, run, resumed, job_id, job.report, job.cancelled, notes)))
        assert request is not None
        # A model that cannot be served is refused now, not after a job "completes" with no winner.
        await in_thread(model_capability, state.settings, request.model, True)
        job_id = new_id("tune")
        return await in_thread(lambda: state.jobs.start(
            "tune", request.model_dump(mode="json"),
            lambda job: tune_job(state.workspace, run, request, job_id, job.report, job.cancelled),
            job_id=job_id))
