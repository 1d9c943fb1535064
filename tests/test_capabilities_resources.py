"""The new capability fields reach an agent: structured tool output and the omnitune://support resources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from omnitune.server.main import build_server
from omnitune.tools.settings import Settings

pytestmark = pytest.mark.anyio
SRC = Path(__file__).resolve().parents[1] / ".venv" / "vllm-omni-src"


def text(result) -> str:
    return result.contents[0].text


async def test_cache_dit_effect_is_reported_next_to_allowed(tmp_path: Path):
    settings = Settings.model_validate({"workspace": tmp_path / "ws", "vllm_omni_source": SRC / "0.30.0"})
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("inspect_model_capabilities", {"model": "ZImagePipeline"})
        table = json.loads(text(await client.read_resource("omnitune://support")))
        markdown = text(await client.read_resource("omnitune://support.md"))
        one = text(await client.read_resource("omnitune://support/WanPipeline"))
    assert result.is_error is False, result.content
    cache_dit = result.structured_content["methods"]["cache_dit"]
    assert cache_dit["status"] == "supported" and cache_dit["takes_effect"] == "unknown"
    assert cache_dit["effect_evidence"] and "cache-dit library" in cache_dit["effect_notes"]
    rows = {r["pipeline_class"]: r for r in table["rows"]}
    assert rows["WanPipeline"]["methods"]["cache_dit"]["takes_effect"] == "yes"
    assert rows["NextStep11Pipeline"]["methods"]["cache_dit"]["takes_effect"] == "no"
    zrow = next(line for line in markdown.splitlines() if line.startswith("| ZImagePipeline |"))
    assert "yes (effect?)" in zrow
    wan = json.loads(one)
    assert wan["methods"]["cache_dit"]["takes_effect"] == "yes"
