"""The HTTP transport, driven with raw HTTP against a real omnitune process: a non-loopback bind requires a bearer
token (generated and printed once, or given), Host/Origin checks stay on for every bind, loopback needs no token.

Only this machine is contacted: the wildcard bind is reached through 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def omnitune_http(tmp_path: Path, host: str, token: str | None = None) -> Iterator[tuple[int, str]]:
    """A real omnitune on ``host``; yields its port and what it wrote to stderr until it was listening."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNITUNE_")}
    env.update(PYTHONPATH=str(REPO), OMNITUNE_WORKSPACE=str(tmp_path / "ws"))
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


def post(url: str, **headers: str) -> httpx.Response:
    return httpx.post(url, json=INIT, headers={**HEADERS, **headers}, timeout=20)


def test_a_wildcard_bind_requires_the_printed_token_and_keeps_host_checks(tmp_path):
    with omnitune_http(tmp_path, "0.0.0.0") as (port, stderr):
        found = re.findall(r"Authorization: Bearer ([A-Za-z0-9_-]{20,})", stderr)
        assert len(found) == 1, stderr  # printed once
        token = found[0]
        url = f"http://127.0.0.1:{port}/mcp"
        bare = post(url)
        wrong = post(url, Authorization="Bearer not-the-token")
        good = post(url, Authorization=f"Bearer {token}")
        rebound = post(url, Authorization=f"Bearer {token}", Host="evil.example")
        foreign = post(url, Authorization=f"Bearer {token}", Origin="http://evil.example")
    assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert good.status_code == 200 and "protocolVersion" in good.text
    assert rebound.status_code == 421
    assert foreign.status_code == 403


def test_a_given_token_is_used_and_never_printed(tmp_path):
    chosen = "a-token-the-user-chose-0123456789"
    with omnitune_http(tmp_path, "0.0.0.0", token=chosen) as (port, stderr):
        url = f"http://127.0.0.1:{port}/mcp"
        good = post(url, Authorization=f"Bearer {chosen}")
        bare = post(url)
    assert chosen not in stderr and "Authorization: Bearer" not in stderr
    assert good.status_code == 200 and bare.status_code == 401


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2"])
def test_loopback_binds_need_no_token_but_check_host_and_origin(tmp_path, host):
    with omnitune_http(tmp_path, host) as (port, stderr):
        url = f"http://{host}:{port}/mcp"
        good = post(url)
        rebound = post(url, Host=f"evil.example:{port}")
        foreign = post(url, Origin="http://evil.example")
        local_origin = post(url, Origin=f"http://localhost:{port}")
    assert "Bearer" not in stderr
    assert good.status_code == 200 and "protocolVersion" in good.text
    assert rebound.status_code == 421 and foreign.status_code == 403
    assert local_origin.status_code == 200
