"""Request-level settings (steps, guidance): measured inside one server, never a relaunch per setting."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from omnitune.tools.benchmark import BenchmarkTarget, Workload
from omnitune.tools.tune.models import Outcome

if TYPE_CHECKING:
    from omnitune.tools.tune.tuner import Tuner


class RequestSweep:
    """One server for every request-level variant: launched on first need, or one already running
    (``server_id``: its owner stops it and counts its GPU time)."""

    def __init__(self, tuner: Tuner, server_id: str | None = None) -> None:
        self.t = tuner
        self.server_id, self.owned = server_id, server_id is None
        self.failed: str | None = None
        self.launch_s = 0.0
        self.pending: list[Outcome] = []

    def measure(self, name: str, config: dict, settings: dict) -> Outcome:
        t = self.t
        t._check_cancelled()
        key = t.key(config, settings)
        known = t._known(name, "lossy", config, key, settings)
        if known:
            return known
        if self.server_id is None and not self.failed:
            if t._budget_spent():
                out = Outcome(name=name, stage="lossy", status="skipped_budget", config=config, reason="budget spent",
                              request_settings=settings)
                t._record(out, key, launched=False)
                return out
            self._launch(config)
        if self.failed:
            out = Outcome(name=name, stage="lossy", status="failed", config=config, reason=self.failed,
                          request_settings=settings)
            t._record(out, key, launched=False)
            return out
        n = len(config.get("gpus") or [0])
        t0 = time.monotonic()
        result = t._benchmark(BenchmarkTarget(server_id=self.server_id), workload_with(t.req.workload, settings))
        out = t._outcome_from_run(name, "lossy", config, result.run_id, "measured",
                                  "request-level, measured inside one server: " + json.dumps(settings))
        if result.status != "completed":  # truncated or failed: never a measurement
            why = result.summary.aborted_reason if result.summary else None
            out.status, out.p50_s = "failed", None
            out.reason = f"benchmark run {result.run_id} {result.status}: {why or 'see the run'}"
        out.request_settings = dict(settings)
        out.gpu_seconds = (time.monotonic() - t0) * n
        if not self.pending:  # the first variant on this server carries its launch
            out.gpu_seconds += self.launch_s * n
        if self.owned:
            t.gpu_seconds += out.gpu_seconds
        t._judge(out)
        t._record(out, key, launched=self.owned and not self.pending)
        self.pending.append(out)
        return out

    def _launch(self, config: dict) -> None:
        t0 = time.monotonic()
        self.server_id, self.failed, _ = self.t.start_server(config)
        self.launch_s = time.monotonic() - t0

    def close(self) -> None:
        if self.server_id and self.owned:
            self.t.launcher.stop(self.server_id)
            self.server_id = None


def request_settings(request: dict, steps: int | None) -> dict | None:
    """A plan's request-level candidate as concrete request fields (None: cannot be applied)."""
    if "steps_fraction" in request:
        if not steps:
            return None
        fewer = max(1, int(steps * request["steps_fraction"]))
        return {"num_inference_steps": fewer} if fewer < steps else None
    return dict(request)


def workload_with(workload: Workload, settings: dict) -> Workload:
    """The workload with request-level settings applied (fields it has typed, the rest in extra_body)."""
    typed = {k: v for k, v in settings.items() if k in Workload.model_fields and k != "extra_body"}
    extra = {**workload.extra_body, **{k: v for k, v in settings.items() if k not in typed}}
    return workload.model_copy(update={**typed, "extra_body": extra})
