"""MCP surface of ``tools.compare``: the structured comparison plus its contact sheet as an image."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ImageContent, TextContent
from pydantic import Field

from server.state import agent_errors, annotations, in_thread, state_of
from tools.compare import Comparison, Thresholds, compare_runs

RunId = Annotated[str, Field(description="A run_id returned by benchmark.")]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=annotations(read_only=False, destructive=False, idempotent=True, title="Compare outputs"))
    @agent_errors
    async def compare_outputs(baseline_run: RunId, candidate_run: RunId, ctx: Context,
                              thresholds: Thresholds | None = None,
                              across_steps: Annotated[bool, Field(description="Allow different step counts (judging "
                                                                              "'fewer steps' on purpose).")] = False,
                              amplify: Annotated[float, Field(ge=1, le=100, description="Difference heatmap gain.")] = 8,
                              ) -> Annotated[CallToolResult, Comparison]:
        """Is the candidate configuration still good enough? Pairs the two runs' outputs by prompt, seed, size and
        index (refusing runs that asked for different pictures), measures PSNR (dB) and luma SSIM (MS-SSIM where the
        size allows; per frame, worst frame and temporal difference for video), gives a verdict per pair and for the
        run (identical / lossless-equivalent / acceptable / degraded), joins the speed-up and memory change from the
        two benchmarks, and returns a contact sheet (baseline | candidate | amplified difference, worst pairs first)
        as an image to look at. Every pair's side-by-side PNG is saved in the comparison folder.
        """
        state = state_of(ctx)
        result = await in_thread(compare_runs, state.workspace, baseline_run, candidate_run, thresholds, across_steps,
                                 amplify)
        sheet = base64.b64encode(Path(result.contact_sheet).read_bytes()).decode()
        t = result.trade_off
        speed = f"{t.speedup_p50:.2f}x at p50" if t.speedup_p50 else "speed-up unknown"
        text = (f"verdict {result.verdict} over {result.pairs} pairs ({speed}); worst pair PSNR "
                f"{result.worst.psnr_db if result.worst.psnr_db is not None else 'inf'} dB, SSIM {result.worst.ssim:.4f}."
                f" Contact sheet: {result.contact_sheet}")
        return CallToolResult(content=[TextContent(type="text", text=text),
                                       ImageContent(type="image", data=sheet, mime_type="image/png")],
                              structured_content=result.model_dump(mode="json"))
