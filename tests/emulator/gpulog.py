"""Log lines of a real GPU server (vLLM-Omni 0.26.0 on an H200, issue 22), so the emulator's log is as long and noisy.

Built from the two real logs in ``tests/fixtures/real-logs/``: the healthy tiny-wan start (worker load, dummy run,
the route listing, uvicorn's start lines) and the tiny-zimage load failure (the cause, a ``ValueError`` of the
weight loader, stands 314 lines above the log's last line, an empty ``RuntimeError: Orchestrator initialization
failed: ``, with ``EOFError`` tracebacks of the worker pipes between). Per request the real server prints ~40
lines: sampling params, tqdm bars, three stats tables and an ``[OmniTiming]`` line; ``request_block`` writes them
with the request's own numbers. Model path, pid, host/port and time stamps are the running server's.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from functools import lru_cache
from pathlib import Path

REAL_LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "real-logs"
HEALTHY = "gpu-0.26.0-startup-wan.log"
LOAD_FAILURE = "gpu-0.26.0-load-failure-zimage.log"
CAPTURED = {HEALTHY: ("/work/main/.carry/real/models/tiny-wan", "WanPipeline"),
            LOAD_FAILURE: ("/work/main/.carry/real/models/tiny-zimage", "ZImagePipeline")}
ENGINE_START = "[AsyncOmniEngine] Initializing with model"  # the 0.30.0 head already ends with this step
STAMP = re.compile(r"\d\d-\d\d \d\d:\d\d:\d\d")
API = "\x1b[0;36m(APIServer pid={pid})\x1b[0;0m "
BAR = "\u2588" * 10


@lru_cache(maxsize=4)
def _lines(name: str) -> tuple[str, ...]:
    return tuple((REAL_LOGS / name).read_bytes().decode(errors="replace").split("\n"))  # carriage returns kept


def _fill(text: str, name: str, model: str, pipeline: str) -> str:
    captured_model, captured_pipeline = CAPTURED[name]
    text = text.replace(captured_model, model).replace(captured_pipeline, pipeline)
    text = re.sub(r"pid=\d+\)", f"pid={os.getpid()})", text)
    text = re.sub(r"Started server process \[\d+\]", f"Started server process [{os.getpid()}]", text)
    return STAMP.sub(time.strftime("%m-%d %H:%M:%S"), text)


def _after_engine_start(name: str) -> list[str]:
    lines = _lines(name)
    return list(lines[next(i for i, line in enumerate(lines) if ENGINE_START in line) + 1:])


def loading(model: str, pipeline: str) -> str:
    """What a real GPU server prints while its worker starts (the part of the captured start before its weights)."""
    lines = _after_engine_start(LOAD_FAILURE)
    lines = lines[: next(i for i, line in enumerate(lines) if "Resolved diffusion attention backend" in line)]
    lines = [line for line in lines if "z_image_transformer.py" not in line]  # Z-Image's own init line
    return _fill("\n".join(lines), LOAD_FAILURE, model, pipeline) + "\n"


def loaded(model: str, pipeline: str, host: str, port: int, startup_s: float, weights_gib: float,
           process_gib: float, float32: bool) -> str:
    """The rest of the real healthy start, up to uvicorn's "Application startup complete.": weights, worker ready,
    dummy run, the route listing. Wan-only warnings only for Wan pipelines; the float32 attention override only
    with ``--dtype float32`` (as observed: 'Only SDPA supports float32. Overriding user config ...')."""
    lines = list(_lines(HEALTHY))
    end = next(i for i, line in enumerate(lines) if "Application startup complete." in line)
    out = []
    for line in lines[: end + 1]:
        if "pipeline_wan2_2.py" in line and "Wan" not in pipeline:
            continue
        if "Only SDPA supports float32" in line and not float32:
            line = line[: line.index("\x1b")] if "\x1b" in line else line
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r"initialized in [\d.]+ seconds", f"initialized in {startup_s:.2f} seconds", text)
    text = re.sub(r"Model loading took [\d.]+ GiB", f"Model loading took {weights_gib:.4f} GiB", text)
    text = re.sub(r"after model loading: [\d.]+ GiB", f"after model loading: {process_gib:.2f} GiB", text)
    text = re.sub(r"http://127\.0\.0\.1:\d+", f"http://{host}:{port}", text)
    return _fill(text, HEALTHY, model, pipeline) + "\n"


def load_failure(model: str, pipeline: str) -> str:
    """The real GPU load failure after the head: the weight loader's ValueError 314 lines above the empty
    ``RuntimeError: Orchestrator initialization failed: `` that ends the log, EOFError tracebacks between."""
    return _fill("\n".join(_after_engine_start(LOAD_FAILURE)), LOAD_FAILURE, model, pipeline)


def _table(title: str, header: str, rows: list[tuple[str, object]]) -> list[str]:
    """The stats tables of vllm_omni/metrics/stats.py: a left-aligned field column, a right-aligned value one."""
    cells = [(k, "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in rows]
    kw = max(len("Field"), *(len(k) for k, _ in cells))
    vw = max(len(header), *(len(v) for _, v in cells))
    rule = f"+{'-' * (kw + 2)}+{'-' * (vw + 2)}+"
    return ["", title, rule, f"| {'Field':<{kw}} | {header:>{vw}} |", rule,
            *(f"| {k:<{kw}} | {v:>{vw}} |" for k, v in cells), rule]


def _bar(done: int, total: int, elapsed_s: float) -> str:
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    stamp = time.strftime("%M:%S", time.gmtime(elapsed_s))
    fill = BAR[: round(10 * done / total)] if total else BAR
    return f"{100 * done // max(1, total):3d}%|{fill:<10}| {done}/{total} [{stamp}<00:00, {rate:.2f}it/s]"


def request_block(*, request_id: str, video: bool, steps: int, seed: int, guidance: float | None, total_s: float,
                  gen_s: float, batch_id: int, pixels: int, pipeline: str) -> str:
    """The ~40 lines a real server prints per request (lines as in the captured tiny-wan log)."""
    pid = os.getpid()
    stamp = time.strftime("%m-%d %H:%M:%S")

    def api(where: str, message: str) -> str:
        return f"{API.format(pid=pid)}INFO {stamp} [{where}] {message}"

    lines = []
    if video:
        lines += [api("api_server.py:3084", "Video generation handler: OmniOpenAIServingVideo"),
                  api("serving_video.py:184", "Boundary ratio parse: request=None gen_params=None"),
                  api("serving_video.py:225", f"Video sampling params: steps={steps} guidance={guidance} "
                                              f"guidance_2=None seed={seed}")]
    if "Wan" in pipeline:
        lines.append(f"\x1b[33mWARNING\x1b[0m \x1b[90m{stamp}\x1b[0m \x1b[90m[pipeline_wan2_2.py:606]\x1b[0m "
                     "boundary_ratio is required for T2V generation. using default value 0.875")
    lines += ["", _bar(0, steps, 0.0).replace("00:00<00:00, 0.00it/s", "00:00<?, ?it/s"), _bar(steps, steps, gen_s)]
    e2e_ms, gen_ms = total_s * 1000, gen_s * 1000
    tables = [("stats.py:765", _table("[Overall Summary]", "Value", [
                  ("e2e_requests", 1), ("e2e_wall_time_ms", e2e_ms), ("e2e_avg_time_per_request_ms", e2e_ms),
                  ("e2e_stage_0_wall_time_ms", e2e_ms * 0.9995)])),
              ("stats.py:791", _table(f"[RequestE2EStats [request_id={request_id}]]", "Value",
                                      [("e2e_total_ms", e2e_ms * 0.9995)]))]
    for where, table in tables:
        lines += [api(where, row) for row in table]
    lines.append(api("stats.py:832", f"[OmniTiming] req={request_id} total={total_s:.2f}s engine={total_s:.2f}s "
                                     f"stages=[0:{gen_s:.2f}s]"))
    stage = _table(f"[StageRequestStats [request_id={request_id}]]", "0", [
        ("batch_id", batch_id), ("batch_size", 1), ("denoise_step_latency_ms", gen_ms / max(1, steps)),
        ("image_pixels", pixels), ("inter_output_latencies_ms", None), ("output_unit_count", 1),
        ("output_unit_type", "image"), ("serving_time_to_first_output_ms", e2e_ms * 0.998),
        ("stage_gen_time_ms", gen_ms), ("vllm_itls_ms", None)])
    lines += [api("stats.py:874", row) for row in stage]
    if video:
        encoding_ms = max(0.0, e2e_ms - gen_ms)
        lines.append(api("serving_video.py:347", f"Video response encoding (MP4 bytes): {encoding_ms:.2f} ms"))
    return "\n".join(lines)


class RealFormat(logging.Formatter):
    """The real server's line prefixes: vLLM's ``(APIServer pid=N) LEVEL mm-dd HH:MM:SS [file:line]``, uvicorn's
    access lines ``(APIServer pid=N) INFO:     host:port - "GET /health HTTP/1.1" 200 OK``; ``raw`` records
    (blocks of real lines) as they are."""

    def __init__(self) -> None:
        super().__init__(API.format(pid=os.getpid()) + "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] "
                         "%(message)s", datefmt="%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "raw", False):
            return record.getMessage()
        if record.name == ACCESS:
            return f"{API.format(pid=os.getpid())}{record.levelname}:     {record.getMessage()}"
        return super().format(record)


ACCESS = "uvicorn.access"


def setup_logging() -> logging.Logger:
    """One stdout handler (one lock: blocks written from request threads never interleave line by line)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(RealFormat())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    return logging.getLogger(ACCESS)


def write(text: str) -> None:
    """A block of real-looking lines into the log, whole."""
    logging.getLogger("vllm_omni.emulator").info("%s", text, extra={"raw": True})
