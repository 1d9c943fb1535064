"""Trials on a Ray cluster beyond one host (the optional extra ``omnitune[ray]``).

Each trial becomes a Ray task asking for ``num_gpus``; Ray picks the node and the GPUs (so two trials never
share one), the task launches ``vllm serve`` there with omnitune's own launcher and benchmarks it locally
(``ray_trial.run_on_node``), and its rows and files come back into the driver's workspace, where the quality
gate and the tune's records live. A task that dies with its node, is cancelled or runs out of time is a failed
trial, never a failed tune; one lost with its node is marked ``node_lost`` (the tune then stops after the batch,
resumable, and a resume runs it again). The cluster is the one ``OMNITUNE_RAY_ADDRESS`` names (``ray start
--head`` prints it; ``auto`` joins the cluster this host belongs to).

ray is imported only when a cluster is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from omnitune.tools.errors import OmnituneError
from omnitune.tools.tune.parallel import Placement, TrialsCancelled
from omnitune.tools.tune.ray_trial import import_trial, run_on_node

log = logging.getLogger(__name__)
_SETTINGS_SHIPPED = ("vllm", "serve_host", "model_roots", "vllm_omni_source", "serving_python")
# How long a task that died without an answer of its own waits for the cluster to say whether its node died (the
# GCS marks a node dead after its health checks fail: ~15 s with Ray's defaults).
NODE_LOSS_WAIT_S = 30.0


class RayUnavailable(OmnituneError):
    pass


def connect(address: str) -> Any:
    """Join the cluster at ``address`` (idempotent); the ``ray`` module."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("ray is not installed, so trials cannot run on a Ray cluster.",
                             "pip install 'omnitune[ray]' (the same ray version as the cluster's)") from exc
    if not ray.is_initialized():
        try:
            ray.init(address=address, namespace="omnitune", log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=False)
        except Exception as exc:  # ConnectionError, a version mismatch, a wrong address: say which cluster
            raise RayUnavailable(f"could not join the Ray cluster at {address!r}: {exc}",
                                 "check OMNITUNE_RAY_ADDRESS (host:port of the head's GCS, or 'auto')") from exc
    return ray


def cluster_gpus(ray: Any) -> dict[str, int]:
    """GPUs per alive node (node id -> count)."""
    return {n["NodeID"]: int(n.get("Resources", {}).get("GPU", 0)) for n in ray.nodes() if n.get("Alive")}


class RayTrials:
    """Run batches of trials as Ray tasks; results are ``measure_on``'s dicts, already imported into ``workspace``."""

    def __init__(self, settings: Any, workspace: Any, address: str, cancelled: Callable[[], bool] = lambda: False,
                 timeout_s: float = 3600.0, poll_s: float = 0.5) -> None:
        self.settings, self.ws, self.address = settings, workspace, address
        self.cancelled, self.timeout_s, self.poll_s = cancelled, timeout_s, poll_s
        self.timeline: list[Placement] = []
        self._remote = None

    def _task(self, ray: Any) -> Any:
        if self._remote is None:
            self._remote = ray.remote(max_retries=0, retry_exceptions=False)(run_on_node)
        return self._remote

    def spec(self, model: str, workload: Any, config: dict, labels: dict[str, str] | None = None,
             skip_inert_sp: bool = False) -> dict:
        shipped = {k: getattr(self.settings, k) for k in _SETTINGS_SHIPPED if getattr(self.settings, k) not in
                   (None, [], "")}
        shipped = {k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in shipped.items()}
        workload = workload.model_dump(mode="json") if hasattr(workload, "model_dump") else workload
        return {"model": model, "workload": workload, "config": {k: v for k, v in config.items() if k != "gpus"},
                "labels": labels or {}, "settings": shipped, "skip_inert_sp": skip_inert_sp}

    def run_many(self, batch: Sequence[tuple[str, dict, int]], model: str, workload: Any,
                 labels: dict[str, str] | None = None, skip_inert_sp: bool = False) -> list[dict[str, Any]]:
        """(name, config, GPU count) each; results in order (``measure_on``'s, see ``skip_inert_sp`` there).
        Raises ``TrialsCancelled`` once cancelled (the tasks are force-cancelled: their workers die and the
        reapers stop their servers)."""
        ray = connect(self.address)
        alive = cluster_gpus(ray)
        biggest = max(alive.values(), default=0)
        results: dict[int, dict[str, Any]] = {}
        places = [Placement(trial=name) for name, _, _ in batch]
        self.timeline.extend(places)
        refs: dict[Any, int] = {}
        submitted: dict[int, float] = {}
        for i, (_, config, n) in enumerate(batch):
            if n > biggest:
                results[i] = self._failed(places[i], f"no node of the cluster has {n} GPUs (most: {biggest})")
                continue
            ref = self._task(ray).options(num_gpus=n, name=f"omnitune:{batch[i][0]}").remote(
                self.spec(model, workload, config, labels, skip_inert_sp))
            refs[ref], submitted[i] = i, time.time()
        try:
            while refs:
                if self.cancelled():
                    raise TrialsCancelled(dict(results))
                done, _ = ray.wait(list(refs), num_returns=1, timeout=self.poll_s)
                for ref in done:
                    i = refs.pop(ref)
                    results[i] = self._collect(ray, ref, places[i], submitted[i], set(alive))
                for ref, i in list(refs.items()):
                    if time.time() - submitted[i] > self.timeout_s:
                        ray.cancel(ref, force=True)
                        refs.pop(ref)
                        results[i] = self._failed(places[i], f"no result within {self.timeout_s:.0f} s; cancelled")
        except BaseException:
            for ref, i in refs.items():
                ray.cancel(ref, force=True)
                places[i].status = "cancelled"
            raise
        return [results[i] for i in range(len(batch))]

    def _collect(self, ray: Any, ref: Any, place: Placement, submitted: float, alive: set[str]) -> dict[str, Any]:
        try:
            payload = ray.get(ref, timeout=60)
        except Exception as exc:  # the node died, the worker crashed, the task raised: a failed trial
            place.started_at = place.started_at or submitted
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            lost = lost_node(ray, exc, alive)
            if lost is not None:
                place.node = lost or place.node
                why = f"node lost{f' ({lost})' if lost else ''} while the trial ran there: {why}"
            # its server may have started before the node went
            return {**self._failed(place, why, launched=True), "node_lost": lost is not None}
        import_trial(self.ws, payload)
        place.node, place.gpus = payload["node"], payload["gpus"]
        place.started_at, place.ended_at = payload["started_at"], payload["ended_at"]
        place.status = "failed" if payload.get("error") else "done"
        place.error = payload.get("error")
        return {k: v for k, v in payload.items() if k not in ("rows", "files")}

    @staticmethod
    def _failed(place: Placement, why: str, launched: bool = False) -> dict[str, Any]:
        place.status, place.error, place.ended_at = "failed", why, time.time()
        log.warning("trial %s failed on the cluster: %s", place.trial, why)
        return {"server_id": None, "run_id": None, "p50_s": None, "error": why, "node": None, "gpus": [],
                "launched": launched, "seconds": (place.ended_at - place.started_at) if place.started_at else 0.0}


def lost_node(ray: Any, exc: Exception, alive: set[str], wait_s: float = NODE_LOSS_WAIT_S,
              poll_s: float = 0.25) -> str | None:
    """The node a task died with: '' when Ray says the node died but not which, None when no node was lost.

    A task whose own code raised (RayTaskError), timed out or was cancelled lost no node. A worker that died
    without an answer (WorkerCrashedError, lost objects, a dead raylet) lost its node only if a node alive when
    the batch was submitted is now dead: the cluster is asked, for at most ``wait_s``."""
    from ray import exceptions as rx
    if not isinstance(exc, (rx.NodeDiedError, rx.WorkerCrashedError, rx.LocalRayletDiedError, rx.ObjectLostError)):
        return None
    deadline = time.monotonic() + wait_s
    while True:
        gone = sorted(alive - set(cluster_gpus(ray)))
        if gone:
            return gone[0]
        if isinstance(exc, rx.NodeDiedError):
            return ""
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)
