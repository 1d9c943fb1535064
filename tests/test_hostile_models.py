"""One model resolver for inspect, plan, launch and tune: the model-roots rule everywhere, models that do not exist
refused up front, a bare word is not a hub id, and a hub id is never served with downloads allowed."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from mcp import Client

from omnitune.server.main import build_server
from omnitune.tools.settings import Settings
from tests.conftest import FIXTURE_MODELS, REPO
from tests.launch_helpers import ZIMAGE, emulator_settings, world

pytestmark = pytest.mark.anyio
SRC = REPO / ".venv" / "vllm-omni-src" / "0.30.0"


def text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def omni(tmp_path: Path, **kw) -> Settings:
    kw.setdefault("model_roots", [FIXTURE_MODELS, tmp_path / "models"])
    return Settings.model_validate({"workspace": tmp_path / "ws", "vllm_omni_source": SRC, **kw})


def jobs_in(settings: Settings) -> int:
    if not settings.db_path.exists():
        return 0
    with sqlite3.connect(settings.db_path) as conn:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]


@pytest.mark.parametrize(("model", "expected"), [
    ("../../etc", "outside the allowed model roots"),
    ("/etc", "outside the allowed model roots"),
    ("NoSuchPipeline", "is not in vllm-omni's diffusion registry"),
    ("nobody/no-such-model", "not in the local Hugging Face cache"),
    ("x" * 200_000, "at most 1024"),
    ("a" * 300 + "/" + "b" * 300, "outside the allowed model roots"),
    ("two words", "neither a folder"),
    ("./" + "y" * 5000 + "/z", "at most 1024"),
    ("-h", "starts with '-'"),
])
async def test_plan_and_tune_refuse_a_model_that_does_not_exist_up_front(tmp_path, model, expected):
    settings = omni(tmp_path)
    async with Client(build_server(settings)) as client:
        planned = await client.call_tool("plan", {"model": model})
        tuned = await client.call_tool("tune_start", {"request": {"model": model}})
        inspected = await client.call_tool("inspect_model_capabilities", {"model": model})
    for result in (planned, tuned, inspected):
        assert result.is_error is True, result.content
        assert expected in text(result), text(result)
        assert "Internal" not in text(result) and "Traceback" not in text(result)
    assert jobs_in(settings) == 0  # no tune job was started


async def test_tune_refuses_a_pipeline_class_name_that_plan_accepts(tmp_path):
    """One resolver: the same name is judged alike everywhere (a class names code, not weights to serve)."""
    settings = omni(tmp_path)
    async with Client(build_server(settings)) as client:
        planned = await client.call_tool("plan", {"model": "ZImagePipeline"})
        tuned = await client.call_tool("tune_start", {"request": {"model": "ZImagePipeline"}})
    assert planned.is_error is False and planned.structured_content["capability_report"] is True
    assert tuned.is_error is True and "pipeline class name" in text(tuned)
    assert jobs_in(settings) == 0


async def test_outside_the_roots_nothing_is_read_nor_revealed(tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(FIXTURE_MODELS / "tiny-zimage", outside / "real-model")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "link").symlink_to(outside / "real-model")  # a link inside a root may not lead out
    settings = omni(tmp_path)
    answers = {}
    async with Client(build_server(settings)) as client:
        for name in ("real-model", "no-such-folder"):
            result = await client.call_tool("inspect_model_capabilities", {"model": str(outside / name)})
            planned = await client.call_tool("plan", {"model": str(outside / name)})
            assert result.is_error is True and planned.is_error is True
            answers[name] = text(result).replace(name, "NAME")
            assert text(planned).replace(name, "NAME").split("plan: ", 1)[-1] == answers[name].split(": ", 1)[-1]
        link = await client.call_tool("inspect_model_capabilities", {"model": str(tmp_path / "models" / "link")})
    assert answers["real-model"] == answers["no-such-folder"]  # existence is not revealed
    assert "ZImagePipeline" not in answers["real-model"]
    assert link.is_error is True and "outside the allowed model roots" in text(link)


async def test_started_from_root_the_cwd_does_not_make_every_folder_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir("/")
    settings = Settings.model_validate({"workspace": tmp_path / "ws", "vllm_omni_source": SRC})
    assert Path("/") not in settings.effective_model_roots
    assert all(len(root.parts) > 2 for root in settings.effective_model_roots)
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("inspect_model_capabilities", {"model": str(FIXTURE_MODELS / "tiny-zimage")})
        relative = await client.call_tool("plan", {"model": "etc"})
    assert result.is_error is True and "outside the allowed model roots" in text(result)
    assert relative.is_error is True and "/etc" not in text(relative)


def cached_hub_model(tmp_path: Path, monkeypatch) -> str:
    home = tmp_path / "hf"
    shutil.copytree(FIXTURE_MODELS / "tiny-zimage", home / "hub" / "models--Tongyi-MAI--Z-Image-Turbo" / "snapshots"
                    / "abc123")
    monkeypatch.setenv("HF_HOME", str(home))
    return "Tongyi-MAI/Z-Image-Turbo"


async def test_launch_serves_a_cached_hub_id_offline_and_refuses_bare_words_and_uncached_ids(emulator, tmp_path,
                                                                                             monkeypatch):
    emulator.write(world(1))
    hub_id = cached_hub_model(tmp_path, monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's own environment may allow downloads: omnitune does not
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        cached = await client.call_tool("launch_server", {"config": {"model": hub_id}, "dry_run": True})
        local = await client.call_tool("launch_server", {"config": {"model": ZIMAGE}, "dry_run": True})
        bare = await client.call_tool("launch_server", {"config": {"model": "qwen-image"}, "dry_run": True})
        uncached = await client.call_tool("launch_server", {"config": {"model": "Qwen/Qwen-Image"}, "dry_run": True})
        klass = await client.call_tool("launch_server", {"config": {"model": "ZImagePipeline"}, "dry_run": True})
    assert cached.is_error is False, text(cached)
    assert cached.structured_content["argv"][2] == hub_id
    assert cached.structured_content["env"]["HF_HUB_OFFLINE"] == "1"
    assert local.structured_content["env"]["HF_HUB_OFFLINE"] == "1"
    assert bare.is_error is True and "neither a folder" in text(bare)
    assert uncached.is_error is True and "not in the local Hugging Face cache" in text(uncached)
    assert klass.is_error is True and "pipeline class name" in text(klass)
    assert os.environ["HF_HUB_OFFLINE"] == "0"


async def test_with_allow_network_a_launch_may_download(emulator, tmp_path, monkeypatch):
    emulator.write(world(1))
    async with Client(build_server(emulator_settings(emulator, tmp_path, allow_network=True))) as client:
        local = await client.call_tool("launch_server", {"config": {"model": ZIMAGE}, "dry_run": True})
    assert local.is_error is False and "HF_HUB_OFFLINE" not in local.structured_content["env"]


async def test_launch_reads_the_head_count_where_inspect_does(emulator, tmp_path):
    """tiny-zimage keeps its heads under `n_heads`: the launch gate and inspect read them with one reader."""
    emulator.write(world(4))
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        result = await client.call_tool("launch_server", {"config": {"model": ZIMAGE, "tensor_parallel_size": 4},
                                                          "dry_run": True})
    assert result.is_error is True
    assert "does not divide the DiT's 2 attention heads" in text(result) and "n_heads" in text(result)
