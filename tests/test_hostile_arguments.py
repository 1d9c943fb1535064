"""Typos never change behaviour silently: unknown tool arguments, top-level or nested, are refused with the closest
valid name, and every declared input schema says so (additionalProperties: false)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from mcp import Client, StdioServerParameters

from omnitune.server.main import build_server
from tests.conftest import FIXTURE_MODELS, REPO

pytestmark = pytest.mark.anyio
ZIMAGE = str(FIXTURE_MODELS / "tiny-zimage")


def text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


@pytest.mark.parametrize(("tool", "args", "unknown", "suggestion"), [
    ("tune_start", {"request": {"model": ZIMAGE, "max_launch": 1}}, "max_launch", "max_launches"),
    ("plan", {"model": ZIMAGE, "goal": {"vram_limit": 40000, "max_gpu": 1}}, "max_gpu", "max_gpus"),
    ("plan", {"model": ZIMAGE, "goal": {"vram_limit": 40000}}, "vram_limit", "vram_limit_mib"),
    ("compare_outputs", {"baseline_run": "a", "candidate_run": "b", "thresholds": {"bogus": 1}}, "bogus", None),
    ("compare_outputs", {"baseline_run": "a", "candidate_run": "b", "thresholds": {"acceptable_psnr": 25}},
     "acceptable_psnr", "acceptable_psnr_db"),
    ("job_wait", {"job_id": "job-x", "timeout": 1}, "timeout", "timeout_s"),
    ("launch_server", {"config": {"model": ZIMAGE, "cache_config": {"rel_l1": 0.2}}}, "rel_l1", "rel_l1_thresh"),
    ("launch_server", {"config": {"model": ZIMAGE}, "dryrun": True}, "dryrun", "dry_run"),
    ("benchmark", {"server_id": "srv-x", "workload": {"measure": 3}}, "measure", "measured"),
    ("tune_start", {"request": {"model": ZIMAGE, "workload": {"size": ["512x512"]}}}, "size", "sizes"),
    ("detect_gpus", {"verbose": True}, "verbose", None),
])
async def test_unknown_arguments_are_refused_with_the_closest_valid_name(settings, tool, args, unknown, suggestion):
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(tool, args)
    assert result.is_error is True, result.content
    message = text(result)
    assert f"unknown field {unknown!r}" in message
    if suggestion:
        assert f"did you mean {suggestion!r}" in message
    else:
        assert "valid fields:" in message


async def test_every_declared_input_schema_forbids_unknown_properties(settings):
    async with Client(build_server(settings)) as client:
        tools = (await client.list_tools()).tools
    assert len(tools) >= 14
    open_objects = []

    def walk(schema, where: str) -> None:
        if isinstance(schema, dict):
            if schema.get("type") == "object" and "properties" in schema and schema.get("additionalProperties") \
                    is not False:
                open_objects.append(where)
            for key, value in schema.items():
                walk(value, f"{where}.{key}")
        elif isinstance(schema, list):
            for i, value in enumerate(schema):
                walk(value, f"{where}[{i}]")

    for tool in tools:
        assert tool.input_schema.get("additionalProperties") is False, tool.name
        walk(tool.input_schema, tool.name)
    assert open_objects == []


async def test_valid_arguments_still_work_after_the_schema_is_closed(settings):
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("job_wait", {"job_id": "job-nope", "timeout_s": 0})
    assert result.is_error is True and "job-nope" in text(result) and "unknown field" not in text(result)


async def test_raw_stdio_client_sees_the_refusal_too(tmp_path):
    """Over the real protocol: the SDK client (which does not validate arguments against the schema here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")}
    env.update(PYTHONPATH=str(REPO), OMNITUNE_WORKSPACE=str(tmp_path / "ws"))
    params = StdioServerParameters(command=sys.executable, args=["-m", "omnitune.server.main"], env=env, cwd=str(REPO))
    async with Client(params) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        result = await client.call_tool("job_wait", {"job_id": "job-x", "timeout": 1})
    assert tools["job_wait"].input_schema["additionalProperties"] is False
    assert result.is_error is True and "did you mean 'timeout_s'" in text(result)
    assert json.dumps(tools["plan"].input_schema).count('"additionalProperties": false') >= 2


@pytest.mark.parametrize(("tool", "args", "field"), [
    ("benchmark", {"base_url": "http://127.0.0.1:9", "gpus": [-1], "workload": {}, "dry_run": True}, "gpus.0"),
    ("benchmark", {"base_url": "http://127.0.0.1:9", "gpus": [10**12], "workload": {}, "dry_run": True}, "gpus.0"),
    ("plan", {"model": ZIMAGE, "goal": {"vram_limit_mib": 10**30}}, "goal.vram_limit_mib"),
    ("plan", {"model": ZIMAGE, "goal": {"max_gpus": 10**9}}, "goal.max_gpus"),
    ("tune_start", {"request": {"model": ZIMAGE, "max_gpu_seconds": 1e300}}, "request.max_gpu_seconds"),
])
async def test_out_of_range_numbers_are_refused_with_the_field(settings, tool, args, field):
    async with Client(build_server(settings)) as client:
        result = await client.call_tool(tool, args)
    assert result.is_error is True and field in text(result), text(result)


def test_nan_and_infinity_are_refused_by_argument_models():
    from pydantic import ValidationError

    from omnitune.tools.compare.verdict import Thresholds
    from omnitune.tools.launch.config import CacheConfig
    for model, field in ((Thresholds, "lossless_psnr_db"), (CacheConfig, "mag_threshold")):
        for value in (float("nan"), float("inf")):
            with pytest.raises(ValidationError):
                model.model_validate({field: value})
