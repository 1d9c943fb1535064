"""The real preflight: the serving environment's own `vllm serve --omni` parser and diffusion config build.

omnitune never imports vLLM. One warm worker process per serving Python (``worker.py``, started with that
Python) answers ``check`` (parse, validate, stage configs, diffusion config) and ``catalogue`` (every parser
action). Importing vLLM takes 35 s or more, so the worker is started early and every wait is bounded: when it
cannot answer in time (or the environment has no vLLM), the caller falls back to omnitune's own rules and the
result says so (``source: "rules"`` with the reason).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
WORKER = Path(__file__).with_name("worker.py")
PLACEHOLDER_PORT = "8000"


def serving_python(serving: Path | None, vllm: str) -> Path | None:
    """The configured serving Python, else the `python` beside the `vllm` executable (same venv); never resolved."""
    if serving is not None:
        return serving
    found = shutil.which(vllm)
    if found:
        sibling = Path(os.path.abspath(found)).parent / "python"
        if sibling.exists():
            return sibling
    return None


class Worker:
    """One long-lived `python worker.py` in its own process group; requests are serialized, waits bounded."""

    def __init__(self, python: Path) -> None:
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.answers: queue.Queue[dict] = queue.Queue()
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.dead_reason: str | None = None
        self.started_at = 0.0
        self.ready_s: float | None = None
        self.import_s: float | None = None
        self._next_id = 0
        self._stderr = tempfile.TemporaryFile()

    def start(self) -> None:
        if self.proc is not None:
            return
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
               "VLLM_CONFIGURE_LOGGING": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.started_at = time.monotonic()
        try:
            self.proc = subprocess.Popen([str(self.python), str(WORKER), "--warm"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr, env=env,
                                         start_new_session=True, close_fds=True, text=True, bufsize=1)
        except OSError as exc:
            self.dead_reason = f"could not start {self.python}: {exc}"
            return
        threading.Thread(target=self._read, name="preflight-reader", daemon=True).start()

    def _read(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "ready" in msg:
                self.import_s = msg.get("import_s")
                if not msg["ready"]:
                    self.dead_reason = f"the serving Python {self.python} cannot import vLLM: {msg.get('error')}"
                self.ready.set()
                continue
            self.answers.put(msg)
        self.dead_reason = self.dead_reason or f"the preflight worker exited ({proc.wait()}): {self.stderr_tail()}"
        self.answers.put({"id": None, "dead": True})

    def stderr_tail(self, n: int = 400) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - n))
            return self._stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def request(self, op: str, timeout_s: float, **payload: Any) -> dict:
        """The worker's answer, or {"unavailable": reason} when it is dead or does not answer in time."""
        self.start()
        if self.dead_reason:
            return {"unavailable": self.dead_reason}
        if not self.lock.acquire(timeout=timeout_s):
            return {"unavailable": f"the preflight worker is busy (more than {timeout_s:.0f} s)"}
        try:
            self._next_id += 1
            rid = self._next_id
            assert self.proc is not None and self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({"id": rid, "op": op, **payload}) + "\n")
                self.proc.stdin.flush()
            except OSError as exc:
                self.dead_reason = f"the preflight worker is gone: {exc}"
                return {"unavailable": self.dead_reason}
            deadline = time.monotonic() + timeout_s
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    warming = "" if self.ready.is_set() else \
                        f"; it is still importing vLLM ({time.monotonic() - self.started_at:.0f} s so far) and " \
                        "keeps warming for the next launch"
                    return {"unavailable": f"the serving environment did not answer within {timeout_s:.0f} s{warming}"}
                try:
                    msg = self.answers.get(timeout=left)
                except queue.Empty:
                    continue
                if msg.get("dead") or self.dead_reason:
                    return {"unavailable": self.dead_reason or "the preflight worker exited"}
                if msg.get("id") == rid:
                    if self.ready_s is None:
                        self.ready_s = time.monotonic() - self.started_at
                    return msg
        finally:
            self.lock.release()

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("preflight worker %s did not exit", proc.pid)
        self.dead_reason = self.dead_reason or "closed"


_WORKERS: dict[str, Worker] = {}
_CACHE: dict[tuple, dict] = {}
_GUARD = threading.Lock()


def worker_for(python: Path) -> Worker:
    with _GUARD:
        w = _WORKERS.get(str(python))
        if w is None or (w.dead_reason and w.dead_reason != "closed" and w.proc is None):
            w = _WORKERS[str(python)] = Worker(python)
        return w


def warm(python: Path | None) -> None:
    """Start the worker now (it imports vLLM at once, in its own process) so the first launch finds it ready."""
    if python is not None:
        worker_for(python).start()


@atexit.register
def close_all() -> None:
    with _GUARD:
        workers = list(_WORKERS.values())
        _WORKERS.clear()
    for w in workers:
        w.close()


def normalized(argv: list[str]) -> list[str]:
    """argv after the executable, with the port replaced (it changes every launch and never changes the answer)."""
    out = list(argv[1:])
    for i, a in enumerate(out[:-1]):
        if a == "--port":
            out[i + 1] = PLACEHOLDER_PORT
    return out


def check(python: Path | None, argv: list[str], devices: str, timeout_s: float) -> dict:
    """{"source": "engine", "ok": bool, "stage", "error", ...} or {"source": "rules", "reason": ...}."""
    if python is None:
        return {"source": "rules", "reason": "no serving Python known (set OMNITUNE_SERVING_PYTHON, or OMNITUNE_VLLM "
                                             "to a venv's vllm): checked with omnitune's own rules only"}
    args = normalized(argv)
    key = (str(python), tuple(args), devices)
    if key in _CACHE:
        return {**_CACHE[key], "cached": True}
    started = time.monotonic()
    answer = worker_for(python).request("check", timeout_s, argv=args, env={"CUDA_VISIBLE_DEVICES": devices})
    waited = round(time.monotonic() - started, 3)
    if "unavailable" in answer or "error" in answer and "ok" not in answer:
        reason = answer.get("unavailable") or answer.get("error")
        return {"source": "rules", "reason": f"the serving environment could not answer ({reason}); checked with "
                                             "omnitune's own rules only", "waited_s": waited}
    result = {"source": "engine", "python": str(python), "ok": bool(answer.get("ok")), "stage": answer.get("stage"),
              "error": answer.get("error"), "where": answer.get("where"), "config": answer.get("config"),
              "elapsed_s": answer.get("elapsed_s"), "waited_s": waited}
    if len(_CACHE) > 512:
        _CACHE.clear()
    _CACHE[key] = result
    return result


def catalogue(python: Path, timeout_s: float) -> dict:
    """Every action of the real `serve` parser, or {"unavailable": reason}."""
    return worker_for(python).request("catalogue", timeout_s)
