"""plan and tune on the emulator's four documented scenarios (tests/emulator/scenarios, README there)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.conftest import FAKE_NVML_DIR
from tests.launch_helpers import QWEN, WAN, ZIMAGE, emulator_processes, emulator_settings

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[1]
SRC = REPO / ".venv" / "vllm-omni-src" / "0.30.0"
# 20 steps: requests long enough (0.1-0.5 s simulated) that a loaded 2-core machine's scheduling noise stays small;
# 3 measured requests everywhere (videos too): the median and its MAD-based error then shrug off one stalled request
IMAGE = {"sizes": ["256x256"], "measured": 3, "warmup": 1, "num_inference_steps": 20}


async def tune(emulator, tmp_path, scenario: str, model: str, goal: dict, workload: dict, world: dict | None = None,
               **request) -> dict:
    emulator.write(scenario, **(world or {}))
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
    assert r["launches"] == 2  # baseline, then the guide's stacked recipe, which won: compile alone not launched
    assert by_name(r)["compile"]["status"] == "not_needed"
    assert any("multi-GPU" in p["name"] for p in r["pruned"])
    report = open(r["report"]).read()
    assert "compile+fp8" in report and r["command"] in report
    assert open(r["pareto_png"], "rb").read(4) == b"\x89PNG"


async def test_one_stalled_request_per_candidate_does_not_hide_real_gains_in_the_noise(emulator, tmp_path):
    stall = {"faults": {"hang_on": [3], "hang_s": 1.5}}  # every server's 2nd measured request stalls 1.5 s
    r = await tune(emulator, tmp_path, "image_fp8_compile", ZIMAGE, {}, IMAGE, world=stall)
    assert r["winner"]["name"] == "compile+fp8" and r["winner"]["speedup_vs_baseline"] > 1.5
    assert r["winner"]["p50_se_s"] < 0.05 * r["winner"]["p50_s"]  # the median's error ignores the stall


async def test_without_native_fp8_methods_are_added_one_at_a_time_and_kept_only_when_they_help(emulator, tmp_path):
    a100 = {"name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920, "compute_capability": [8, 0]}
    r = await tune(emulator, tmp_path, "image_fp8_compile", ZIMAGE, {}, IMAGE, world={"gpus": [a100]})
    c = by_name(r)
    assert c["compile"]["status"] == "measured" and c["compile"]["speedup_vs_baseline"] > 1.1
    assert c["compile+fp8"]["status"] == "within_noise"  # weight-only fallback: no faster than compile
    assert r["winner"]["name"] == "compile" and "--quantization" not in r["command"] and r["launches"] == 3


async def test_four_gpu_cfg_model_cfg_parallel_times_ulysses_beats_pure_ulysses(emulator, tmp_path):
    r = await tune(emulator, tmp_path, "cfg4_qwen_image", QWEN, {}, IMAGE)
    c = by_name(r)
    assert r["winner"]["name"] == "cfg_parallel_size=2xusp=2 (4 GPUs)"
    assert c["cfg_parallel_size=2xusp=2 (4 GPUs)"]["p50_s"] < c["usp=4 (4 GPUs)"]["p50_s"]
    assert "--cfg-parallel-size 2" in r["command"] and "--usp 2" in r["command"]
    assert {p["name"] for p in r["pruned"]} >= {"tensor_parallel_size=2", "tensor_parallel_size=4"}  # 3 heads


async def test_a_video_model_that_only_fits_with_offload(emulator, tmp_path):
    video = {"task": "text-to-video", "sizes": ["256x256"], "measured": 3, "warmup": 1, "num_inference_steps": 4,
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
    request_level = [c for c in r["candidates"] if c["request_settings"]]  # measured inside one server
    assert [c["request_settings"] for c in request_level] == [{"num_inference_steps": 15},
                                                               {"guidance_scale": 1.0, "true_cfg_scale": 1.0}]
    steps, guidance = request_level
    assert steps["status"] == "rejected_quality" and "stopped at the quality cliff" in steps["reason"]
    assert "tea_cache 0.3 + fewer steps (50%)" not in c  # 10 steps not tried after 15 failed
    assert guidance["status"] == "rejected_quality" and guidance["speedup_vs_baseline"] > 1.8 * 2.4 * 0.8
    assert steps["config"] == guidance["config"] == r["winner"]["config"]
    assert r["launches"] == 8  # baseline, compile+fp8, five thresholds, one server for steps and guidance


async def test_a_second_tune_reuses_measured_configurations_instead_of_launching(emulator, tmp_path):
    first = await tune(emulator, tmp_path, "image_fp8_compile", ZIMAGE, {}, IMAGE)
    second = await tune(emulator, tmp_path, "image_fp8_compile", ZIMAGE, {}, IMAGE)
    assert first["launches"] == 2 and second["launches"] == 0
    assert {c["status"] for c in second["candidates"]} == {"reused", "not_needed"}
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
    request_level = {c["name"]: c["request"] for c in plan["candidates"] if c["request"]}
    assert request_level == {"fewer steps (75%)": {"steps_fraction": 0.75},
                             "fewer steps (50%)": {"steps_fraction": 0.5},
                             "guidance off": {"guidance_scale": 1.0, "true_cfg_scale": 1.0}}


def test_guidance_is_pruned_for_a_pipeline_without_cfg_and_steps_need_a_step_count():
    from types import SimpleNamespace

    from omnitune.tools.plan import request_candidates
    from omnitune.tools.tune.request_level import request_settings
    pruned = []
    names = [c.name for c in request_candidates(SimpleNamespace(uses_cfg=False), pruned)]
    assert "guidance off" not in names and [p.name for p in pruned] == ["guidance off"]
    assert request_settings({"steps_fraction": 0.5}, 8) == {"num_inference_steps": 4}
    assert request_settings({"steps_fraction": 0.5}, None) is None  # the model default is not known here
    assert request_settings({"steps_fraction": 0.75}, 1) is None  # nothing fewer to try


async def test_a_tune_whose_omnitune_is_sigkilled_resumes_under_its_own_id(emulator, tmp_path):
    emulator.write("lossy_cliff")
    settings = emulator_settings(emulator, tmp_path, vllm_omni_source=SRC)
    request = {"model": QWEN, "goal": {"quality": "lossy"}, "workload": IMAGE}
    driver = subprocess.Popen([sys.executable, str(REPO / "tests" / "orphan_driver.py"), settings.model_dump_json(),
                               "tune_start", json.dumps({"request": request})], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": f"{FAKE_NVML_DIR}{os.pathsep}{REPO}"})
    try:
        job_id = json.loads(driver.stdout.readline())["id"]
        with sqlite3.connect(settings.db_path) as db:  # kill it mid-search, while a candidate server is up
            for _ in range(3000):
                done = db.execute("SELECT count(*) FROM tune_candidates WHERE job_id = ?", (job_id,)).fetchone()[0]
                if done >= 3 and emulator_processes(emulator):
                    break
                time.sleep(0.02)
        assert done >= 3
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
    async with Client(build_server(settings)) as client:
        interrupted = (await client.call_tool("job_status", {"job_id": job_id})).structured_content
        assert interrupted["status"] == "failed" and interrupted["error"].startswith("interrupted:")
        again = await client.call_tool("tune_start", {"resume": job_id})
        assert again.is_error is False and again.structured_content["id"] == job_id
        final = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 300})).structured_content
        servers = (await client.call_tool("list_servers", {})).structured_content["servers"]
    assert final["status"] == "completed", final["error"]
    r = final["result"]
    names = [c["name"] for c in r["candidates"]]
    assert len(names) == len(set(names))  # nothing measured twice
    assert [c["resumed"] for c in r["candidates"][:done]] == [True] * done
    assert not any(c["resumed"] for c in r["candidates"][done:])
    assert r["winner"]["name"] == "tea_cache 0.3" and any(n.startswith("resumed:") for n in r["notes"])
    assert all(s["state"] in ("stopped", "failed", "exited") for s in servers)  # exited: killed mid-launch or mid-stop
    assert emulator_processes(emulator) == []  # what the dead omnitune left running was stopped


async def test_resume_refuses_what_cannot_be_resumed(emulator, tmp_path):
    done = await tune(emulator, tmp_path, "image_fp8_compile", ZIMAGE, {}, IMAGE)
    job_id = done["folder"].rsplit("/", 1)[-1]
    async with Client(build_server(emulator_settings(emulator, tmp_path, vllm_omni_source=SRC))) as client:
        both = await client.call_tool("tune_start", {"resume": job_id, "request": {"model": ZIMAGE}})
        neither = await client.call_tool("tune_start", {})
        completed = await client.call_tool("tune_start", {"resume": job_id})
        unknown = await client.call_tool("tune_start", {"resume": "tune-nope"})
    assert both.is_error and "not both or neither" in both.content[0].text
    assert neither.is_error and "not both or neither" in neither.content[0].text
    assert completed.is_error and "is completed" in completed.content[0].text
    assert "job_status" in completed.content[0].text
    assert unknown.is_error and "no job 'tune-nope'" in unknown.content[0].text and job_id in unknown.content[0].text


async def test_a_memory_limit_rejects_what_peaks_over_it_and_fp8_can_drop_the_offload(emulator, tmp_path):
    r = await tune(emulator, tmp_path, "image_fp8_compile", ZIMAGE, {"vram_limit_mib": 17000}, IMAGE)
    c = by_name(r)
    assert c["baseline"]["status"] == "over_memory" and c["baseline"]["peak_memory_mib"] > 17000
    assert "over the limit 17000 MiB" in c["baseline"]["reason"]
    offloaded = c["baseline + layerwise offload"]
    assert offloaded["status"] == "measured" and offloaded["peak_memory_mib"] < 17000
    assert r["baseline"]["name"] == "baseline + layerwise offload"  # speed-ups are against what fits
    assert r["winner"]["name"] == "compile+fp8 without offload" and r["winner"]["peak_memory_mib"] < 17000
    assert "--quantization fp8" in r["command"] and "offload" not in r["command"]
    assert all(o["peak_memory_mib"] is None or o["peak_memory_mib"] <= 17000 or o["status"] == "over_memory"
               for o in r["candidates"])


async def test_a_model_too_big_for_one_gpu_even_offloaded_gets_the_fewest_gpus_that_fit(emulator, tmp_path):
    l4 = {"name": "NVIDIA L4", "memory_mib": 23034, "compute_capability": [8, 9]}
    video = {"task": "text-to-video", "sizes": ["256x256"], "measured": 3, "warmup": 1, "num_inference_steps": 4,
             "num_frames": 5, "fps": 8}
    world = {"gpus": [l4] * 2, "model": {"rejects": ["layerwise_offload", "cpu_offload"], "dit_gib": 16.0},
             "cost": {"tp_efficiency": 0.5}}  # TP 2 gives nothing: fitting is its only use
    r = await tune(emulator, tmp_path, "video_offload", WAN, {}, video, world=world)
    c = by_name(r)
    assert "out_of_memory" in c["baseline"]["reason"]
    assert {c[f"baseline + {k} offload"]["status"] for k in ("layerwise", "model-level")} == {"failed"}
    assert r["baseline"]["name"] == "baseline (TP 2)" and r["baseline"]["config"]["gpus"] == [0, 1]
    one = c["compile+fp8 on one GPU"]  # FP8 halves the DiT: one GPU is enough again, and faster than TP 2
    assert one["status"] == "measured" and one["config"]["gpus"] == [0]
    assert one["speedup_vs_baseline"] > 1.2
    # ... which opens the replicated layouts again: one over both GPUs, with FP8, wins (CFG parallel 1.9x and
    # Ulysses 1.8x are within the noise of each other in this world)
    assert r["winner"]["name"] in ("cfg_parallel_size=2 (2 GPUs)", "usp=2 (2 GPUs)")
    assert r["winner"]["config"]["quantization"] == "fp8" and r["winner"]["speedup_vs_baseline"] > 1.5
    assert "--tensor-parallel-size" not in r["command"] and r["command"].startswith("CUDA_VISIBLE_DEVICES=0,1 ")


async def test_a_cancelled_tune_stops_its_server_and_can_be_resumed(emulator, tmp_path):
    emulator.write("lossy_cliff")
    async with Client(build_server(emulator_settings(emulator, tmp_path, vllm_omni_source=SRC))) as client:
        job = await client.call_tool("tune_start", {"request": {"model": QWEN, "goal": {"quality": "lossy"},
                                                                "workload": IMAGE}})
        job_id = job.structured_content["id"]
        for _ in range(600):  # bounded: until three candidates are decided
            if (await client.call_tool("job_status", {"job_id": job_id})).structured_content["progress"] >= 3:
                break
            await anyio.sleep(0.05)
        running = await client.call_tool("tune_start", {"resume": job_id})  # refused, and its server untouched
        assert running.is_error and "is working" in running.content[0].text
        await client.call_tool("job_cancel", {"job_id": job_id})
        cancelled = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 120})).structured_content
        assert cancelled["status"] == "cancelled" and emulator_processes(emulator) == []
        again = await client.call_tool("tune_start", {"resume": job_id})
        final = (await client.call_tool("job_wait", {"job_id": job_id, "timeout_s": 300})).structured_content
    assert again.structured_content["id"] == job_id and final["status"] == "completed", final["error"]
    r = final["result"]
    assert sum(c["resumed"] for c in r["candidates"]) >= 3 and r["winner"]["name"] == "tea_cache 0.3"
    assert emulator_processes(emulator) == []
