"""Start a real `vllm serve MODEL --omni` and record what its port does while it starts and fails.

Run with any Python (stdlib only); VLLM is the real `vllm` executable. Writes the log and a JSON timeline:
every ~0.2 s whether a TCP connect is accepted or refused and whether the port can still be bound.
Usage: probe_startup.py VLLM MODEL OUT_PREFIX [extra serve flags...]
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(port: int) -> dict:
    out = {}
    with socket.socket() as s:
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
            out["connect"] = "accepted"
        except ConnectionRefusedError:
            out["connect"] = "refused"
        except OSError as exc:
            out["connect"] = f"error {exc.errno}"
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            out["bind"] = "free"
        except OSError as exc:
            out["bind"] = "in use" if exc.errno == errno.EADDRINUSE else f"error {exc.errno}"
    return out


def main() -> None:
    vllm, model, prefix, *extra = sys.argv[1:]
    port = free_port()
    argv = [vllm, "serve", model, "--omni", "--host", "127.0.0.1", "--port", str(port), *extra]
    began = time.monotonic()
    with open(prefix + ".log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        timeline, last = [], None
        while proc.poll() is None and time.monotonic() - began < 400:
            state = probe(port)
            if state != last:
                timeline.append({"t": round(time.monotonic() - began, 2), **state})
                last = state
            time.sleep(0.2)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = open(prefix + ".log", "rb").read().decode(errors="replace")
    json.dump({"argv": ["vllm", "serve", "MODEL", "--omni", "--host", "127.0.0.1", "--port", "PORT", *extra],
               "exit_code": proc.returncode, "seconds": round(time.monotonic() - began, 1),
               "log_lines": len(text.splitlines()), "port_timeline": timeline},
              open(prefix + ".json", "w"), indent=1)


if __name__ == "__main__":
    main()
