"""plan and tune on the emulator's four documented scenarios (tests/emulator/scenarios, README there)."""

from __future__ import annotations

import pytest
from mcp import Client

from server.main import build_server
from tests.launch_helpers import QWEN, WAN, ZIMAGE, emulator_settings

pytestmark = pytest.mark.anyio
SRC = __import__("pathlib").Path(__file__).resolve().parents[1] / ".venv" / "vllm-omni-src" / "0.30.0"
IMAGE = {"sizes": ["256x256"], "measured": 3, "warmup": 1, "num_inference_steps": 8}


async def tune(emulator, tmp_path, scenario: str, model: str, goal: dict, workload: dict, **request) -> dict:
    emulator.write(scenario)
    settings = emulator_settings(emulator, tmp_path, vllm_omni_source=SRC)
    async with Client(build_server(settings)) as client:
        job = await client.call_tool("tune_start", {"request": {"model": model, "goal": goal, "workload": workload,
                                                                **request}})
        assert job.is_error is False, job.content
        status = (await client.call_tool("job_wait", {"job_id": job.structured_content["id"], "timeout_s": 300}))
        final = status.structured_content
        servers = (await client.call_tool("list_servers", {})).structured_content["servers"]
    assert final["status"] == "completed", final["error"]
    assert all(s["state"] in ("stopped", "failed") for s in servers)  # every candidate server was stopped
    return final["result"]


def by_name(result: dict) -> dict:
    return {c["name"]: c for c in result["candidates"]}


async def test_single_gpu_image_model_fp8_and_compile_win(emulator, tmp_path):
    r = await tune(emulator, tmp_path, "image_fp8_compile", ZIMAGE, {}, IMAGE)
    assert r["winner"]["name"] == "compile+fp8" and r["winner"]["speedup_vs_baseline"] > 1.5
    assert "--quantization fp8" in r["command"] and "--enforce-eager" not in r["command"]
    assert r["launches"] == 3
    assert any("multi-GPU" in p["name"] for p in r["pruned"])
    report = open(r["report"]).read()
    assert "compile+fp8" in report and r["command"] in report
    assert open(r["pareto_png"], "rb").read(4) == b"\x89PNG"


async def test_four_gpu_cfg_model_cfg_parallel_times_ulysses_beats_pure_ulysses(emulator, tmp_path):
    r = await tune(emulator, tmp_path, "cfg4_qwen_image", QWEN, {}, IMAGE)
    c = by_name(r)
    assert r["winner"]["name"] == "cfg_parallel_size=2xusp=2 (4 GPUs)"
    assert c["cfg_parallel_size=2xusp=2 (4 GPUs)"]["p50_s"] < c["usp=4 (4 GPUs)"]["p50_s"]
    assert "--cfg-parallel-size 2" in r["command"] and "--usp 2" in r["command"]
    assert {p["name"] for p in r["pruned"]} >= {"tensor_parallel_size=2", "tensor_parallel_size=4"}  # 3 heads


async def test_a_video_model_that_only_fits_with_offload(emulator, tmp_path):
    video = {"task": "text-to-video", "sizes": ["256x256"], "measured": 2, "warmup": 1, "num_inference_steps": 4,
             "num_frames": 5, "fps": 8}
    r = await tune(emulator, tmp_path, "video_offload", WAN, {}, video)
    c = by_name(r)
    assert c["baseline"]["status"] == "failed" and "out_of_memory" in c["baseline"]["reason"]
    assert c["baseline + layerwise offload"]["status"] == "measured"
    assert "--enable-layerwise-offload" in r["command"]


async def test_lossy_sweep_detects_an_inert_threshold_and_stops_at_the_cliff(emulator, tmp_path):
    r = await tune(emulator, tmp_path, "lossy_cliff", QWEN, {"quality": "lossy"}, IMAGE)
    c = by_name(r)
    assert c["tea_cache 0.05"]["status"] == "inert"
    assert c["tea_cache 0.4"]["status"] == "rejected_quality" and c["tea_cache 0.4"]["verdict"] == "degraded"
    assert "tea_cache 0.6" not in c  # the sweep stopped at the cliff
    assert r["winner"]["name"] == "tea_cache 0.3" and r["winner"]["verdict"] == "acceptable"
    fewer = [c for c in r["candidates"] if c["request_settings"]]  # steps: measured inside one server
    assert fewer and fewer[0]["request_settings"] == {"num_inference_steps": 6}
    assert fewer[0]["status"] in ("measured", "rejected_quality") and fewer[0]["verdict"] is not None


async def test_a_second_tune_reuses_measured_configurations_instead_of_launching(emulator, tmp_path):
    first = await tune(emulator, tmp_path, "image_fp8_compile", ZIMAGE, {}, IMAGE)
    second = await tune(emulator, tmp_path, "image_fp8_compile", ZIMAGE, {}, IMAGE)
    assert first["launches"] == 3 and second["launches"] == 0
    assert {c["status"] for c in second["candidates"]} == {"reused"}
    assert second["winner"]["name"] == first["winner"]["name"]


async def test_the_launch_budget_is_respected(emulator, tmp_path):
    r = await tune(emulator, tmp_path, "cfg4_qwen_image", QWEN, {}, IMAGE, max_launches=2)
    assert r["launches"] == 2
    assert sum(c["status"] == "skipped_budget" for c in r["candidates"]) >= 1


async def test_plan_lists_candidates_with_evidence_and_pruned_ones(emulator, tmp_path):
    emulator.write("cfg4_qwen_image")
    async with Client(build_server(emulator_settings(emulator, tmp_path, vllm_omni_source=SRC))) as client:
        plan = (await client.call_tool("plan", {"model": QWEN, "goal": {"quality": "lossy"}})).structured_content
    names = [c["name"] for c in plan["candidates"]]
    assert names[0] == "baseline" and names.index("cfg_parallel_size=2xusp=2 (4 GPUs)") < names.index("usp=4 (4 GPUs)")
    assert plan["capability_report"] is True and plan["gpus"] == 4
    fp8 = next(c for c in plan["candidates"] if c["name"] == "compile+fp8")
    assert fp8["evidence"] and ":" in fp8["evidence"][0]
    assert any(c["stage"] == "lossy" and c["config"]["cache_backend"] == "tea_cache" for c in plan["candidates"])
