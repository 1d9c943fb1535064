"""A real omnitune on the streamable HTTP transport, for tests that drive it over the network."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def omnitune_http(tmp_path: Path, host: str, token: str | None = None,
                  env_extra: dict[str, str] | None = None) -> Iterator[tuple[int, str]]:
    """A real omnitune on ``host``; yields its port and what it wrote to stderr until it was listening."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")}
    env.update(PYTHONPATH=str(REPO), OMNITUNE_WORKSPACE=str(tmp_path / "ws"))
    env.update(env_extra or {})
    if token:
        env["OMNITUNE_HTTP_TOKEN"] = token
    log = tmp_path / f"stderr-{port}.txt"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "omnitune.server.main", "--transport", "streamable-http",
                                 "--host", host, "--port", str(port)], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        connect = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection((connect, port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"omnitune did not listen within 60 s: {log.read_text()[-2000:]}")
        yield port, log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
