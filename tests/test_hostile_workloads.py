"""Unbounded or malformed workloads are refused before anything is sent, with the bound and the fix; a run whose
every measured request failed says failed, not completed."""

from __future__ import annotations

import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.launch_helpers import emulator_settings, world
from tests.test_benchmark import known_latency, launch

pytestmark = pytest.mark.anyio
LOCAL = "http://127.0.0.1:9"  # dry runs resolve the target without contacting it


def text(result) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


async def dry(settings, **workload):
    async with Client(build_server(settings)) as client:
        return await client.call_tool("benchmark", {"workload": workload, "base_url": LOCAL, "dry_run": True})


@pytest.mark.parametrize(("workload", "expected"), [
    ({"sizes": ["0x0"]}, "between 16 and 8192"),
    ({"sizes": ["99999x99999"]}, "between 16 and 8192"),
    ({"sizes": ["8192x8192"]}, "at most 16777216 pixels"),
    ({"sizes": ["64x64\n"]}, "is not WIDTHxHEIGHT"),
    ({"sizes": ["4096x4096x1"]}, "is not WIDTHxHEIGHT"),
    ({"sizes": ["٣٢٠x٣٢٠"]}, "is not WIDTHxHEIGHT"),  # Arabic-Indic digits match \d in Python
    ({"task": "text-to-video", "num_frames": 10**9}, "num_frames"),
    ({"extra_body": {"width": 99999, "height": 99999}}, "extra_body sets ['height', 'width']"),
    ({"extra_body": {"extra_params": {"height": 99999}}}, "extra_body sets ['extra_params.height']"),
    ({"task": "text-to-video", "extra_body": {"num_outputs_per_prompt": 10}}, "num_outputs_per_prompt"),
    ({"request_rate": 1e-9}, "request_rate"),
    ({"seeds": [2**63]}, "seeds.0"),
    ({"seeds": [-1]}, "seeds.0"),
    ({"arrival_seed": 2**64}, "arrival_seed"),
    ({"prompts": ["x" * 100_001]}, "prompts.0"),
])
async def test_unbounded_workloads_are_refused_with_the_bound(settings, workload, expected):
    result = await dry(settings, **workload)
    assert result.is_error is True, result.structured_content
    assert expected in text(result), text(result)


async def test_workloads_at_the_bounds_are_accepted(settings):
    result = await dry(settings, sizes=["16x16", "4096x4096", "8192x1024"], seeds=[0, 2**63 - 1], request_rate=0.01,
                       extra_body={"true_cfg_scale": 4.0})
    assert result.is_error is False, text(result)
    plan = result.structured_content["plan"]
    assert {r["params"]["size"] for r in plan if r["phase"] == "warmup"} == {"16x16", "4096x4096", "8192x1024"}
    assert {r["params"]["seed"] for r in plan if r["phase"] == "measured"} == {0, 2**63 - 1}


async def test_a_run_whose_every_request_failed_is_failed_not_completed(emulator, tmp_path):
    # Emulator request numbers count from 1 and include the warm-up request: 2..5 are the measured ones.
    emulator.write(world(1, cost=known_latency(0.01), faults={"error_500_on": [2, 3, 4, 5]}))
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        sid = await launch(client, enforce_eager=True)
        result = await client.call_tool("benchmark", {"server_id": sid, "workload": {
            "sizes": ["16x16"], "num_inference_steps": 10, "measured": 4}})
    out = result.structured_content
    assert out["status"] == "failed", out
    assert out["summary"]["requests_ok"] == 0 and out["summary"]["requests_failed"] == 4
    assert "every measured request failed" in (out["summary"].get("aborted_reason") or "")
