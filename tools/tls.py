"""One TLS context per process for omnitune's HTTP clients.

httpx builds a new context (loading the CA bundle: ~20 ms of CPU) for every client it creates, and omnitune
creates one per launch, per health probe and per benchmark run, nearly all of them to plain http on loopback.
The context is httpx's own default, built once on first use; SSLContext is safe to share between threads.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def tls_context() -> ssl.SSLContext:
    import httpx
    return httpx.create_ssl_context()
