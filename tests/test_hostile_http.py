"""The HTTP transport, driven with raw HTTP against a real omnitune process: a non-loopback bind requires a bearer
token (generated and printed once, or given), Host/Origin checks stay on for every bind, loopback needs no token.

Only this machine is contacted: the wildcard bind is reached through 127.0.0.1."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.http_helpers import omnitune_http

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


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
