"""The benchmark's parts on their own: statistics, workload validation, the HTTP client, the NVML sampler."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP

import httpx
import numpy as np
import pytest
from mcp import Client
from PIL import Image

from omnitune.server.main import build_server
from omnitune.tools.benchmark import client as client_module
from omnitune.tools.benchmark.client import OmniClient
from omnitune.tools.benchmark.stats import latency_stats
from omnitune.tools.benchmark.telemetry import GpuSampler
from omnitune.tools.benchmark.workload import Workload
from tests.conftest import H200


def test_latency_stats_match_numpy_percentiles_and_sample_std():
    rng = random.Random(5)
    values = [rng.lognormvariate(0, 0.5) for _ in range(137)]
    s = latency_stats(values)
    for q, got in ((50, s.p50_s), (90, s.p90_s), (99, s.p99_s)):
        assert got == pytest.approx(float(np.percentile(values, q)), rel=1e-12)
    assert s.std_s == pytest.approx(float(np.std(values, ddof=1))) and s.count == 137
    assert (s.min_s, s.max_s) == (min(values), max(values)) and latency_stats([]) is None


@pytest.mark.anyio
@pytest.mark.parametrize(("workload", "needle"), [
    ({"sizes": ["1024*1024"]}, "WIDTHxHEIGHT"),
    ({"task": "text-to-video", "n": 2}, "only for text-to-image"),
    ({"extra_body": {"seed": 3}}, "extra_body repeats"),
    ({"measured": None}, "duration_s"),
    ({"concurrency": 0}, "concurrency"),
])
async def test_an_impossible_workload_is_refused_before_anything_is_sent(settings, workload, needle):
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("benchmark", {"base_url": "http://127.0.0.1:9", "workload": workload})
    assert result.is_error and needle in result.content[0].text


def test_requests_carry_the_seed_size_and_only_the_fields_set():
    w = Workload(sizes=["512x768"], seeds=[3], guidance_scale=4.0, extra_body={"true_cfg_scale": 4.0})
    spec = w.request(1, 3, "512x768")
    assert spec.params == {"prompt": w.prompt_list[1], "size": "512x768", "seed": 3, "n": 1,
                           "response_format": "b64_json", "guidance_scale": 4.0, "true_cfg_scale": 4.0}
    assert (spec.width, spec.height) == (512, 768)
    video = Workload(task="text-to-video", sizes=["832x480"], num_frames=33, fps=16).request(0, 42, "832x480")
    assert video.params == {"prompt": video.params["prompt"], "size": "832x480", "seed": 42, "num_frames": 33,
                            "fps": 16.0}


def _png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_image_json_body_metrics_and_a_truncated_png_is_undecodable():
    sent = []
    good = _png(8, 8)

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        b64 = good if len(sent) == 1 else good[: len(good) // 2 // 4 * 4]
        return httpx.Response(200, json={"created": 1, "data": [{"b64_json": b64}], "output_format": "png",
                                         "metrics": {"peak_memory_mb": 812.5, "stage_durations": {"denoise": 0.2},
                                                     "inference_time_s": 0.25}})

    client = OmniClient("http://127.0.0.1:1", 5, transport=httpx.MockTransport(handler))
    first = client.image({"prompt": "p", "size": "8x8", "seed": 1})
    second = client.image({"prompt": "p", "size": "8x8", "seed": 1})
    assert first.ok and first.media == [{"width": 8, "height": 8, "frames": 1}] and first.latency_s > 0
    assert first.server == {"peak_memory_mb": 812.5, "stage_durations": {"denoise": 0.2}, "inference_time_s": 0.25}
    assert sent[0] == {"prompt": "p", "size": "8x8", "seed": 1}
    assert not second.ok and second.error_kind == "undecodable"


def test_video_form_is_multipart_polling_backs_off_and_a_failed_job_reports_the_servers_message(monkeypatch):
    forms, polls, slept = [], [], []
    real_sleep, me = time.sleep, threading.get_ident()

    def sleep(seconds: float) -> None:  # the client's own waits between polls: what it asked for, not a clock
        if threading.get_ident() == me:  # (time.sleep is patched process-wide: other threads' naps are not counted)
            slept.append(seconds)
        real_sleep(seconds)
    monkeypatch.setattr(client_module.time, "sleep", sleep)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            msg = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n" + request.content)
            forms.append({p.get_param("name", header="content-disposition"): p.get_payload(decode=True).decode()
                          for p in msg.iter_parts()})
            return httpx.Response(200, json={"id": "video_1", "status": "queued"})
        polls.append(time.perf_counter())
        if len(polls) < 6:
            return httpx.Response(200, json={"id": "video_1", "status": "in_progress"})
        return httpx.Response(200, json={"id": "video_1", "status": "failed",
                                         "error": {"code": 500, "message": "CUDA out of memory"}})

    client = OmniClient("http://127.0.0.1:1", 5, transport=httpx.MockTransport(handler))
    out = client.video({"prompt": "a cat", "size": "64x64", "seed": 9, "fps": 8.0}, "poll", 0.005, 0.02)
    assert forms == [{"prompt": "a cat", "size": "64x64", "seed": "9", "fps": "8.0"}]
    assert not out.ok and out.error_kind == "job_failed" and out.error == "CUDA out of memory"
    # the interval grows (x1.5) but never past poll_max_s; a loaded host's oversleeps are not the client's
    assert len(polls) == 6 and slept == pytest.approx([0.005, 0.0075, 0.01125, 0.016875, 0.02, 0.02]), slept


def test_the_sampler_catches_a_50_ms_memory_spike_and_measures_its_own_cost(fake_gpus, tmp_path):
    fake_gpus(gpus=[H200, H200])
    state = tmp_path / "emu" / "emu-state" / "spike.json"
    sampler = GpuSampler([0, 1], hz=200, keep_timeline=True).start()
    sampler.phase("measured")
    deadline = time.monotonic() + 5
    while sampler.ticks < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    state.write_text(json.dumps({"pid": os.getpid(), "memory_mib": {"1": 8192}}))
    time.sleep(0.05)
    state.unlink()
    deadline = time.monotonic() + 5
    ticks = sampler.ticks
    while sampler.ticks < ticks + 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    summary = sampler.stop()
    # its rate (200 Hz asked; about 96 Hz seen with both cores busy) is benchmarks/nvml_sampler.py's to report; here:
    # fast enough to see a 50 ms spike, and its own cost measured
    assert summary.available and summary.rate_hz > 40 and 0 < summary.cpu_share < 1
    gpu0, gpu1 = summary.gpus
    assert (gpu0.memory_peak_mib, gpu1.memory_peak_mib) == (0, 8192) and gpu1.memory_start_mib == 0
    assert 0 < gpu1.memory_mean_mib < 8192 and gpu0.name == "NVIDIA H200"
    assert sum(1 for _, _, row in sampler.timeline() if row[1] == 8192) >= 1  # about 10 at 200 Hz


def test_no_nvml_is_a_reason_in_the_summary_not_a_failure(fake_gpus, monkeypatch):
    fake_gpus(gpus=[H200])
    monkeypatch.setenv("VLLM_EMU_NVML", "missing")
    summary = GpuSampler([0]).start().stop()
    assert summary.available is False and "NVML library not found" in summary.reason and summary.gpus == []


@pytest.mark.anyio
async def test_a_dry_run_lists_the_exact_requests_and_sends_nothing(settings):
    workload = {"task": "text-to-video", "sizes": ["832x480", "480x832"], "seeds": [1, 2], "prompt_count": 1,
                "num_frames": 33, "fps": 16, "warmup": 1, "measured": 100}
    async with Client(build_server(settings)) as client:
        result = await client.call_tool("benchmark", {"base_url": "http://127.0.0.1:9", "workload": workload,
                                                      "dry_run": True})
    out = result.structured_content
    assert result.is_error is False and out["status"] == "dry_run" and out["run_id"] is None
    assert [(p["phase"], p["params"]["size"], p["params"]["seed"]) for p in out["plan"]] == [
        ("warmup", "832x480", 1), ("warmup", "480x832", 1), ("measured", "832x480", 1), ("measured", "832x480", 2),
        ("measured", "480x832", 1), ("measured", "480x832", 2)]
    assert {(p["method"], p["path"], p["content_type"]) for p in out["plan"]} == \
        {("POST", "/v1/videos", "multipart/form-data")}
    assert out["plan"][0]["params"]["num_frames"] == 33
