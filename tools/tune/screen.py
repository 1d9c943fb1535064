"""Several candidates of one tune stage measured at once: side by side on disjoint GPU sets of this host
(``parallel.ParallelRunner``) or as tasks on a Ray cluster (``ray_cluster.RayTrials``).

Figures measured side by side share the host, so no decision rests on them alone: the finalists (the best
screened candidate and every one within the noise of it) are launched again one at a time and their alone
figures are the ones the tuner compares; where a finalist's alone figure disagrees with its side-by-side one
beyond the noise, the interference seen widens the finalists once. On a cluster each trial runs alone on its
node's GPUs, but nodes differ, so the same rule holds.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from omnitune.tools.tune.models import Outcome
from omnitune.tools.tune.parallel import ParallelRunner, Placement, ServerSweeper, agree, finalists, measure_on

if TYPE_CHECKING:
    from omnitune.tools.tune.tuner import Tuner

Item = tuple[str, str, dict, "str | None"]  # name, stage, config, quality floor


class Screen:
    """Measures a stage's candidates together for one tuner; ``timeline`` says where and when each trial ran."""

    def __init__(self, tuner: Tuner, max_parallel: int | None, ray_address: str | None = None) -> None:
        self.t = tuner
        self._lock = threading.Lock()
        self.ray = None
        if ray_address:
            from omnitune.tools.tune.ray_cluster import RayTrials
            self.ray = RayTrials(tuner.launcher.settings, tuner.ws, ray_address, cancelled=tuner.cancelled)
        self.runner: ParallelRunner[Item, dict] = ParallelRunner(
            self._run_one, name_of=lambda item: item[0], on_error=self._error, workspace_root=tuner.ws.root,
            sweeper=ServerSweeper(tuner.launcher), max_parallel=max_parallel, cancelled=tuner.cancelled)

    @property
    def timeline(self) -> list[Placement]:
        return [*self.runner.timeline, *(self.ray.timeline if self.ray else [])]

    def gpus(self) -> int:
        return len(self.runner.report.gpus)

    # -- one trial (a worker thread) ------------------------------------------------------------------
    def _run_one(self, item: Item, gpus: list[int]) -> dict:
        t = self.t
        res = measure_on(t.launcher.settings, t.ws, t.req.model, t.req.workload, {**item[2], "gpus": gpus},
                         labels={"tune_job": t.job_id}, launcher=t.launcher)
        res["gpus"] = gpus
        return res

    @staticmethod
    def _error(item: Item, gpus: list[int], exc: BaseException) -> dict:
        return {"server_id": None, "run_id": None, "p50_s": None, "error": f"{type(exc).__name__}: {exc}",
                "gpus": gpus, "seconds": 0.0, "launched": bool(gpus)}

    def _batch(self, items: Sequence[Item], alone: bool = False) -> list[dict]:
        if self.ray:  # alone: one task at a time (each on whichever node Ray picks)
            trials = [(n, c, len(c.get("gpus") or [0])) for n, _, c, _ in items]
            groups = [[x] for x in trials] if alone else [trials]
            return [r for g in groups for r in self.ray.run_many(g, self.t.req.model, self.t.req.workload,
                                                                   labels={"tune_job": self.t.job_id})]
        batch = [(item, len(item[2].get("gpus") or [0])) for item in items]
        return self.runner.run_many(batch, alone=alone)

    def _outcome(self, item: Item, res: dict) -> Outcome:
        """The tuner's outcome of one trial; launches and GPU time counted here, in the tuner's thread."""
        name, stage, config, _ = item
        t = self.t
        n = len(config.get("gpus") or [0])
        launched = bool(res.get("launched"))
        if launched:
            t.launches += 1
            t.gpu_seconds += float(res.get("seconds") or 0.0) * n
        if not res.get("run_id") or not res.get("p50_s"):
            return Outcome.model_validate({"name": name, "stage": stage, "status": "failed", "config": config,
                                           "reason": res.get("error") or "no successful measured request",
                                           "gpu_seconds": float(res.get("seconds") or 0.0) * n})
        out = t._outcome_from_run(name, stage, config, res["run_id"], "measured", None)
        out.gpu_seconds = float(res.get("seconds") or 0.0) * n
        t._judge(out)
        return out

    def measure_remote(self, item: Item) -> tuple[Outcome, bool]:
        """One candidate as a task on the cluster (the tuner measures one at a time): its outcome, launched."""
        res = self._batch([item])[0]
        return self._outcome(item, res), bool(res.get("launched"))

    # -- a stage ------------------------------------------------------------------------------------
    def prefetch(self, items: Sequence[Item]) -> None:
        """Measure, side by side, the items the tuner would launch (not known, within the budget); their outcomes
        wait in ``tuner.prefetched`` (by key) until the tuner's own order asks for them."""
        t = self.t
        t._check_cancelled()
        todo, keys = [], set()
        for name, stage, config, floor in items:
            key = t.key(config)
            if key in t.replay or key in t.prefetched or key in keys or _reusable(t, key):
                continue
            if t.launches + len(todo) >= t.req.max_launches:
                break
            todo.append((name, stage, config, floor))
            keys.add(key)
        sizes = sorted(len(c.get("gpus") or [0]) for _, _, c, _ in todo)
        if len(todo) < 2 or (not self.ray and sizes[0] + sizes[1] > self.gpus()):
            return  # no two fit side by side: nothing to gain, the tuner measures them itself
        results = self._batch(todo)
        places = self._placements(len(todo))
        outs = [self._outcome(item, res) for item, res in zip(todo, results, strict=True)]
        self._decide_alone(todo, outs, places)
        for item, out in zip(todo, outs, strict=True):
            t.prefetched[t.key(item[2])] = out

    def _decide_alone(self, items: list[Item], outs: list[Outcome], places: list[Placement]) -> None:
        """Re-measure alone the finalists that ran beside another trial; their alone figures replace the
        side-by-side ones. A finalist that happened to run alone already needs no second launch."""
        t = self.t
        eligible = [k for k, o in enumerate(outs) if o.p50_s and t.accept(o, items[k][3] or "lossless")]
        scores = [(outs[k].p50_s, outs[k].p50_se_s) if k in eligible else None for k in range(len(outs))]
        chosen = finalists(scores, keep=1)  # type: ignore[arg-type]
        done = {k for k in range(len(outs)) if places[k].alone}
        factor, differs, again_n = 1.0, False, 0
        for _round in range(2):
            chosen = [k for k in chosen if k not in done][:max(0, t.req.max_launches - t.launches)]
            if not chosen:
                break
            alone = self._batch([items[k] for k in chosen], alone=True)
            for k, res in zip(chosen, alone, strict=True):
                done.add(k)
                again_n += 1
                again = self._outcome(items[k], res)
                side = outs[k]
                if not again.p50_s or not side.p50_s:
                    continue
                same = agree((side.p50_s, side.p50_se_s), (again.p50_s, again.p50_se_s))
                factor, differs = max(factor, side.p50_s / again.p50_s), differs or not same
                again.reason = (f"screened beside {', '.join(places[k].beside)}: p50 {side.p50_s:.4f} s (run "
                                f"{side.run_id}); re-measured alone: {again.p50_s:.4f} s, "
                                f"{'within' if same else 'beyond'} the noise of it")
                again.gpu_seconds += side.gpu_seconds
                outs[k] = again
            best = min((p for k in done if k in eligible and (p := outs[k].p50_s)), default=None)
            if not best or not differs or factor <= 1.0:
                break  # side-by-side figures agree with alone ones: the others stay out
            # interference seen: a candidate screened slower by up to that factor may still win alone
            chosen = [k for k in eligible if k not in done and outs[k].p50_s and
                      outs[k].p50_s / factor < best * 1.02]  # type: ignore[operator]
        beside = sum(not p.alone for p in places)
        t.notes.append(f"{len(items)} candidates screened, {beside} of them side by side ({self._where(places)}); "
                       f"{again_n} finalist(s) re-measured alone before deciding")

    def _placements(self, n: int) -> list[Placement]:
        """The last batch's placements; on a cluster, alone = no other trial on its node at the same time."""
        if not self.ray:
            return self.runner.timeline[-n:]
        ran = self.ray.timeline
        for p in ran[-n:]:
            p.beside = [q.trial for q in ran if q is not p and q.node == p.node and q.started_at and q.ended_at and
                        p.started_at and p.ended_at and q.started_at < p.ended_at and p.started_at < q.ended_at]
            p.alone = not p.beside and p.status == "done"
        return ran[-n:]

    @staticmethod
    def _where(ran: list[Placement]) -> str:
        return ", ".join(f"{p.trial} on {'GPU' if len(p.gpus) == 1 else 'GPUs'} {','.join(map(str, p.gpus))}"
                         for p in ran[:8]) + (" ..." if len(ran) > 8 else "")


def _reusable(t: Tuner, key: str) -> bool:
    """Another tune measured this key: the tuner reuses that run, nothing to launch."""
    return t.ws.store.query_one("SELECT 1 FROM tune_candidates WHERE status IN ('measured', 'reused') AND run_id IS "
                                "NOT NULL AND json_extract(data, '$.key') = ? LIMIT 1", (key,)) is not None


def screen_for(tuner: Tuner) -> Screen | None:
    """A screen when the request allows more than one trial at a time (or a Ray cluster is set), else None."""
    limit: Any = getattr(tuner.req, "max_parallel_trials", 1)
    address = tuner.launcher.settings.ray_address
    if limit == 1 and not address:
        return None
    screen = Screen(tuner, limit, address)
    return screen if address or screen.gpus() > 1 else None
