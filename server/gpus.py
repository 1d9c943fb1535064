"""MCP surface of ``tools.gpus``."""

from mcp.server.mcpserver import Context, MCPServer

from omnitune.server.state import agent_errors, annotations, in_thread, state_of
from omnitune.tools.gpus import GpuReport, detect_gpus


def register(mcp: MCPServer) -> None:
    @mcp.tool(name="detect_gpus", annotations=annotations(read_only=True, idempotent=True, title="Detect GPUs"))
    @agent_errors
    async def detect_gpus_tool(ctx: Context) -> GpuReport:
        """The GPUs of this machine and how they are linked, read live from NVML, plus host CPU, RAM and disk.

        Use it first: it decides which parallel layouts (needs N GPUs; NVLink makes sequence parallel cheap),
        whether FP8 runs natively (fp8_native: SM 8.9+) and whether CPU offload has RAM to spare.
        Memory figures are MiB. `available=false` with a `reason` means no usable NVIDIA GPU (not an error).
        """
        return await in_thread(detect_gpus, state_of(ctx).workspace.root)
