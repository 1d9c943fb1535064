"""Rules every tool call passes through, applied once to all registered tools: strict arguments and read-only.

Strict arguments: each tool's argument model (built by the SDK from its signature) refuses unknown arguments with
the closest valid name, and its input schema says ``additionalProperties: false``. Nested argument models derive
from ``tools.strict.StrictModel``.

Clear errors: a resource template that raises omnitune's error gives its text to the client (the SDK's generic
"Error creating resource from template" hides the cause), and a prompt asked without a required argument is an
invalid-params error naming it, not "Internal server error".

Read-only (``--read-only`` / ``OMNITUNE_READ_ONLY``) promises that omnitune only observes: it detects GPUs,
inspects models, plans, and lists or reads servers, logs, jobs and resources. It launches, stops or cancels
nothing, sends no request to any server (no benchmark, no tune) and makes no comparison; the only files it writes
are its own database and caches inside the workspace (inspect may still ask the serving Python where vllm_omni
lives). The tool annotations carry the promise: a tool not annotated ``readOnlyHint: true`` is refused, unless the
call is a dry run (``dry_run: true`` changes nothing). A prompt's unknown or missing arguments are refused too.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from omnitune.server.state import state_of
from omnitune.tools.errors import (
    InvalidRequestError,
    NotFoundError,
    OmnituneError,
    ReadOnlyError,
    UnregisteredPipeline,
)
from omnitune.tools.strict import strict_subclass, unknown_fields_message


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


def _resource_errors(fn: Any) -> Any:
    @functools.wraps(fn)  # keeps the signature: the SDK injects the Context by parameter
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except NotFoundError as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        except (InvalidRequestError, UnregisteredPipeline) as exc:  # the caller's to fix: invalid params
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from exc
        except OmnituneError as exc:
            raise ResourceError(str(exc)) from exc
    return wrapper


def _prompt_errors(server: MCPServer) -> None:
    original = server.get_prompt

    async def get_prompt(name: str, arguments: dict[str, Any] | None = None, context: Any = None) -> Any:
        prompt = server._prompt_manager.get_prompt(name)
        declared = {a.name: a for a in (prompt.arguments or [])} if prompt else {}
        missing = sorted(n for n, a in declared.items() if a.required and n not in (arguments or {}))
        if missing:
            raise MCPError(code=INVALID_PARAMS, message=f"prompt {name} needs the argument(s) {', '.join(missing)} "
                                                        "(see prompts/list).")
        unknown = unknown_fields_message(declared, arguments or {}) if prompt else None
        if unknown:
            raise MCPError(code=INVALID_PARAMS, message=f"prompt {name}: {unknown}")
        try:
            return await original(name, arguments, context)
        except ValueError as exc:  # the SDK's own argument errors ("Unknown prompt: x") are the caller's to fix
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from exc

    server.get_prompt = get_prompt  # type: ignore[method-assign]  # the SDK's handler calls self.get_prompt


def apply_policies(server: MCPServer, tools: bool = True) -> None:
    """Make every registered tool strict about its arguments and subject to the read-only rule (``tools=False``:
    tools that already are); resources and prompts report the caller's mistakes as such."""
    for template in server._resource_manager.list_templates():
        template.fn = _resource_errors(template.fn)
    _prompt_errors(server)
    for tool in server._tool_manager.list_tools() if tools else ():  # no public hook for the argument model
        strict = cast(type[ArgModelBase], strict_subclass(tool.fn_metadata.arg_model))
        tool.fn_metadata.arg_model = strict
        tool.parameters = strict.model_json_schema(by_alias=True)
        if not (tool.annotations and tool.annotations.read_only_hint):
            tool.fn = _read_only_gate(tool)
            tool.is_async = True
