"""The tune's ledger: what each candidate cost and gave, under ONE key, in ``tune_candidates``.

- Replay: a resumed job's own decided outcomes (budget spent included) are taken back instead of redone; a
  trial lost with its Ray node was never decided, so it is run again.
- Reuse: a run another tune measured under the same key is found (the tuner then reads it instead of launching).
- Budget: launches and GPU-seconds spent, against the request's limits.

The key is :func:`tools.benchmark.target.config_key` (serve settings without placement, model, executable,
GPU models and count: the key ``runs.config_key`` holds) extended with the workload as measured (the throughput
objective's concurrency included), the request-level settings and the replica count, so a run is reused only
where it measured the same thing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omnitune.tools.benchmark import Workload
from omnitune.tools.benchmark.target import config_key
from omnitune.tools.launch import ServeConfig
from omnitune.tools.tune.models import Outcome, TuneRequest
from omnitune.tools.tune.replicas import replicas_of, serve_fields
from omnitune.tools.workspace import Workspace


class Ledger:
    def __init__(self, workspace: Workspace, job_id: str, request: TuneRequest, version: str,
                 gpu_names: list[str | None], workload: Workload | None = None) -> None:
        self.ws, self.job_id, self.req, self.version = workspace, job_id, request, version
        self.gpu_names = gpu_names
        # what is measured: the throughput objective keeps more requests in flight than the request's workload
        self.workload = workload or request.workload
        self.replay: dict[str, Outcome] = {}
        self.launches, self.gpu_seconds, self.next_idx = 0, 0.0, 0
        self.lost: set[str] = set()  # keys of trials lost with their Ray node: not decided, a resume asks again
        self.recorded: set[str] = set()  # keys this run recorded (what a resume asked again, among them)
        for row in self.ws.store.query("SELECT idx, data FROM tune_candidates WHERE job_id = ? ORDER BY idx",
                                       (self.job_id,)):
            data = json.loads(row["data"] or "{}")
            self.next_idx = row["idx"] + 1
            if "outcome" in data:
                out = Outcome.model_validate({**data["outcome"], "resumed": True})
                if out.cause != "node_lost":  # lost with its Ray node, not decided: a resume runs it again
                    self.replay[data["key"]] = out
                    self.lost.discard(data["key"])
                else:
                    self.lost.add(data["key"])
                self.launches += int(data.get("launched", 0))
                self.gpu_seconds += float(data.get("gpu_seconds", 0.0))
        # Every launch that started a process is a servers row labelled with this job, written before the process
        # existed: a launch made just before a kill -9 (never decided, so not in tune_candidates) still counts.
        started = self.ws.store.query_one(
            "SELECT count(*) FROM servers WHERE pid IS NOT NULL AND json_extract(data, '$.labels.tune_job') = ?",
            (self.job_id,))
        self.launches = max(self.launches, int(started[0]) if started else 0)

    def key(self, config: dict[str, Any], request: dict[str, Any] | None = None) -> str:
        """Identity of a measurement: serve settings, GPU models and count, executable, workload, request settings."""
        n = len(config.get("gpus") or [0])
        names: list[str | None] = [*self.gpu_names, *[None] * n][:n]
        fields, replicas = serve_fields(config), replicas_of(config)
        serve = config_key(self.req.model, ServeConfig(model=self.req.model, **fields).canonical(), self.version, names)
        doc = {"serve": serve, "w": self.workload.model_dump(mode="json"), "r": request or {}}
        blob = json.dumps({**doc, "replicas": replicas} if replicas > 1 else doc, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def replayed(self, key: str) -> Outcome | None:
        """This job's own decided outcome for ``key`` (a resumed job), taken once."""
        return self.replay.pop(key, None)

    def reusable_run(self, key: str) -> str | None:
        """A run any tune measured under ``key`` (the newest)."""
        row = self.ws.store.query_one(
            "SELECT run_id FROM tune_candidates WHERE status IN ('measured', 'reused') AND run_id IS NOT NULL "
            "AND json_extract(data, '$.key') = ? ORDER BY rowid DESC LIMIT 1", (key,))
        return row["run_id"] if row else None

    def record(self, out: Outcome, key: str, launched: int) -> None:
        """Write an outcome as measured (its GPU time is already counted by :meth:`spend`). Decisions taken on it
        later (inert, within the noise, rejected) are not written: a resumed job re-derives them from the replay."""
        self.ws.store.insert("tune_candidates", {
            "job_id": self.job_id, "idx": self.next_idx, "config": out.config, "status": out.status,
            "reason": out.reason, "run_id": out.run_id,
            "data": {"key": key, "launched": launched, "gpu_seconds": out.gpu_seconds,
                     "outcome": out.model_dump(mode="json")}})
        self.next_idx += 1
        self.recorded.add(key)

    def lost_note(self) -> str | None:
        """What became of the trials a resumed job found lost with a Ray node: asked for again and decided, or
        left (the resumed search took another path, so it never asked)."""
        if not self.lost:
            return None
        again = len(self.lost & self.recorded)
        left = len(self.lost) - again
        return "; ".join(x for x in (f"{again} trial(s) lost with a Ray node run again" if again else "",
                                     f"{left} trial(s) lost with a Ray node not asked for again (the resumed search "
                                     "took another path)" if left else "") if x)

    def spend(self, launches: int, gpu_seconds: float) -> None:
        self.launches += launches
        self.gpu_seconds += gpu_seconds

    def budget_left(self) -> int:
        """Launches still allowed (0 when the GPU-second budget is spent too)."""
        if self.req.max_gpu_seconds and self.gpu_seconds >= self.req.max_gpu_seconds:
            return 0
        return max(0, self.req.max_launches - self.launches)
