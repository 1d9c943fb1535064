"""omnitune's entry point: build the MCP server and run it over stdio or streamable HTTP.

``mcp dev server/main.py`` and ``mcp run server/main.py`` load the module-level ``mcp`` object
(settings from ``OMNITUNE_*`` variables); the ``omnitune`` command parses flags first.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, cast

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools.base import Tool

from omnitune.server import (
    benchmark,
    capabilities,
    compare,
    gpus,
    jobs,
    lifecycle,
    pictures,
    prompts,
    resources,
    tuning,
)
from omnitune.server.policy import apply_policies
from omnitune.server.state import make_lifespan
from omnitune.tools.errors import OmnituneError
from omnitune.tools.settings import Settings, settings_from_env

VERSION = "0.1.0"
INSTRUCTIONS = """omnitune makes vLLM-Omni diffusion serving fast on this machine's GPUs, with measured evidence.
Start with detect_gpus. Every figure omnitune returns was measured here; nothing is assumed."""

# Each module registers the tools, resources or prompts of one capability.
REGISTRARS = [gpus, capabilities, resources, jobs, lifecycle, benchmark, compare, pictures, tuning, prompts]


class _ToolsInPlace:
    """A registrar's view of a server built with its tools already in place: ``@tool`` adds nothing; resources
    and prompts register as usual."""

    def __init__(self, server: MCPServer) -> None:
        self._server = server

    def tool(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        return lambda fn: fn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


@functools.cache
def _tools() -> tuple[Tool, ...]:
    """Every tool with its policies, built once per process and shared by the servers built in it: the SDK derives
    each tool's argument and output schemas with pydantic (most of a server's build), and no tool holds state of
    its own server (each reaches the workspace through its Context)."""
    scratch = MCPServer("omnitune")
    for module in REGISTRARS:
        module.register(scratch)
    apply_policies(scratch)  # strict arguments and read-only, for every tool at once
    return tuple(scratch._tool_manager.list_tools())  # the SDK's constructor takes them back as ``tools``


def build_server(settings: Settings | None = None) -> MCPServer:
    """The MCP server; ``settings=None`` reads ``OMNITUNE_*`` variables when it starts."""
    server = MCPServer("omnitune", version=VERSION, instructions=INSTRUCTIONS, lifespan=make_lifespan(settings),
                       tools=list(_tools()))
    for module in REGISTRARS:
        module.register(cast(MCPServer, _ToolsInPlace(server)))
    apply_policies(server, tools=False)  # the shared tools have theirs
    return server


def __getattr__(name: str) -> MCPServer:
    """``mcp``, the module-level server ``mcp dev``/``mcp run server/main.py`` load, built on first use (the
    ``omnitune`` command builds its own, with its flags)."""
    if name == "mcp":
        globals()["mcp"] = server = build_server()
        return server
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="omnitune", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP transport address (default 127.0.0.1); any other "
                                                        "than loopback requires a bearer token [OMNITUNE_HTTP_TOKEN].")
    p.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[],
                   help="Another Host header the HTTP transport accepts (a DNS name of this machine); repeatable.")
    p.add_argument("--port", type=int, default=8765, help="HTTP transport port (default 8765).")
    p.add_argument("--workspace", help="Folder for the database and runs [OMNITUNE_WORKSPACE].")
    p.add_argument("--vllm", help="The vllm executable of the serving environment [OMNITUNE_VLLM].")
    p.add_argument("--serving-python", help="Python that imports vllm_omni [OMNITUNE_SERVING_PYTHON].")
    p.add_argument("--vllm-omni-source", help="A vllm-omni source folder to inspect [OMNITUNE_VLLM_OMNI_SOURCE].")
    p.add_argument("--read-only", action="store_true", default=None,
                   help="Observe only: refuse every tool that changes something, dry runs excepted "
                        "[OMNITUNE_READ_ONLY].")
    p.add_argument("--serve-host", help="Address launched servers bind to (default 127.0.0.1) [OMNITUNE_SERVE_HOST].")
    p.add_argument("--allow-network", action="store_true", default=None,
                   help="Allow Hugging Face hub look-ups [OMNITUNE_ALLOW_NETWORK].")
    p.add_argument("--no-stop-on-exit", dest="stop_on_exit", action="store_false", default=None,
                   help="Leave launched servers running when omnitune exits [OMNITUNE_STOP_ON_EXIT=0].")
    p.add_argument("--model-root", dest="model_roots", action="append",
                   help="Folder local models may come from; repeatable [OMNITUNE_MODEL_ROOTS].")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


def on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM (kill, systemd, container stop) runs the same clean-up as a normal exit, then exits 128+signal.

    The clean-up runs in its own thread: it must not depend on the event loop (a stdio server may be blocked
    reading stdin), and it waits for a clean-up already under way rather than starting a second one."""
    from omnitune.server.state import close_all

    def finish() -> None:
        try:
            close_all()
        finally:
            logging.shutdown()
            os._exit(128 + signum)

    threading.Thread(target=finish, name="omnitune-sigterm", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("transport", "host", "port", "allowed_hosts")}
    try:
        settings = settings_from_env(**overrides)
        from omnitune.tools.workspace import Workspace
        Workspace.open(settings).close()  # fail now, with the fix, rather than inside the transport
    except OmnituneError as exc:
        sys.stderr.write(f"omnitune: {exc}\n")
        raise SystemExit(2) from None
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll is noise
    server = build_server(settings)
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)  # the terminal or the parent went away
    if args.transport == "stdio":
        server.run()
    else:
        from omnitune.server.http_transport import serve_http, token_for
        given = settings.http_token.get_secret_value() if settings.http_token else None
        token = token_for(args.host, given)
        anyio.run(serve_http, server, args.host, args.port, token, args.allowed_hosts, settings.log_level)


if __name__ == "__main__":
    main()
