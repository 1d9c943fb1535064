"""A short-lived omnitune that launches one server and then waits to be killed (by the orphan test)."""

from __future__ import annotations

import json
import sys
import time

import anyio
from mcp import Client

from server.main import build_server
from tools.settings import Settings


async def main(settings_json: str, model: str) -> None:
    settings = Settings.model_validate_json(settings_json)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("launch_server", {"config": {"model": model}})
        sys.stdout.write(json.dumps(result.structured_content["server"]) + "\n")
        sys.stdout.flush()
        for _ in range(600):  # wait (bounded) for SIGKILL
            time.sleep(0.1)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
