"""MCP surface of ``tools.compare``: the structured comparison plus its pictures as MCP image content."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ImageContent, TextContent
from pydantic import Field

from omnitune.server.state import agent_errors, annotations, in_thread, state_of
from omnitune.tools.compare import Comparison, Thresholds, compare_runs

RunId = Annotated[str, Field(description="A run_id returned by benchmark.")]


def _image(path: str) -> ImageContent:
    return ImageContent(type="image", data=base64.b64encode(Path(path).read_bytes()).decode(), mime_type="image/png")


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
        images: Annotated[Literal["sheet_and_worst", "sheet", "none"], Field(
            description="Pictures returned as image content: the contact sheet (worst pairs first) and the worst "
                        "pair at viewing size; 'none' to save context (the PNGs are saved either way).")
        ] = "sheet_and_worst",
    ) -> Annotated[CallToolResult, Comparison]:
        """Is the candidate configuration still good enough, and how much faster is it? Use after benchmarking a
        baseline (e.g. --enforce-eager) and a candidate with the same workload. Pairs the two runs' outputs by
        prompt, seed, size and index (refusing runs that asked for different pictures), measures PSNR (dB), luma
        SSIM and MS-SSIM (0-1; for video per frame, worst frame and a temporal measure), gives a verdict per pair and
        for the run (identical / lossless-equivalent / acceptable / degraded; the run gets its worst pair's), and
        joins the speed-up of p50 latency and throughput and the peak-memory change (MiB) from the two benchmarks.
        Returns the contact sheet (baseline | candidate | amplified difference, worst pairs first) and the worst
        pair as images to look at; every pair's full-size PNG is saved in the comparison folder.
        """
        result = await in_thread(compare_runs, state_of(ctx).workspace, baseline_run, candidate_run, thresholds,
                                 across_steps, amplify, None, allow_differences)
        content: list[TextContent | ImageContent] = [
            TextContent(type="text", text=f"{result.summary} Pictures: {result.folder}")]
        if images != "none":
            content.append(_image(result.contact_sheet))
        if images == "sheet_and_worst" and result.worst_picture:
            content.append(_image(result.worst_picture))
        return CallToolResult(content=content, structured_content=result.model_dump(mode="json"))
