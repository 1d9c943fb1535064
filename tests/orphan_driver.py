"""A short-lived omnitune that calls one tool, prints its structured result, then waits to be SIGKILLed.

Used by the tests of what a dead omnitune leaves behind (an orphaned server, an interrupted tune).
"""

from __future__ import annotations

import json
import sys

import anyio
from mcp import Client

from omnitune.server.main import build_server
from omnitune.tools.settings import Settings


async def main(settings_json: str, tool: str, arguments: str) -> None:
    settings = Settings.model_validate_json(settings_json)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(tool, json.loads(arguments))
        sys.stdout.write(json.dumps(result.structured_content) + "\n")
        sys.stdout.flush()
        for _ in range(1200):  # wait (bounded) for SIGKILL; a job keeps running in its thread meanwhile
            await anyio.sleep(0.1)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
