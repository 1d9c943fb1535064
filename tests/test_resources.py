"""The capability tool and the omnitune:// resources, driven through an in-memory MCP client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from omnitune.server.main import build_server
from omnitune.tools.capabilities import METHOD_KEYS
from omnitune.tools.settings import Settings
from tests.conftest import FIXTURE_MODELS

pytestmark = pytest.mark.anyio
SRC = Path(__file__).resolve().parents[1] / ".venv" / "vllm-omni-src"


@pytest.fixture
def omni_settings(tmp_path: Path) -> Settings:
    return Settings(workspace=tmp_path / "ws", vllm_omni_source=SRC / "0.30.0")


def text(result) -> str:
    return result.contents[0].text


async def test_inspect_model_capabilities_returns_the_report_for_a_model_folder(omni_settings):
    async with Client(build_server(omni_settings)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["inspect_model_capabilities"].annotations.read_only_hint is True
        result = await client.call_tool("inspect_model_capabilities", {"model": str(FIXTURE_MODELS / "tiny-wan")})
    assert result.is_error is False, result.content
    report = result.structured_content
    assert report["pipeline_class"] == "WanPipeline" and report["pipeline_impl"] == "Wan22Pipeline"
    assert list(report["methods"]) == list(METHOD_KEYS)
    assert report["methods"]["cache_dit"]["status"] == "supported"
    assert report["vllm_omni_version"] == "0.30.0"


async def test_a_bad_model_is_a_tool_error_with_the_fix(omni_settings):
    async with Client(build_server(omni_settings)) as client:
        result = await client.call_tool("inspect_model_capabilities", {"model": "ZImagePipline"})
    assert result.is_error is True
    assert "did you mean ZImagePipeline" in result.content[0].text


async def test_support_resources_cover_every_registered_pipeline(omni_settings):
    async with Client(build_server(omni_settings)) as client:
        table = json.loads(text(await client.read_resource("omnitune://support")))
        markdown = text(await client.read_resource("omnitune://support.md"))
        one = json.loads(text(await client.read_resource("omnitune://support/QwenImagePipeline")))
    assert len(table["rows"]) == 73 and table["vllm_omni_version"] == "0.30.0"
    assert markdown.count("\n| ") == 74 and "| QwenImagePipeline | QwenImageTransformer2DModel |" in markdown
    assert one["methods"]["tensor_parallel"]["status"] == "supported" and one["methods"]["tensor_parallel"]["evidence"]


async def test_recipes_are_checked_against_the_installed_flags(omni_settings):
    async with Client(build_server(omni_settings)) as client:
        recipes = json.loads(text(await client.read_resource("omnitune://recipes")))["recipes"]
        flags = json.loads(text(await client.read_resource("omnitune://serve-flags")))["flags"]
        chart = json.loads(text(await client.read_resource("omnitune://flowchart")))
    by_id = {r["id"]: r for r in recipes}
    assert set(by_id) == set("ABCDEFG")
    assert by_id["B"]["command"].startswith("vllm serve Qwen/Qwen-Image --omni --cfg-parallel-size 2 --usp 2")
    assert all(r["valid_flags"] for r in recipes), [r["missing_flags"] for r in recipes]
    assert by_id["D"]["method_status"] == {"ulysses_sp": "supported", "ring_sp": "supported",
                                           "vae_patch_parallel": "supported", "fp8": "supported"}
    assert "--usp" in flags and "--gguf-model" not in flags
    assert chart["start"] == "baseline" and "tea_cache" in chart["nodes"]


def test_a_recipe_with_a_flag_this_version_lacks_says_so():
    from omnitune.resources.guide import check_recipes
    recipes = check_recipes({"--quantization"})
    a = next(r for r in recipes if r["id"] == "A")
    b = next(r for r in recipes if r["id"] == "B")
    assert a["valid_flags"] is True and b["missing_flags"] == ["--cfg-parallel-size", "--usp"]
