"""Rules every tool call passes through, applied once to all registered tools: strict arguments and read-only.

Strict arguments: each tool's argument model (built by the SDK from its signature) refuses unknown arguments with
the closest valid name, and its input schema says ``additionalProperties: false``. Nested argument models derive
from ``tools.strict.StrictModel``.

Read-only (``--read-only`` / ``OMNITUNE_READ_ONLY``) promises that omnitune only observes: it detects GPUs,
inspects models, plans, and lists or reads servers, logs, jobs and resources. It starts, stops or cancels nothing,
sends no request to any server (no benchmark, no tune) and makes no comparison; the only files it writes are its
own database and caches inside the workspace. The tool annotations carry the promise: a tool not annotated
``readOnlyHint: true`` is refused, unless the call is a dry run (``dry_run: true`` changes nothing).
"""

from __future__ import annotations

import functools
from typing import Any, cast

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase

from omnitune.server.state import state_of
from omnitune.tools.errors import ReadOnlyError
from omnitune.tools.strict import strict_subclass


def _read_only_gate(tool: Tool) -> Any:
    fn, context_kwarg, name, is_async = tool.fn, tool.context_kwarg, tool.name, tool.is_async
    if context_kwarg is None:
        raise TypeError(f"tool {name} changes state but takes no Context: the read-only rule cannot reach settings")

    @functools.wraps(fn)
    async def gated(**kwargs: Any) -> Any:
        if state_of(kwargs[context_kwarg]).settings.read_only and kwargs.get("dry_run") is not True:
            raise ToolError(str(ReadOnlyError(f"run {name} (read-only mode only observes)")))
        if is_async:
            return await fn(**kwargs)
        return await anyio.to_thread.run_sync(functools.partial(fn, **kwargs))

    return gated


def apply_policies(server: MCPServer) -> None:
    """Make every registered tool strict about its arguments and subject to the read-only rule."""
    for tool in server._tool_manager.list_tools():  # the SDK offers no public hook for the argument model
        strict = cast(type[ArgModelBase], strict_subclass(tool.fn_metadata.arg_model))
        tool.fn_metadata.arg_model = strict
        tool.parameters = strict.model_json_schema(by_alias=True)
        if not (tool.annotations and tool.annotations.read_only_hint):
            tool.fn = _read_only_gate(tool)
            tool.is_async = True
