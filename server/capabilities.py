"""MCP surface of ``tools.capabilities``: the inspect_model_capabilities tool."""

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from omnitune.server.state import agent_errors, annotations, in_thread, state_of
from omnitune.tools.capabilities import CapabilityReport, inspect_model


def register(mcp: MCPServer) -> None:
    @mcp.tool(name="inspect_model_capabilities",
              annotations=annotations(read_only=True, idempotent=True, title="Inspect model capabilities"))
    @agent_errors
    async def inspect_model_capabilities(
        model: Annotated[str, Field(description="A local diffusers model folder (holds model_index.json), a Hugging "
                                                "Face id already in the local cache (org/name), or a vLLM-Omni "
                                                "pipeline class name such as QwenImagePipeline.")],
        ctx: Context,
    ) -> CapabilityReport:
        """What the installed vLLM-Omni supports for this model, read from its source code, with evidence.

        Use it before planning or launching: for each method (ulysses_sp, ring_sp, cfg_parallel, tensor_parallel,
        vae_patch_parallel, hsdp, expert_parallel, regional_compile, cpu_offload, layerwise_offload, tea_cache,
        cache_dit, fp8) it gives status supported / unsupported / rejected (the model raises if you ask) /
        unknown, with `path:line` evidence inside the vllm_omni package. Also: the model's constraints (e.g.
        tensor_parallel_size must divide the head count), cache backends, quantization methods, and which serve
        flags of the guide exist in this version. No network unless omnitune allows it.
        """
        return await in_thread(inspect_model, state_of(ctx).settings, model)
