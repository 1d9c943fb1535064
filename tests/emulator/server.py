"""The emulated `vllm serve MODEL --omni` process: HTTP API of vLLM-Omni 0.30.0 over the simulated world.

As the real 0.30.0, it binds its port before loading but listens only once loaded: while loading a connection
is refused (no HTTP answer at all), and another process cannot take the port. Startup decisions are the real
parser's and config build's (``startup.py``); failure logs are real ones (``startlog.py``). Errors have the real
shapes: 400 with an OpenAI-style error object for invalid requests, FastAPI's ``{"detail"}`` for 404/405.
One request runs at a time on the simulated GPUs; others queue, as in a single diffusion engine.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.emulator import flags, gpulog, media, startlog, startup
from tests.emulator import world as w
from tests.emulator.api_schema import parse_size, public, schema_errors, typed_form, validation_error
from tests.emulator.engine import Engine

log = logging.getLogger("vllm_omni.emulator")
access = logging.getLogger(gpulog.ACCESS)


# The real app's routes the emulator serves, in the real registration order (api_server.py).
ROUTES: list[tuple[str, set[str]]] = [
    (r"/version", {"GET"}), (r"/metrics", {"GET"}), (r"/health", {"GET"}), (r"/v1/models", {"GET"}),
    (r"/v1/images/generations", {"POST"}), (r"/v1/videos", {"POST"}), (r"/v1/videos/sync", {"POST"}),
    (r"/v1/videos", {"GET"}), (r"/v1/videos/[^/]+", {"GET"}), (r"/v1/videos/[^/]+", {"DELETE"}),
    (r"/v1/videos/[^/]+/content", {"GET"})]


# vLLM 0.30.0 (entrypoints/serve/exception_handling) hides absolute paths under these system folders, and any path
# that ends in a file name with an extension, in the error messages it returns.
_SYSTEM_PATH = re.compile(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+")
_FILE_PATH = re.compile(r"(?:/[\w\-]+)+/[\w\-]+\.\w+")


def hide_paths(message: str) -> str:
    return _FILE_PATH.sub("<path>", _SYSTEM_PATH.sub("<path>", message)).strip()


class Handler(BaseHTTPRequestHandler):
    engine: Engine
    model_path: str = ""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as uvicorn: no 40 ms delayed-ACK stall between headers and body

    block: str | None = None  # the request's log lines, written after its answer (they cost the client nothing)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """uvicorn's access line (127.0.0.1:53028 - "GET /health HTTP/1.1" 200 OK), after the request's block."""
        status = int(code) if str(code).isdigit() else 0
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        self.access_line = (self.client_address[0], self.client_address[1], self.requestline, code, phrase)

    def write_log(self) -> None:
        block, self.block = self.block, None
        if block:
            gpulog.write(block)
        line, self.access_line = getattr(self, "access_line", None), None
        if line:
            access.info('%s:%s - "%s" %s %s', *line)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's parameter name
        log.info(format, *args)

    def reply(self, status: int, body: bytes | dict, ctype: str = "application/json", headers: dict | None = None):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        self.write_log()

    def error(self, status: int, message: str) -> None:
        """vLLM's HTTPException handler: an OpenAI-style error object whose type is the status phrase, its message
        with file paths hidden as the real one hides them (so a model folder under /tmp or /root reads '<path>')."""
        self.reply(status, {"error": {"message": hide_paths(message), "type": HTTPStatus(status).phrase,
                                      "param": None, "code": status}})

    def invalid(self, errors: list[dict]) -> None:
        """vLLM's RequestValidationError handler: 400, not FastAPI's 422."""
        self.reply(400, validation_error(errors))

    def starlette(self, status: int, allow: set[str] | None = None) -> None:
        """What Starlette's router answers for no route (404) or a route without the method (405)."""
        headers = {"Allow": ", ".join(sorted(allow))} if allow else None
        self.reply(status, {"detail": HTTPStatus(status).phrase}, headers=headers)

    def route(self, method: str) -> bool:
        """True if the path has a route for this method; else answer 404/405 as the real app and return False."""
        path = self.path.partition("?")[0]
        matches = [methods for pattern, methods in ROUTES if re.fullmatch(pattern, path)]
        if any(method in methods for methods in matches):
            return True
        if matches:  # Starlette reports the methods of the first route whose path matched
            self.starlette(405, matches[0])
        else:
            self.starlette(404)
        return False

    def form(self) -> dict[str, str]:
        """Form fields, multipart or urlencoded (FastAPI's Form() takes both)."""
        ctype = self.headers.get("Content-Type", "")
        raw = self.body()
        if ctype.startswith("multipart/form-data"):
            msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
            fields: dict[str, str] = {}
            for part in msg.iter_parts():
                payload = part.get_payload(decode=True)
                fields[str(part.get_param("name", header="content-disposition"))] = \
                    payload.decode() if isinstance(payload, bytes) else str(payload or "")
            return fields
        from urllib.parse import parse_qsl
        return dict(parse_qsl(raw.decode(), keep_blank_values=True))

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        e = self.engine
        if not self.route("GET"):
            return None
        if self.path == "/health":
            if not e.ready:  # only in the opt-in "503" loading mode: the real port refuses connections instead
                return self.error(503, "The server is still loading the model.")
            return self.reply(200, {"status": "healthy"})
        if self.path == "/v1/models":
            now = int(time.time())
            permission = {"id": f"modelperm-{uuid.uuid4().hex[:16]}", "object": "model_permission", "created": now,
                          "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                          "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                          "organization": "*", "group": None, "is_blocking": False}
            model = {"id": e.served, "object": "model", "created": now, "owned_by": "vllm", "root": self.model_path,
                     "parent": None, "max_model_len": None, "permission": [permission]}
            return self.reply(200, {"object": "list", "data": [model]})
        if self.path == "/metrics":
            text = f"# TYPE vllm_omni_requests_total counter\nvllm_omni_requests_total {e.count}\n"
            return self.reply(200, text.encode(), "text/plain; version=1.0.0; charset=utf-8")
        if self.path == "/version":
            return self.reply(200, {"version": "0.30.0"})
        path, _, query = self.path.partition("?")
        if path == "/v1/videos":
            return self.list_videos(query)
        m = re.match(r"^/v1/videos/([\w-]+)(/content)?$", path)
        job = e.videos.get(m.group(1)) if m else None
        if m is None:
            return None
        if job is None:
            return self.error(404, "Video not found")
        if m.group(2):
            if job["status"] == "failed":  # as api_server.download_video
                return self.error(422, "Video generation failed. Check job status for error details.")
            if job["status"] != "completed":
                return self.error(404, "Generation is still in-progress")
            return self.reply(200, job["_mp4"], "video/mp4")
        # a failed job answers with its error code as the status, as api_server.retrieve_video
        return self.reply(job["error"]["code"] if job["status"] == "failed" else 200, public(job))

    def list_videos(self, query: str) -> None:
        from urllib.parse import parse_qs
        q = {k: v[-1] for k, v in parse_qs(query).items()}
        jobs = sorted(self.engine.videos.values(), key=lambda j: j["created_at"],
                      reverse=q.get("order", "desc") == "desc")
        if q.get("after"):
            ids = [j["id"] for j in jobs]
            jobs = jobs[ids.index(q["after"]) + 1:] if q["after"] in ids else []
        limit = int(q["limit"]) if q.get("limit") else None
        more = limit is not None and len(jobs) > limit
        jobs = jobs[:limit] if limit is not None else jobs
        self.reply(200, {"object": "list", "data": [public(j) for j in jobs], "has_more": more,
                         "first_id": jobs[0]["id"] if jobs else None, "last_id": jobs[-1]["id"] if jobs else None})

    def do_DELETE(self) -> None:
        if not self.route("DELETE"):
            return None
        m = re.match(r"^/v1/videos/([\w-]+)$", self.path)
        job = self.engine.videos.get(m.group(1)) if m else None
        if job is None:
            return self.error(404, "Video not found")
        if job["status"] not in ("completed", "failed"):
            return self.error(409, "Video output not yet available. Please try again later.")
        del self.engine.videos[job["id"]]
        self.reply(200, {"id": job["id"], "object": "video.deleted", "deleted": True})

    def do_PUT(self) -> None:
        self.route("PUT")

    def do_PATCH(self) -> None:
        self.route("PATCH")

    def do_POST(self) -> None:
        e = self.engine
        if not self.route("POST"):
            return None
        if not e.ready:
            return self.error(503, "The server is still loading the model.")
        try:
            if self.path == "/v1/images/generations":
                return self.images()
            return self.videos(sync=self.path.endswith("/sync"))
        except ValueError as exc:
            return self.error(400, str(exc))
        except MemoryError as exc:
            return self.error(500, str(exc))

    def images(self) -> None:
        e = self.engine
        raw = self.body()
        if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
            # validate_json_request: a RequestValidationError whose only error is this string
            return self.reply(400, {"error": {"message": "1 validation error:\n  Unsupported Media Type: Only "
                                              "'application/json' is allowed", "type": "Bad Request",
                                              "param": None, "code": 400}})
        try:
            req = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            return self.invalid([{"type": "json_invalid", "loc": ["body", exc.pos], "msg": "JSON decode error",
                                  "input": {}, "ctx": {"error": exc.msg}}])
        problems = schema_errors("ImageGenerationRequest", req)
        if problems:
            return self.invalid(problems)
        if req.get("model") is not None and req["model"] != e.served:
            return self.error(400, f"Model mismatch: request specifies '{req['model']}' but server is running "
                                   f"'{e.served}'.")
        n = int(req.get("n") or 1)
        steps = req.get("num_inference_steps") or e.world["model"]["default_steps"]
        width, height = parse_size(req.get("size"), e.world["model"]["default_size"])
        index = e.next_index()
        fault = e.check_faults(index)
        if fault:
            return self.error(500, fault)
        seed = req["seed"] if req.get("seed") is not None else int.from_bytes(os.urandom(4), "little")
        guidance = (req.get("guidance_scale"), req.get("true_cfg_scale"))
        guided = w.guidance_runs(*guidance)
        began = time.perf_counter()
        metrics = e.generate(width, height, int(steps), 1, guided)
        for _ in range(n - 1):
            more = e.generate(width, height, int(steps), 1, guided)
            metrics["stage_durations"]["stage_0_gen_ms"] += more["stage_durations"]["stage_0_gen_ms"]
            metrics["_gen_s"] += more["_gen_s"]
        deviations = e.deviations(int(steps), guidance)
        data = []
        for i in range(n):
            img = media.base_image(req["prompt"], seed + i, width, height, req.get("negative_prompt") or "")
            for std, tag, key in deviations:
                img = media.deviate(img, std, tag, req["prompt"], seed + i, key)
            png = media.png_bytes(img)
            if index in e.faults.get("bad_image_on", []):
                png = b"\x89PNG garbage"
            data.append({"b64_json": base64.b64encode(png).decode(), "revised_prompt": None, "url": None})
        self.block = e.request_log(f"img_gen-{uuid.uuid4().hex}", False, int(steps), seed, req.get("guidance_scale"),
                      time.perf_counter() - began, metrics.pop("_gen_s"), width * height // 256)
        # No inference_time_s: 0.30.0's _build_image_response_metrics sets stage_durations and peak_memory_mb only
        # (more keys only from the engine's metrics with return_stage_metrics); a real H200 answered the same.
        self.reply(200, {"created": int(time.time()), "data": data, "size": f"{width}x{height}",
                         "output_format": "png", "metrics": metrics})

    def videos(self, sync: bool) -> None:
        e = self.engine
        form = self.form()
        schema = "Body_create_video_sync_v1_videos_sync_post" if sync else "Body_create_video_v1_videos_post"
        problems = schema_errors(schema, typed_form(form, schema), form=True)
        if problems:
            return self.invalid(problems)
        width, height = parse_size(form.get("size"), e.world["model"]["default_size"])
        if form.get("width") and form.get("height"):
            width, height = int(form["width"]), int(form["height"])
        frames = int(form.get("num_frames") or e.world["model"]["default_frames"])
        fps = float(form.get("fps") or 16)
        steps = int(form.get("num_inference_steps") or e.world["model"]["default_steps"])
        seed = int(form["seed"]) if form.get("seed") else int.from_bytes(os.urandom(4), "little")
        guidance = (float(form["guidance_scale"]) if form.get("guidance_scale") else None,
                    float(form["true_cfg_scale"]) if form.get("true_cfg_scale") else None)
        job = {"id": f"video_{uuid.uuid4().hex[:16]}", "object": "video", "model": e.served, "status": "queued",
               "progress": 0, "created_at": int(time.time()), "prompt": form["prompt"], "size": f"{width}x{height}",
               "seconds": str(max(1, round(frames / fps))), "quality": "default", "num_frames": frames, "fps": fps,
               "media_type": "video/mp4", "peak_memory_mb": 0.0, "stage_durations": {}}
        job["_request_id"] = f"video_sync-{uuid.uuid4().hex[:16]}-{uuid.uuid4().hex[:8]}" if sync else job["id"]
        e.videos[job["id"]] = job
        index = e.next_index()

        def run() -> None:
            began = time.perf_counter()
            job["status"] = "in_progress"
            fault = e.check_faults(index)
            try:
                if fault:
                    raise RuntimeError(fault)
                metrics = e.generate(width, height, steps, frames, w.guidance_runs(*guidance))
                frames_px = media.video_frames(form["prompt"], seed, width, height, frames,
                                               e.deviations(steps, guidance),
                                               form.get("negative_prompt") or "")
                job["_mp4"] = media.mp4_bytes(frames_px, fps)
                total = time.perf_counter() - began  # as the real route's: queue, generation and MP4 encoding
                job["_log"] = e.request_log(job["_request_id"], True, steps, seed, guidance[0], total,
                                            metrics.pop("_gen_s"), width * height * frames // 4096)
                if not sync:
                    gpulog.write(job.pop("_log"))
                job.update(metrics, inference_time_s=total, status="completed", progress=100,
                           completed_at=int(time.time()), duration_s=frames / fps, file_name=f"{job['id']}.mp4")
            except (RuntimeError, MemoryError) as exc:
                job.update(status="failed", error={"code": 500, "message": str(exc)}, completed_at=int(time.time()))

        if not sync:
            threading.Thread(target=run, daemon=True).start()
            return self.reply(200, public(job))
        run()
        del e.videos[job["id"]]  # the sync route keeps no job record
        self.block = job.get("_log")
        if job["status"] != "completed":
            return self.error(500, f"Video generation failed: {job['error']['message']}")
        self.reply(200, job["_mp4"], "video/mp4", {
            "X-Request-Id": job["_request_id"], "X-Model": e.served,
            "X-Inference-Time-S": f"{job['inference_time_s']:.3f}", "X-Peak-Memory-MB": f"{job['peak_memory_mb']:.3f}",
            "X-Stage-Durations": json.dumps(job["stage_durations"], separators=(",", ":"))})


def spawn_workers(count: int) -> list[subprocess.Popen]:
    """One extra process per additional GPU, like vLLM-Omni's workers: same process group, never detached."""
    # Workers outlive a SIGKILLed leader, as multiprocessing workers do: only a group kill cleans up.
    code = "import time\nfor _ in range(3600):\n    time.sleep(1)\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def fail(text: str, code: int = 1) -> None:
    """Write a startup failure log (already shaped as the real one) and exit."""
    sys.stdout.write(text)
    sys.stdout.flush()
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    gpulog.setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = flags.parse(argv)
    except flags.FlexibleError as exc:  # raised by the real parser itself: a bare traceback, exit 1
        sys.stderr.write("Traceback (most recent call last):\n  File \"vllm\", line 8, in <module>\n"
                         f"ValueError: {exc}\n")
        raise SystemExit(1) from None
    if not ns.omni:
        sys.stderr.write("vllm serve: error: this emulator only serves diffusion models with --omni\n")
        raise SystemExit(2)
    scenario = w.load_scenario()
    model = ns.model_tag or ns.model
    faults = scenario.get("faults", {})
    host, port = ns.host or "127.0.0.1", ns.port
    sys.stdout.write(startlog.head(model, startup.non_default(ns)))
    sys.stdout.flush()
    verdict = startup.check(ns)
    if verdict.stage != "ok" and verdict.where == "main":
        fail(startlog.main_failure(model, verdict.error or ""))
    # As vLLM's setup_server: the socket is bound now and listens only once the engine is up.
    httpd = ThreadingHTTPServer((host, port), Handler, bind_and_activate=False)
    try:
        httpd.server_bind()
    except OSError as exc:
        log.error("[Errno %s] error while attempting to bind on address ('%s', %s): %s", exc.errno, host, port,
                  exc.strerror.lower() if exc.strerror else exc)
        raise SystemExit(1) from None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [int(x) for x in visible.split(",") if x.strip()] if visible else list(range(len(scenario["gpus"])))
    try:
        pipeline = startup.resolve_pipeline(model, scenario)
    except FileNotFoundError as exc:
        fail(startlog.main_failure(model, str(exc)))
        return
    if verdict.stage != "ok":  # refused inside the orchestrator (OmniDiffusionConfig)
        fail(startlog.orchestrator_failure(model, pipeline, verdict.error, "config"))
    cfg = verdict.cfg
    assert cfg is not None
    try:
        startup.check_devices(cfg, gpus)
    except startup.StartupError as exc:
        fail(startlog.orchestrator_failure(model, pipeline, exc.text, "config"))
    try:
        for warning in verdict.warnings + startup.check_load(scenario, cfg, gpus, pipeline):
            log.warning(warning)
    except w.Refusal as exc:
        fail(startlog.orchestrator_failure(model, pipeline, str(exc)))
        return
    engine = Engine(scenario, cfg, pipeline, (ns.served_model_name or [model])[0], gpus[: cfg.world_size])
    Handler.engine = engine
    Handler.model_path = model
    workers = spawn_workers(max(0, cfg.world_size - 1))
    answer_while_loading = scenario.get("api", {}).get("while_loading", "refuse") == "503"

    def shutdown(signum, frame) -> None:
        if faults.get("ignore_sigterm"):
            log.info("ignoring SIGTERM (fault injection)")
            return
        engine.clear_memory()
        for p in workers:
            p.terminate()
        os._exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    log.info("Starting vLLM-Omni (emulated) for %s (%s) on %s:%s, world size %d", model, pipeline, host, port,
             cfg.world_size)

    if answer_while_loading:
        httpd.server_activate()
    listen = (lambda: None) if answer_while_loading else httpd.server_activate
    threading.Thread(target=engine.load, args=(model, host, port, str(getattr(ns, "dtype", "")) == "float32", listen),
                     daemon=True).start()
    while not answer_while_loading and not engine.loaded.wait(0.1):
        pass  # the port stays bound and refuses connections until loaded (bounded only by the launcher's wait)
    try:
        httpd.serve_forever(poll_interval=0.05)
    finally:
        engine.clear_memory()


if __name__ == "__main__":
    main()
