"""Pictures that reach the model in every client: ``show_picture`` (image content only, no output schema) and the
same PNGs as ``omnitune://pictures/{id}/{picture}`` resources; structured results link both (``PictureLink``).

Claude Code gives the model only a result's structured content, and an image block beside it never arrives; a
tool without an output schema has no structured content, so its image content is what the model sees.
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from pydantic import Field

from omnitune.server.state import agent_errors, annotations, in_thread, state_of
from omnitune.tools import pictures
from omnitune.tools.errors import OmnituneError
from omnitune.tools.pictures import MAX_SIDE, PictureKind


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=annotations(read_only=True, idempotent=True, title="Show a picture"))
    @agent_errors
    async def show_picture(
        picture: Annotated[PictureKind, Field(description=(
            "contact_sheet / worst_pair / pair: of a comparison (id = its id); pareto: a tune's latency-quality "
            "plot (id = the tune job id); run_grid: a benchmark run's outputs (id = its run_id)."))],
        id: Annotated[str, Field(max_length=128, description="The comparison id, tune job id or run id, as in the "
                                                             "`pictures` links of a result.")],
        ctx: Context,
        pair: Annotated[int | None, Field(ge=0, description="For picture='pair': the pair index.")] = None,
        max_side: Annotated[int, Field(ge=64, le=4096, description="Longest side in pixels (scaled down, never "
                                                                   "up).")] = MAX_SIDE,
    ) -> Image:
        """Look at a picture omnitune drew: the answer is the PNG itself (image content, nothing else).

        Results link their pictures in `pictures` (compare_outputs: contact sheet, worst pair, pairs; a finished
        tune: the Pareto plot; benchmark: the run's outputs). Captions are drawn into the picture.
        """
        return Image(data=await in_thread(pictures.load, state_of(ctx).workspace, picture, id, pair, max_side),
                     format="png")

    @mcp.resource(pictures.URI_TEMPLATE, mime_type="image/png", title="A picture omnitune drew")
    async def picture_resource(id: str, picture: str, ctx: Context) -> bytes:
        """A comparison's contact_sheet, worst_pair or pair-N, a tune's pareto, a run's run_grid, as PNG; the
        `pictures` links of results give the exact URIs."""
        try:
            kind, pair = pictures.parse_name(picture)
            return await in_thread(pictures.load, state_of(ctx).workspace, kind, id, pair)
        except OmnituneError as exc:
            raise ResourceError(str(exc)) from exc
