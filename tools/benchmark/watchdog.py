"""The watchdog of a benchmark run: a frozen (SIGSTOP) or dead server of ours ends the run at once, and any server
whose /health stays unanswered while a request waits long ends it after a few probes, so a run never waits out
every request's full timeout on a server that will not answer."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from omnitune.tools.benchmark.client import OmniClient
from omnitune.tools.owner import process_problem


class Watched(Protocol):
    """What the watchdog needs of a run (runner._Run)."""

    target: Any
    run_id: str
    closed: bool
    stop: threading.Event

    def halted(self) -> bool: ...
    def abort(self, reason: str) -> None: ...
    def waiting_s(self) -> float: ...

PROBE_AFTER_S = 5.0     # a request waiting this long makes the watchdog probe /health
PROBE_EVERY_S = 2.0     # then every this often
PROBE_TIMEOUT_S = 5.0   # a /health answer slower than this counts as no answer
PROBE_MISSES = 3        # consecutive unanswered probes that make the server unresponsive


def watch(run: Watched, pid: int | None, start_time: float | None) -> threading.Thread:
    """Liveness of the server while the run goes on: a stopped (SIGSTOP) or dead process of ours ends the
    run at once; any server whose /health stays unanswered for PROBE_MISSES probes ends it too."""
    def loop() -> None:
        probe = OmniClient(run.target.base_url, PROBE_TIMEOUT_S)
        misses = 0
        try:
            while not run.closed and not run.halted():
                why = process_problem(pid, start_time)
                if why:
                    run.abort(f"the server at {run.target.base_url} is unresponsive: {why}")
                    return
                if run.waiting_s() > PROBE_AFTER_S:  # only a request waiting long: no probe beside quick ones
                    misses = 0 if probe.healthy(timeout_s=PROBE_TIMEOUT_S) else misses + 1
                    if misses >= PROBE_MISSES:
                        run.abort(f"the server at {run.target.base_url} is unresponsive: /health unanswered "
                                  f"{misses} times in a row ({PROBE_TIMEOUT_S:g} s each) while requests waited")
                        return
                run.stop.wait(0.5 if misses == 0 else PROBE_EVERY_S)
        finally:
            probe.close()
    thread = threading.Thread(target=loop, name=f"watch-{run.run_id[-6:]}", daemon=True)
    thread.start()
    return thread
