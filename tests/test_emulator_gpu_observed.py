"""The emulator against what real vLLM-Omni 0.26.0 did on an H200 (issue 22, benchmarks/real_engine/OBSERVED.md).

The real logs are in tests/fixtures/real-logs/: a healthy tiny-wan start with 7 sync video requests, and a
tiny-zimage load failure whose cause stands 314 lines above the empty RuntimeError that ends it.
"""

from __future__ import annotations

import re
import socket

import httpx
import pytest
from mcp import Client

from omnitune.server.main import build_server
from tests.conftest import FIXTURE_MODELS, H200, REPO
from tests.emulator.harness import make_emulator, start, wait_until
from tests.launch_helpers import emulator_processes, emulator_settings, world

ZIMAGE = str(FIXTURE_MODELS / "tiny-zimage")
WAN = str(FIXTURE_MODELS / "tiny-wan")
REAL_LOGS = REPO / "tests" / "fixtures" / "real-logs"
QUICK = {"startup_s": 0.05, "compile_penalty_s": 0.0, "step_s_per_megapixel": 0.002}
CAUSE = "ValueError: There is no module or parameter named 'text_encoder.embed_tokens' in ZImagePipeline"
FAILED = "RuntimeError: Orchestrator initialization failed: "
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def text(path) -> str:
    """A log as written: carriage returns (tqdm's, the real traceback's) kept, lines split on newlines only."""
    return path.read_bytes().decode(errors="replace")


@pytest.fixture
def emu(tmp_path):
    return make_emulator(tmp_path)


def normalised(lines: list[str], model: str) -> list[str]:
    """What stays the same between two runs: no numbers, ids, model paths, pids, column widths or padding."""
    out = []
    for line in lines:
        line = line.replace(model, "MODEL").replace("/work/main/.carry/real/models/tiny-wan", "MODEL")
        line = re.sub(r"(video_sync|img_gen)-[0-9a-f-]+", "RID", line)
        line = re.sub(r"\d+(\.\d+)?", "0", line)
        out.append(re.sub(r"[ \-]+", " ", line))
    return out


def between(lines: list[str], first: str, last: str, start: int = 0) -> list[str]:
    """The lines from the first one containing ``first`` (from ``start`` on) to the next containing ``last``."""
    i = next(k for k in range(start, len(lines)) if first in lines[k])
    j = next(k for k in range(i, len(lines)) if last in lines[k])
    return lines[i: j + 1]


# -- 1. response fields ---------------------------------------------------------------------------------------

def test_image_metrics_carry_no_inference_time_but_the_real_stage_durations_and_peak_memory(emu):
    """Real (H200, tiny-qwenimage): metrics = {peak_memory_mb: 606.0, stage_durations: {queue_wait_ms,
    stage_0_gen_ms}}; 0.30.0's _build_image_response_metrics sets those two keys and nothing else."""
    emu.write({"gpus": [H200], "cost": {**QUICK, "step_s_per_megapixel": 2.0}})
    served = start(emu, ZIMAGE, "--enforce-eager")
    try:
        r = httpx.post(f"{served.url}/v1/images/generations", timeout=30,
                       json={"prompt": "a fox", "size": "128x128", "num_inference_steps": 8, "seed": 1})
    finally:
        served.stop()
    metrics = r.json()["metrics"]
    assert r.status_code == 200 and set(metrics) == {"peak_memory_mb", "stage_durations"}
    assert set(metrics["stage_durations"]) == {"queue_wait_ms", "stage_0_gen_ms"} and metrics["peak_memory_mb"] > 0
    simulated_ms = 2.0 * 128 * 128 / 1e6 * 8 * 1000 + 2  # step cost x megapixels x steps, plus fixed_s
    assert simulated_ms <= metrics["stage_durations"]["stage_0_gen_ms"] < simulated_ms + 500  # ms, not s


def test_sync_video_reports_its_time_in_headers_as_the_real_route_and_logs_the_same_request_id(emu):
    """Real: X-Inference-Time-S with 3 decimals (0.169 s p50 eager on tiny-wan) measured around generation and
    MP4 encoding, X-Stage-Durations {queue_wait_ms, stage_0_gen_ms}; the log's tables name the X-Request-Id."""
    emu.write({"gpus": [H200], "cost": {**QUICK, "step_s_per_megapixel": 20.0}})
    served = start(emu, WAN, "--enforce-eager")
    try:
        r = httpx.post(f"{served.url}/v1/videos/sync", timeout=60,
                       data={"prompt": "waves", "size": "32x32", "num_frames": "3", "num_inference_steps": "4"})
        rid = r.headers.get("x-request-id", "")
        # the route logs its tables as the response goes out: on a busy machine the lines land a moment later
        wait_until(lambda: f"[StageRequestStats [request_id={rid}]]" in text(served.log), timeout=20)
        log = text(served.log)
    finally:
        served.stop()
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert re.fullmatch(r"\d+\.\d{3}", r.headers["x-inference-time-s"])
    stages = __import__("json").loads(r.headers["x-stage-durations"])
    assert set(stages) == {"queue_wait_ms", "stage_0_gen_ms"}
    assert float(r.headers["x-inference-time-s"]) >= stages["stage_0_gen_ms"] / 1000 - 0.0005
    assert re.fullmatch(r"video_sync-[0-9a-f]{16}-[0-9a-f]{8}", rid)
    assert f"[OmniTiming] req={rid} total=" in log and f"[StageRequestStats [request_id={rid}]]" in log


# -- 3. logs as long and noisy as the real ones ----------------------------------------------------------------

def test_a_healthy_start_writes_the_real_gpu_startup_lines_and_listens_only_after_them(emu):
    """From the real log: weights, worker ready, the dummy run (with the float32 attention override the real
    server logged for --dtype float32), the route listing and uvicorn's start lines, in the real order."""
    emu.write({"gpus": [H200], "cost": QUICK})
    served = start(emu, WAN, "--enforce-eager", "--dtype", "float32")
    try:
        lines = text(served.log).split("\n")
    finally:
        served.stop()
    real = text(REAL_LOGS / "gpu-0.26.0-startup-wan.log").split("\n")
    ours = between(lines, "Loading weights: 100%", "Application startup complete.")
    theirs = between(real, "Loading weights: 100%", "Application startup complete.")
    assert normalised(ours, WAN) == normalised(theirs, WAN)
    assert len(ours) > 90 and any("Route: /v1/images/generations, Methods: POST" in x for x in ours)
    assert any(f"Starting vLLM API server (pure diffusion mode) on http://127.0.0.1:{served.port}" in x
               for x in ours)
    assert "Only SDPA supports float32" in "\n".join(ours)
    # the first /health answer comes after uvicorn's last start line, as the port only listens then
    done = next(i for i, x in enumerate(lines) if "Application startup complete." in x)
    assert all('"GET /health' not in x for x in lines[:done])


def test_without_float32_the_attention_override_warning_is_not_logged(emu):
    emu.write({"gpus": [H200], "cost": QUICK})
    served = start(emu, ZIMAGE, "--enforce-eager")
    try:
        log = text(served.log)
    finally:
        served.stop()
    assert "Application startup complete." in log and "Only SDPA supports float32" not in log
    assert "pipeline_wan2_2.py" not in log  # Wan's own warnings only for a Wan pipeline


def test_each_request_writes_the_real_per_request_block_line_for_line(emu):
    """The real tiny-wan log's second sync request (steps=4, seed=1): 43 lines from the handler line to the
    access line (sampling params, tqdm bars, [Overall Summary], [RequestE2EStats], [OmniTiming],
    [StageRequestStats], MP4 encoding, uvicorn's access line). Ten requests make a 400-line log, as real."""
    emu.write({"gpus": [H200], "cost": QUICK})
    served = start(emu, WAN, "--enforce-eager", "--dtype", "float32")
    try:
        with httpx.Client(base_url=served.url, timeout=60) as c:
            before = len(text(served.log).split("\n"))
            for _ in range(2):
                r = c.post("/v1/videos/sync", data={"prompt": "waves", "size": "32x32", "num_frames": "3",
                                                    "num_inference_steps": "4", "seed": "1"})
                assert r.status_code == 200
            wait_until(lambda: text(served.log).count('"POST /v1/videos/sync HTTP/1.1" 200 OK') == 2)
            lines = text(served.log).split("\n")
            c.post("/v1/images/generations", json={"prompt": "a fox", "size": "32x32", "num_inference_steps": 4})
            wait_until(lambda: '"POST /v1/images/generations HTTP/1.1" 200 OK' in text(served.log))
            image_log = text(served.log).split("\n")
    finally:
        served.stop()
    real = text(REAL_LOGS / "gpu-0.26.0-startup-wan.log").split("\n")
    second_real = next(i for i, x in enumerate(real) if '"POST /v1/videos/sync' in x) + 1
    theirs = between(real, "Video generation handler", '"POST /v1/videos/sync', second_real)
    ours = between(lines, "Video generation handler", '"POST /v1/videos/sync', before)
    assert len(ours) == len(theirs) == 43
    assert normalised(ours, WAN) == normalised(theirs, WAN)
    assert (len(lines) - before) / 2 >= 38
    image_block = image_log[len(lines):]
    assert len(image_block) >= 38 and any("[OmniTiming] req=img_gen-" in x for x in image_block)
    assert all(x.startswith("\x1b[0;36m(APIServer pid=") for x in image_block if "[stats.py:" in x)


# -- 4. a GPU load failure whose cause is hundreds of lines above the last line --------------------------------

def test_gpu_load_failure_writes_the_real_log_with_the_cause_314_lines_above_an_empty_runtime_error(emu):
    emu.write({"gpus": [H200], "cost": QUICK, "faults": {"gpu_load_failure": True}})
    served = start(emu, ZIMAGE, "--enforce-eager", wait=False)
    assert served.proc.wait(30) == 1
    lines = text(served.log).rstrip("\n").split("\n")
    assert ANSI.sub("", lines[-1]).endswith(FAILED)
    cause = next(i for i, x in enumerate(lines) if x.startswith(CAUSE))
    assert len(lines) - 1 - cause == 314
    assert sum(ANSI.sub("", x).endswith("EOFError") for x in lines[cause:]) >= 4
    real = text(REAL_LOGS / "gpu-0.26.0-load-failure-zimage.log").rstrip("\n").split("\n")
    start_at = next(i for i, x in enumerate(real) if "[AsyncOmniEngine] Initializing with model" in x) + 1
    ours = lines[next(i for i, x in enumerate(lines) if "[OmniEngine] Initializing with model" in x) + 1:]
    ours = [x for x in ours if "vLLM-Omni (emulated)" not in x]  # the emulator's one line of its own
    assert normalised(ours, ZIMAGE) == normalised(real[start_at:], "/work/main/.carry/real/models/tiny-zimage")
    with pytest.raises(OSError):  # never listened
        socket.create_connection(("127.0.0.1", served.port), timeout=1).close()


@pytest.mark.anyio
async def test_launch_server_reports_the_hidden_cause_of_a_gpu_load_failure_in_its_first_lines(emulator, tmp_path):
    """The launcher's answer must name the ValueError (314 lines above the end), not only the empty
    RuntimeError and the EOFError tracebacks of the last 40 lines, and carry no ANSI colour codes.
    Needs the launcher's cause extraction from branch ``launch`` (tools/launch/process.failure/root_cause):
    red on main before that merge, green after."""
    emulator.write(world(1, faults={"gpu_load_failure": True}))
    async with Client(build_server(emulator_settings(emulator, tmp_path))) as client:
        result = await client.call_tool("launch_server", {"config": {"model": ZIMAGE, "health_timeout_s": 60}})
        listed = (await client.call_tool("list_servers", {})).structured_content
    report = "\n".join(getattr(part, "text", "") for part in result.content)
    assert result.is_error is True
    assert listed is not None and listed["servers"][0]["state"] == "failed"
    assert emulator_processes(emulator) == []
    first = "\n".join(report.split("\n")[:3])
    assert "There is no module or parameter named 'text_encoder.embed_tokens'" in first, report[:3000]
    assert "\x1b[" not in report
