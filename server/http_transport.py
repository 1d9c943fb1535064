"""The streamable HTTP transport with its two guards: a bearer token for any non-loopback bind, and Host/Origin
checks (DNS-rebinding protection) on every bind.

The SDK turns Host/Origin checks on only for 127.0.0.1/localhost/::1 and has no simple shared-secret option (its
auth is OAuth), so omnitune builds the transport itself: the SDK's Starlette app with explicit security settings,
wrapped in a bearer-token check, served by uvicorn (which stops cleanly on SIGINT/SIGTERM).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import socket
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("omnitune.http")
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, treat it as reachable from elsewhere


def _local_addresses() -> list[str]:
    import psutil
    found = []
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                ip = a.address.split("%", 1)[0]
                found.append(f"[{ip}]" if ":" in ip else ip)
    return found


def allowed_hosts(bind: str, extra: list[str]) -> list[str]:
    """Host header values (without port) a request may carry: loopback, the bound address (every local address for
    a wildcard bind, plus the machine's names) and any the user names with --allowed-host."""
    hosts = list(LOOPBACK_NAMES)
    wildcard = bind in ("0.0.0.0", "::", "")
    if wildcard:
        hosts += _local_addresses() + [socket.gethostname(), socket.getfqdn()]
    else:
        hosts.append(f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind)
    return list(dict.fromkeys(h for h in [*hosts, *extra] if h))


def security(bind: str, extra: list[str]) -> TransportSecuritySettings:
    hosts = allowed_hosts(bind, extra)
    return TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                     allowed_hosts=[f"{h}:*" for h in hosts] + hosts,
                                     allowed_origins=[f"{s}://{h}{p}" for h in hosts for s in ("http", "https")
                                                      for p in (":*", "")])


class BearerToken:
    """Every HTTP request must carry ``Authorization: Bearer <token>`` (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": b"omnitune: a bearer token is required "
                                                                   b"(Authorization: Bearer <token>)\n"})
                return
        await self.app(scope, receive, send)


def token_for(bind: str, given: str | None) -> str | None:
    """The token this bind requires: the one given, else a fresh one for a non-loopback bind (printed once)."""
    if given:
        return given
    if is_loopback(bind):
        return None
    token = secrets.token_urlsafe(32)
    sys.stderr.write(f"omnitune: HTTP on {bind} needs a bearer token; send 'Authorization: Bearer {token}' "
                     "(set OMNITUNE_HTTP_TOKEN to choose your own).\n")
    sys.stderr.flush()
    return token


async def serve_http(server: MCPServer, host: str, port: int, token: str | None, extra_hosts: list[str],
                     log_level: str) -> None:
    import uvicorn
    app: ASGIApp = server.streamable_http_app(host=host, transport_security=security(host, extra_hosts))
    if token:
        app = BearerToken(app, token)
    log.info("streamable HTTP on %s:%d (bearer token %s)", host, port, "required" if token else "not required")
    await uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level.lower())).serve()
