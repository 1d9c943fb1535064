"""MCP surface of ``tools.benchmark``: ``benchmark`` (blocks up to 40 s by default, progress per request, then a
job handle) and ``benchmark_start`` (a background job; job_status / job_wait / job_cancel follow it)."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field, ValidationError

from omnitune.server.state import DEFAULT_WAIT_S, AppState, agent_errors, annotations, follow_job, in_thread, state_of
from omnitune.tools.benchmark import BenchmarkResult, BenchmarkTarget, Workload, plan, run_benchmark
from omnitune.tools.benchmark.target import resolve
from omnitune.tools.errors import BenchmarkError, InvalidRequestError
from omnitune.tools.jobs import FINISHED, JobStatus
from omnitune.tools.pictures import PictureLink, link
from omnitune.tools.workspace import new_id

ServerIdArg = Annotated[str | None, Field(description="Server to measure: an id from launch_server/list_servers.")]
BaseUrlArg = Annotated[str | None, Field(description="Instead of server_id: http://127.0.0.1:PORT of a vLLM-Omni "
                                                     "server started outside omnitune.")]
GpuIndex = Annotated[int, Field(ge=0, le=1023)]
GpusArg = Annotated[list[GpuIndex] | None, Field(max_length=1024, description="With base_url: the physical GPU "
                                                 "indices it runs on (sampled with NVML). Ignored with server_id.")]
WorkloadArg = Annotated[Workload, Field(description="What to send; defaults: 4 built-in prompts, 1024x1024, seed 42, "
                                                    "1 warm-up per size, 8 measured requests, concurrency 1.")]


class BenchmarkCall(BenchmarkResult):
    """What the blocking ``benchmark`` returns: the result, or (still measuring) the job to follow."""

    job: JobStatus | None = Field(None, description="While the run goes on (status 'running'): its job, with "
                                                    "poll_interval_ms and next_step.")
    pictures: list[PictureLink] = Field(default_factory=list, description="The run's outputs as a grid "
                                                                          "(show_picture or the uri).")
    next_step: str = Field("", description="What to do with this result now.")


def _target(server_id: str | None, base_url: str | None, gpus: list[int] | None) -> BenchmarkTarget:
    try:
        return BenchmarkTarget(server_id=server_id, base_url=base_url, gpus=gpus or [])
    except ValidationError:
        raise InvalidRequestError("name the server to measure exactly once.",
                                  "pass server_id (from launch_server) or base_url plus gpus, not both.") from None


def _start(state: AppState, target: BenchmarkTarget, workload: Workload) -> tuple[JobStatus, str]:
    run_id = new_id("bench")
    workspace = state.workspace

    def job(ctx) -> BenchmarkResult:
        return run_benchmark(workspace, target, workload, ctx.report, ctx.cancelled, run_id)

    params = {"target": target.model_dump(mode="json"), "workload": workload.model_dump(mode="json"),
              "run_id": run_id}
    return state.jobs.start("benchmark", params, job), run_id


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=annotations(title="Benchmark a server"))
    @agent_errors
    async def benchmark(workload: WorkloadArg, ctx: Context, server_id: ServerIdArg = None,
                        base_url: BaseUrlArg = None, gpus: GpusArg = None,
                        wait_s: Annotated[float, Field(ge=1, le=600, description=(
                            "Longest time this call blocks, seconds; past it the run goes on as a job. Over ~50 s "
                            "risks the client's own tool-call limit."))] = DEFAULT_WAIT_S,
                        dry_run: Annotated[bool, Field(description="Send nothing: return the exact requests "
                                                                   "(endpoint, fields) the run would send.")] = False,
                        ) -> BenchmarkCall:
        """Measure a running vLLM-Omni server: warm-up at each measured size, then timed requests.

        Returns end-to-end latency (mean, p50/p90/p99, min, max, std; seconds), the cold first request
        apart, throughput (images/s or video seconds/s), the server's own inference_time_s /
        peak_memory_mb / stage_durations, per-GPU memory peak/mean (MiB) and utilisation sampled with NVML
        at 200 Hz, failures with their errors, and the run folder with the PNG/MP4 outputs that
        compare_outputs pairs by prompt, seed and index (`pictures` links the outputs as a grid).
        Sends a progress notification per request. Blocks at most `wait_s` (40 s by default): a longer run
        keeps going as a job and the result has status 'running', job_id and `job` (poll hint, next step):
        follow it with job_wait. For long runs call benchmark_start. dry_run=true shows the exact requests
        without sending any.
        """
        state = state_of(ctx)
        target = _target(server_id, base_url, gpus)
        if dry_run:
            await in_thread(resolve, state.workspace.store, target)  # the target must exist all the same
            return BenchmarkCall.model_validate({"run_id": None, "status": "dry_run", "plan": plan(workload),
                                                 "next_step": "call benchmark again without dry_run to measure."})
        started, run_id = await in_thread(_start, state, target, workload)
        status = await follow_job(ctx, state.jobs, started.id, wait_s)
        if status.status not in FINISHED:
            return BenchmarkCall.model_validate({
                "run_id": run_id, "status": "running", "run_dir": str(state.workspace.runs_dir / run_id),
                "job_id": status.id, "job": status, "next_step": status.next_step})
        if status.result is None:
            raise BenchmarkError(f"benchmark {run_id} did not run: {status.error or status.message}")
        done = BenchmarkResult.model_validate({**status.result, "job_id": status.id})
        saved = bool(done.summary and done.summary.outputs_saved)
        return BenchmarkCall(**dict(done), pictures=[link("run_grid", run_id)] if saved else [],
                             next_step=f"compare_outputs(baseline_run=<the baseline's run_id>, candidate_run="
                                       f"'{run_id}') judges its outputs; show_picture(picture='run_grid', "
                                       f"id='{run_id}') shows them.")

    @mcp.tool(annotations=annotations(title="Start a benchmark job"))
    @agent_errors
    async def benchmark_start(workload: WorkloadArg, ctx: Context, server_id: ServerIdArg = None,
                              base_url: BaseUrlArg = None, gpus: GpusArg = None) -> JobStatus:
        """Start the same measurement as `benchmark` in the background and return its job id at once.

        Follow it with job_status (poll) or job_wait (blocks, relays progress); its `result` is the
        benchmark result (run_id, summary, run_dir). job_cancel stops it after the requests in flight:
        the server keeps running and everything measured so far stays recorded (status 'cancelled').
        """
        status, _ = await in_thread(_start, state_of(ctx), _target(server_id, base_url, gpus), workload)
        return status
