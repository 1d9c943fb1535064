"""MCP surface of ``tools.compare``: the structured comparison, with links to its pictures (see server/pictures)."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from omnitune.server.state import agent_errors, annotations, in_thread, state_of
from omnitune.tools.compare import Comparison, Thresholds, compare_runs

RunId = Annotated[str, Field(description="A run_id returned by benchmark.")]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=annotations(read_only=False, destructive=False, idempotent=True, title="Compare outputs"))
    @agent_errors
    async def compare_outputs(
        baseline_run: RunId, candidate_run: RunId, ctx: Context,
        thresholds: Annotated[Thresholds | None, Field(description="Verdict thresholds; defaults: lossless-"
                                                                   "equivalent PSNR >= 40 dB, acceptable PSNR >= 30 dB "
                                                                   "and SSIM >= 0.90, broken below 20 dB.")] = None,
        across_steps: Annotated[bool, Field(description="Allow different num_inference_steps (judging 'fewer "
                                                        "steps' on purpose).")] = False,
        allow_differences: Annotated[list[str] | None, Field(description="Other request parameters allowed to "
                                                                         "differ on purpose, e.g. ['guidance_scale']."
                                                             )] = None,
        amplify: Annotated[float, Field(ge=1, le=100, description="Gain of the difference heatmap (times the "
                                                                  "absolute pixel difference).")] = 8,
    ) -> Comparison:
        """Is the candidate configuration still good enough, and how much faster is it? Use after benchmarking a
        baseline (e.g. --enforce-eager) and a candidate with the same workload. Pairs the two runs' outputs by
        prompt, seed, size and index (refusing runs that asked for different pictures), measures PSNR (dB), luma
        SSIM and MS-SSIM (0-1; for video per frame, worst frame and a temporal measure), gives a verdict per pair and
        for the run (identical / lossless-equivalent / acceptable / degraded; the run gets its worst pair's), and
        joins the speed-up of p50 latency and throughput and the peak-memory change (MiB) from the two benchmarks.
        `pictures` links the contact sheet (baseline | candidate | amplified difference, worst pairs first), the
        worst pair and each pictured pair: look at them with show_picture (or read the uri as a resource).
        """
        return await in_thread(compare_runs, state_of(ctx).workspace, baseline_run, candidate_run, thresholds,
                               across_steps, amplify, None, allow_differences)
