"""detect_gpus through the MCP surface, against simulated GPUs (the real NVML code path runs)."""

from __future__ import annotations

import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.conftest import H200

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_list_has_detect_gpus_with_output_schema_and_read_only_hint(settings, mode):
    async with Client(build_server(settings), mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    tool = tools["detect_gpus"]
    assert tool.output_schema is not None
    assert {"available", "gpus", "links", "host"} <= set(tool.output_schema["properties"])
    assert tool.annotations.read_only_hint is True
    assert tool.annotations.destructive_hint is False


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_two_h200s_on_nvswitch_are_reported_with_fp8_and_nvlink(settings, fake_gpus, mode):
    fake_gpus(gpus=[H200, H200], topology="nvswitch", nvlinks_per_gpu=18, driver_version="575.57.08",
              cuda_driver_version=12090)
    async with Client(build_server(settings), mode=mode) as client:
        result = await client.call_tool("detect_gpus", {})
    assert result.is_error is False
    report = result.structured_content
    assert report["available"] is True and report["gpu_count"] == 2
    assert report["driver_version"] == "575.57.08" and report["cuda_driver_version"] == "12.9"
    for i, gpu in enumerate(report["gpus"]):
        assert gpu["index"] == i
        assert gpu["name"] == "NVIDIA H200"
        assert gpu["compute_capability"] == "9.0" and gpu["architecture"] == "Hopper"
        assert gpu["fp8_native"] is True
        assert gpu["memory_total_mib"] == 143771 and gpu["memory_used_mib"] == 0
        assert gpu["mig_mode"] == "disabled"
    [link] = report["links"]
    assert (link["a"], link["b"]) == (0, 1)
    assert link["nvlink"] is True and link["via_nvswitch"] is True and link["nvlink_count"] == 18
    assert report["host"]["ram_total_mib"] > 0 and report["host"]["workspace_disk_free_mib"] > 0


async def test_ampere_is_not_fp8_native_and_pcie_pair_has_no_nvlink(settings, fake_gpus):
    a100 = {"name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920, "compute_capability": [8, 0]}
    fake_gpus(gpus=[a100, a100], topology="pcie")
    async with Client(build_server(settings)) as client:
        report = (await client.call_tool("detect_gpus", {})).structured_content
    assert [g["fp8_native"] for g in report["gpus"]] == [False, False]
    assert report["gpus"][0]["architecture"] == "Ampere"
    assert report["links"][0]["nvlink"] is False and report["links"][0]["nvlink_count"] == 0
    assert report["links"][0]["topology"] == "system"


async def test_a_field_the_gpu_refuses_is_marked_unavailable_not_a_failure(settings, fake_gpus):
    fake_gpus(gpus=[{**H200, "not_supported": ["numa_node", "utilization"]}])
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("detect_gpus", {})
    gpu = result.structured_content["gpus"][0]
    assert result.is_error is False
    assert gpu["numa_node"] is None and gpu["utilization_percent"] is None
    assert set(gpu["unavailable"]) == {"numa_node", "utilization_percent"}
    assert "Not Supported" in gpu["unavailable"]["numa_node"]
    assert gpu["memory_total_mib"] == 143771


async def test_no_nvml_library_is_a_structured_answer_with_the_reason(settings, fake_gpus, monkeypatch):
    fake_gpus(gpus=[H200])
    monkeypatch.setenv("VLLM_EMU_NVML", "missing")
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("detect_gpus", {})
    report = result.structured_content
    assert result.is_error is False
    assert report["available"] is False and report["gpus"] == []
    assert "NVML library not found" in report["reason"]
    assert report["host"]["cpu_cores_logical"] >= 1


async def test_no_gpu_at_all_says_so(settings, fake_gpus):
    fake_gpus(gpus=[])
    async with Client(build_server(settings)) as client:
        report = (await client.call_tool("detect_gpus", {})).structured_content
    assert report["available"] is False and report["reason"] == "NVML works but reports no GPU"


async def test_memory_in_use_by_a_live_process_is_reported_per_gpu(settings, fake_gpus, tmp_path):
    import json
    import os
    fake_gpus(gpus=[H200, H200])
    (tmp_path / "emu" / "emu-state" / "me.json").write_text(
        json.dumps({"pid": os.getpid(), "memory_mib": {"1": 40000}}))
    async with Client(build_server(settings)) as client:
        report = (await client.call_tool("detect_gpus", {})).structured_content
    assert report["gpus"][0]["memory_used_mib"] == 0
    assert report["gpus"][1]["memory_used_mib"] == 40000
    assert report["gpus"][1]["processes"] == [{"pid": os.getpid(), "name": report["gpus"][1]["processes"][0]["name"],
                                               "used_memory_mib": 40000}]
