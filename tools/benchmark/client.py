"""The HTTP side of a benchmark: requests exactly as vLLM-Omni 0.30.0 expects them, timed tightly.

Images: ``POST /v1/images/generations`` with a JSON body (``size`` as "WxH"; ``width``/``height`` would be
ignored). Videos: multipart form fields, either ``POST /v1/videos`` then polling ``GET /v1/videos/{id}``
with a back-off from 5 ms up to ``poll_max_s`` (so completion is seen within that bound, not the 2 s of a
fixed poll) and ``GET .../content``, or ``POST /v1/videos/sync``. Latency runs from just before the
request is sent to the moment the last byte of the image or video is in hand; decoding checks happen
after the clock stops.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from omnitune.tools.tls import tls_context

SERVER_KEYS = ("inference_time_s", "peak_memory_mb", "stage_durations")


@dataclass
class Outcome:
    """One request's result. ``error_kind``: http_<code>, timeout, connection, bad_response, undecodable,
    job_failed, cancelled."""

    ok: bool
    latency_s: float | None = None
    error: str | None = None
    error_kind: str | None = None
    outputs: list[bytes] = field(default_factory=list)
    ext: str = "png"
    server: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    media: list[dict[str, int]] = field(default_factory=list)  # width, height, frames of each output

    def fail(self, kind: str, message: str) -> Outcome:
        self.ok, self.error_kind, self.error = False, kind, message[:2000]
        return self


def multipart(fields: dict[str, Any]) -> tuple[bytes, str]:
    """A multipart/form-data body of plain fields (what FastAPI's Form() parses), and its content type."""
    boundary = "omnitune" + secrets.token_hex(12)
    parts = []
    for name, value in fields.items():
        text = json.dumps(value) if isinstance(value, (dict, list)) else \
            ("true" if value is True else "false" if value is False else str(value))
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n'.encode())
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _error_text(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if body.get("detail"):
            return str(body["detail"])
    return json.dumps(body)[:500]


def _server_fields(source: dict[str, Any] | None) -> dict[str, Any]:
    source = source or {}
    out = {k: source[k] for k in SERVER_KEYS if source.get(k) is not None}
    extra = source.get("metrics")
    if isinstance(extra, dict) and extra:
        out["metrics"] = extra
        for k in SERVER_KEYS:
            if k not in out and extra.get(k) is not None:
                out[k] = extra[k]
    return out


def check_image(data: bytes) -> dict[str, int]:
    """Decode fully (a truncated PNG fails here); its size."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return {"width": img.width, "height": img.height, "frames": 1}


def check_video(data: bytes) -> dict[str, int]:
    """Open the container and decode the first frame; the frame count from the stream (or by decoding)."""
    import av
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = 0
        width = height = 0
        for frame in container.decode(stream):
            width, height = frame.width, frame.height
            frames += 1
            if stream.frames:
                break
        if not frames:
            raise ValueError("no decodable video frame")
        return {"width": width, "height": height, "frames": int(stream.frames or frames)}


class OmniClient:
    """One keep-alive connection pool per run; thread-safe (httpx.Client is)."""

    def __init__(self, base_url: str, timeout_s: float, concurrency: int = 1, transport: Any = None) -> None:
        import httpx
        self._httpx = httpx
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        pool = concurrency + 4
        self.http = httpx.Client(base_url=self.base_url, transport=transport, verify=tls_context(),
                                 timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
                                 limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool))

    def close(self) -> None:
        self.http.close()

    # -- probes ---------------------------------------------------------------------------------
    def healthy(self, timeout_s: float = 5.0) -> bool:
        try:
            return self.http.get("/health", timeout=timeout_s).status_code == 200
        except self._httpx.HTTPError:
            return False

    def version(self) -> str | None:
        try:
            r = self.http.get("/version", timeout=5.0)
            return str(r.json().get("version")) if r.status_code == 200 else None
        except (self._httpx.HTTPError, ValueError, AttributeError):
            return None

    # -- requests -------------------------------------------------------------------------------
    def _send(self, out: Outcome, method: str, path: str, **kw):
        """The request, or None with ``out`` marked failed (timeout / connection)."""
        try:
            return self.http.request(method, path, **kw)
        except self._httpx.TimeoutException as exc:
            out.fail("timeout", f"no answer within {self.timeout_s:g} s ({type(exc).__name__} on {path})")
        except self._httpx.HTTPError as exc:
            out.fail("connection", f"{type(exc).__name__} on {path}: {exc}")
        return None

    def _timed_post(self, out: Outcome, path: str, body: bytes, headers: dict[str, str]):
        """POST and time it to the last byte; None (``out`` failed) on no answer or a non-200 status."""
        start = time.perf_counter()
        r = self._send(out, "POST", path, content=body, headers=headers)
        end = time.perf_counter()
        if r is None:
            return None
        out.latency_s = end - start
        if r.status_code != 200:
            out.fail(f"http_{r.status_code}", _error_text(r))
            return None
        return r

    def image(self, params: dict[str, Any]) -> Outcome:
        out = Outcome(ok=True, ext="png")
        body = json.dumps(params).encode()
        r = self._timed_post(out, "/v1/images/generations", body, {"content-type": "application/json"})
        if r is None:
            return out
        try:
            payload = r.json()
            out.outputs = [base64.b64decode(item["b64_json"], validate=True) for item in payload["data"]]
            out.ext = (payload.get("output_format") or "png").lower().replace("jpeg", "jpg")
        except (ValueError, KeyError, TypeError) as exc:
            return out.fail("bad_response", f"image response not as expected: {type(exc).__name__}: {exc}")
        out.server = _server_fields(payload.get("metrics"))
        if not out.outputs:
            return out.fail("bad_response", "the response holds no image")
        try:
            out.media = [check_image(data) for data in out.outputs]
        except Exception as exc:  # PIL raises many kinds
            return out.fail("undecodable", f"image cannot be decoded: {type(exc).__name__}: {exc}")
        return out

    def video(self, params: dict[str, Any], mode: str, poll_initial_s: float, poll_max_s: float,
              cancel: threading.Event | None = None) -> Outcome:
        out = Outcome(ok=True, ext="mp4")
        body, ctype = multipart(params)
        headers = {"content-type": ctype}
        start = time.perf_counter()
        if mode == "sync":
            r = self._timed_post(out, "/v1/videos/sync", body, headers)
            if r is None:
                return out
            out.outputs = [r.content]
            out.server = self._sync_headers(r.headers)
            out.timing = {"detected_s": out.latency_s, "download_s": 0.0, "polls": 0}
        else:
            if not self._poll(out, body, headers, start, poll_initial_s, poll_max_s, cancel):
                return out
        try:
            out.media = [check_video(out.outputs[0])]
        except Exception as exc:  # av raises many kinds
            return out.fail("undecodable", f"video cannot be decoded: {type(exc).__name__}: {exc}")
        return out

    @staticmethod
    def _sync_headers(headers) -> dict[str, Any]:
        server: dict[str, Any] = {}
        for key, name in (("inference_time_s", "x-inference-time-s"), ("peak_memory_mb", "x-peak-memory-mb")):
            try:
                server[key] = float(headers[name])
            except (KeyError, ValueError):
                pass
        try:
            server["stage_durations"] = json.loads(headers["x-stage-durations"])
        except (KeyError, ValueError):
            pass
        return server

    def _poll(self, out: Outcome, body: bytes, headers: dict, start: float, delay: float, cap: float,
              cancel: threading.Event | None) -> bool:
        """Submit a video job and follow it to its content; False (``out`` failed) on any failure."""
        deadline = start + self.timeout_s
        r = self._send(out, "POST", "/v1/videos", content=body, headers=headers)
        if r is None:
            return False
        if r.status_code != 200:
            out.latency_s = time.perf_counter() - start
            out.fail(f"http_{r.status_code}", _error_text(r))
            return False
        try:
            job = r.json()
            job_id = job["id"]
        except (ValueError, KeyError, TypeError) as exc:
            out.fail("bad_response", f"video job response not as expected: {exc}")
            return False
        polls = 0
        while job.get("status") not in ("completed", "failed"):
            if cancel is not None and cancel.is_set():
                out.fail("cancelled", f"run cancelled while video job {job_id} ran")
                return False
            if time.perf_counter() + delay > deadline:
                out.fail("timeout", f"video job {job_id} not completed within {self.timeout_s:g} s "
                                    f"(last status {job.get('status')!r})")
                return False
            time.sleep(delay)
            delay = min(delay * 1.5, cap)
            r = self._send(out, "GET", f"/v1/videos/{job_id}")
            polls += 1
            if r is None:
                return False
            if r.status_code != 200:
                out.fail(f"http_{r.status_code}", f"polling video job {job_id}: {_error_text(r)}")
                return False
            job = r.json()
        detected = time.perf_counter()
        out.server = _server_fields(job)
        if job["status"] == "failed":
            out.latency_s = detected - start
            err = job.get("error") or {}
            out.fail("job_failed", str(err.get("message") if isinstance(err, dict) else err) or "video job failed")
            return False
        r = self._send(out, "GET", f"/v1/videos/{job_id}/content")
        end = time.perf_counter()
        if r is None:
            return False
        out.latency_s = end - start
        out.timing = {"detected_s": detected - start, "download_s": end - detected, "polls": polls,
                      "job_id": job_id}
        if r.status_code != 200:
            out.fail(f"http_{r.status_code}", f"downloading video {job_id}: {_error_text(r)}")
            return False
        out.outputs = [r.content]
        return True
