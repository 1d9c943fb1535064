"""Replicas: one configuration served by N independent servers on disjoint GPU sets, requests spread over them.

vLLM-Omni 0.30.0 runs one replica per ``vllm serve`` for a generic diffusion model (``search_space.py`` says why),
so a replica trial launches N servers and measures them together through :class:`Balancer`, a small HTTP
front on 127.0.0.1 that sends each generation request to the replica with the fewest requests in flight (ties
in turn, so N warm-up requests in a row warm every replica once). Throughput then scales with the replicas while
each request's latency stays that of one server, as in vLLM-Omni's own replica data parallel (#4707).

Every wait is bounded: a forwarded request by the workload's timeout, /health by ``HEALTH_WAIT_S`` per replica,
closing by ``CLOSE_WAIT_S``.
"""

from __future__ import annotations

import http.client
import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

HEALTH_WAIT_S = 5.0
CLOSE_WAIT_S = 5.0
FORWARDED_HEADERS = ("content-type", "accept")
RETURNED_HEADERS = ("content-type",)


def replicas_of(config: dict[str, Any]) -> int:
    return max(1, int(config.get("replicas", 1) or 1))


def serve_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The per-server ``ServeConfig`` fields of a (replicated) trial configuration."""
    return {k: v for k, v in config.items() if k != "replicas"}


class Balancer:
    """An HTTP front for ``base_urls``: POSTs go to the least busy replica, GETs to the first, /health to all."""

    def __init__(self, base_urls: list[str], timeout_s: float) -> None:
        self.backends = [urlparse(u) for u in base_urls]
        self.timeout_s = timeout_s
        self.inflight = [0] * len(base_urls)
        self.served = [0] * len(base_urls)
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="replica-balancer", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Balancer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(CLOSE_WAIT_S)
        self._server.server_close()

    def pick(self) -> int:
        """The replica with the fewest requests in flight; ties go round in turn."""
        with self._lock:
            start = next(self._turn) % len(self.backends)
            order = [(start + i) % len(self.backends) for i in range(len(self.backends))]
            i = min(order, key=lambda j: self.inflight[j])
            self.inflight[i] += 1
            return i

    def done(self, i: int) -> None:
        with self._lock:
            self.inflight[i] -= 1
            self.served[i] += 1

    def forward(self, i: int, method: str, path: str, body: bytes | None, headers: dict[str, str],
                timeout_s: float) -> tuple[int, dict[str, str], bytes]:
        b = self.backends[i]
        conn = http.client.HTTPConnection(b.hostname or "127.0.0.1", b.port, timeout=timeout_s)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k: v for k, v in resp.getheaders() if k.lower() in RETURNED_HEADERS}, data
        finally:
            conn.close()

    def healthy(self) -> bool:
        for i in range(len(self.backends)):
            try:
                if self.forward(i, "GET", "/health", None, {}, HEALTH_WAIT_S)[0] != 200:
                    return False
            except OSError:
                return False
        return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
                pass

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _relay(self, i: int, method: str, body: bytes | None, counted: bool = False) -> None:
                """Forward to replica ``i``; a counted request leaves its replica's in-flight count as soon as the
                replica answered, before the client hears back (so the counts are settled when it does)."""
                headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED_HEADERS}
                try:
                    status, out, data = balancer.forward(i, method, self.path, body, headers, balancer.timeout_s)
                except OSError as exc:  # the replica died or stopped answering: the client sees a server error
                    status, out = 502, {"content-type": "application/json"}
                    data = (f'{{"error": {{"message": "replica {i} did not answer: {type(exc).__name__}", '
                            f'"type": "BadGateway", "code": 502}}}}').encode()
                finally:
                    if counted:
                        balancer.done(i)
                self._reply(status, out, data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.rstrip("/") == "/health":
                    self._reply(200 if balancer.healthy() else 503, {}, b"")
                else:
                    self._relay(0, "GET", None)

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._relay(balancer.pick(), "POST", body, counted=True)

        return Handler
