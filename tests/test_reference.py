"""docs/REFERENCE.md is generated from the server; it must match what the server lists now."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from omnitune.server.main import build_server
from omnitune.server.reference import render

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[1]


async def test_the_reference_matches_the_server(settings):
    expected = await render(build_server(settings))
    actual = (REPO / "docs" / "REFERENCE.md").read_text()
    assert actual == expected, "docs/REFERENCE.md is stale: run `.venv/bin/python -m omnitune.server.reference > " \
                               "docs/REFERENCE.md`"


async def test_every_tool_has_a_description_and_an_output_schema_but_the_picture_tool(settings):
    async with Client(build_server(settings)) as client:
        tools = (await client.list_tools()).tools
    for tool in tools:
        assert len(tool.description or "") > 40, tool.name
        # show_picture answers with image content only: with a schema Claude Code would hand over nothing else
        assert (tool.output_schema is None) == (tool.name == "show_picture"), tool.name


async def test_the_guide_prompt_walks_through_baseline_lossless_lossy_and_report(settings):
    async with Client(build_server(settings)) as client:
        lossy = await client.get_prompt("tune_diffusion_serving", {"model": "Qwen/Qwen-Image", "allow_lossy": "yes"})
        strict = await client.get_prompt("tune_diffusion_serving", {"model": "Qwen/Qwen-Image"})
    text = lossy.messages[0].content.text
    for step in ("detect_gpus", "inspect_model_capabilities", "enforce_eager=true", "compare_outputs", "tea_cache",
                 "dry_run=true"):
        assert step in text
    assert "Skip lossy methods" in strict.messages[0].content.text and "tea_cache" not in \
        strict.messages[0].content.text
