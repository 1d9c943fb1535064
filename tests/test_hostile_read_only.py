"""--read-only promises that omnitune only observes: every tool that could change something is refused (dry runs
excepted), every observing tool still answers, and nothing is written outside the workspace's database and caches."""

from __future__ import annotations

import pytest
from mcp import Client

from omnitune.server.main import build_server
from omnitune.tools.settings import Settings
from tests.conftest import FIXTURE_MODELS, REPO

pytestmark = pytest.mark.anyio
SRC = REPO / ".venv" / "vllm-omni-src" / "0.30.0"
ZIMAGE = str(FIXTURE_MODELS / "tiny-zimage")
WORKLOAD = {"sizes": ["64x64"], "measured": 1}

# One valid call of every tool that changes something; the test fails when a new such tool is not listed here.
CHANGING = {
    "launch_server": {"config": {"model": ZIMAGE}},
    "stop_server": {"server_id": "srv-x"},
    "benchmark": {"base_url": "http://127.0.0.1:9", "workload": WORKLOAD},
    "benchmark_start": {"base_url": "http://127.0.0.1:9", "workload": WORKLOAD},
    "compare_outputs": {"baseline_run": "bench-a", "candidate_run": "bench-b"},
    "tune_start": {"request": {"model": ZIMAGE}},
    "job_cancel": {"job_id": "job-x"},
}
OBSERVING = {
    "detect_gpus": {},
    "inspect_model_capabilities": {"model": "ZImagePipeline"},
    "plan": {"model": "ZImagePipeline"},
    "list_servers": {},
    "job_status": {"job_id": "job-x"},
    "job_wait": {"job_id": "job-x", "timeout_s": 0},
    "server_logs": {"server_id": "srv-x"},
    "show_picture": {"picture": "pareto", "id": "tune-x"},  # reads pictures omnitune saved (a run grid is cached)
}


def text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def settings(tmp_path, read_only: bool) -> Settings:
    return Settings.model_validate({"workspace": tmp_path / "ws", "vllm_omni_source": SRC, "read_only": read_only,
                                    "model_roots": [FIXTURE_MODELS]})


async def test_read_only_refuses_every_tool_that_changes_something_and_answers_the_rest(tmp_path):
    async with Client(build_server(settings(tmp_path, read_only=True))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        changing = {name for name, t in tools.items() if not (t.annotations and t.annotations.read_only_hint)}
        assert changing == set(CHANGING) and set(tools) == set(CHANGING) | set(OBSERVING)
        refused = {name: await client.call_tool(name, args) for name, args in CHANGING.items()}
        answered = {name: await client.call_tool(name, args) for name, args in OBSERVING.items()}
        dry_launch = await client.call_tool("launch_server", {**CHANGING["launch_server"], "dry_run": True})
        dry_bench = await client.call_tool("benchmark", {**CHANGING["benchmark"], "dry_run": True})
    for name, result in refused.items():
        assert result.is_error is True and "read-only mode" in text(result), (name, text(result))
    for name, result in answered.items():
        assert "read-only mode" not in text(result), (name, text(result))
    assert answered["plan"].is_error is False and answered["inspect_model_capabilities"].is_error is False
    assert dry_launch.is_error is False or "read-only" not in text(dry_launch)
    assert dry_bench.is_error is False, text(dry_bench)
    runs = tmp_path / "ws" / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []  # no run, comparison or tune folder was made


async def test_without_read_only_the_same_calls_are_not_refused_for_it(tmp_path):
    async with Client(build_server(settings(tmp_path, read_only=False))) as client:
        results = {name: await client.call_tool(name, args) for name, args in CHANGING.items()
                   if name not in ("launch_server", "tune_start", "benchmark_start")}
    for name, result in results.items():
        assert "read-only mode" not in text(result), (name, text(result))
