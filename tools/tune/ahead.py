"""Trials side by side on disjoint GPU sets of this host, started ahead of the search on GPUs it leaves idle.

Why: the search is a chain of decisions (baseline, then one GPU, then layouts, then wider layouts, then lossy),
each stage a few candidates. Run stage by stage, most GPUs sit idle and every launch (minutes on real GPUs) is on
the critical path. So the search says, through ``ahead``, which trials it will probably ask for next (the next
stage's candidates, if the pending ones turn out as expected), and this runner starts them on GPUs nothing asked
for needs. When the search then asks for one (same ledger key), it gets the result that is ready or in flight,
judged against the baseline then (``ready`` lists the finished ones: a layout measured ahead is evidence already
paid for). Trials run ahead that the search never asks for are stopped when it ends, charged to its budget and
noted in the report; they decide nothing.

Honest figures: benchmarks of trials on disjoint GPU sets run side by side (``BenchSlot``); each figure's window
and the benchmarks beside it are in the timeline. A figure measured beside another benchmark that is contested
(within the spread of the best so far, as the search last said it or as measured here, or its requests too spread
to decide on) is measured again alone on the same still-running server: no relaunch. Agreeing within the noise,
the two are pooled; if not, the alone figure is the one and every later benchmark of the tune runs alone (the
host showed it interferes). A figure far from the best is kept: benchmarks/tune_parallel.py measures that a
benchmark (or a launch) beside a benchmark moves its figure by no more than the host's own noise, so no decision
beyond the noise rests on the company. Asked trials go first for GPUs, and for the slot when a benchmark must run
alone; a trial run ahead never takes GPUs an asked one is waiting for.

Safety as ``parallel.ParallelRunner``: no GPU is ever leased to two trials, GPUs other omnitune servers hold or
other processes fill are left alone, every server a trial started is stopped however it ends (a sweep after each
trial), and a cancel stops every running server at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from omnitune.tools.gpus import GpuReport, detect_gpus
from omnitune.tools.tune.models import ACCEPT, Cancelled, Outcome
from omnitune.tools.tune.parallel import CANCEL_WAIT_S, Placement, ServerSweeper
from omnitune.tools.tune.placement import Ask, Topology, fits_now, usable_gpus
from omnitune.tools.tune.trial import LaunchTrials, Trial

log = logging.getLogger(__name__)
POLL_S = 0.2


@dataclass(eq=False)
class _Job:
    """One trial on its way: asked by the search, or run ahead of it (until the search asks for it)."""

    trial: Trial
    key: str
    gpus: int
    asked: bool
    place: Placement
    seq: int
    hold: bool = False                 # GPUs leased for the caller's own use (a session), nothing run
    state: str = "waiting"             # waiting, running, done, dropped (never started)
    leased: list[int] = field(default_factory=list)
    out: Outcome | None = None
    against: str | None = None         # the baseline run its pictures were judged against
    judging: Future | None = None      # judged in the background (once the baseline became known)
    handed: bool = False               # handed to the search, which charges it to its ledger at once
    charged: bool = False              # its launch is in the ledger


@dataclass(eq=False)
class Window:
    """One benchmark's stay in the slot: ``beside`` names the trials whose benchmarks overlapped it (filled in by
    each one that enters while it runs, so complete once it ends)."""

    job: Any
    alone: bool
    beside: set[str] = field(default_factory=set)


class BenchSlot:
    """Benchmarks on the host: side by side (trials on disjoint GPU sets), or ``alone`` (no other benchmark of this
    tune running: the baseline, a contested figure's repeat). An ``alone`` waiter goes before every shared one;
    among ``alone`` waiters, asked trials' before those run ahead. ``overlap=False``: every benchmark alone.

    ``current()`` names the calling thread's job (None: the search's own thread), ``rank(job)`` orders waiters
    (read at each release: a trial run ahead that the search asks for meanwhile moves up), ``name(job)`` labels it
    and ``done(job, start, end)`` records each benchmark's window."""

    def __init__(self, current: Callable[[], Any], rank: Callable[[Any], tuple[int, int]],
                 done: Callable[[Any, float, float], None], name: Callable[[Any], str] = str,
                 overlap: bool = True) -> None:
        self.current, self.rank, self.done, self.name, self.overlap = current, rank, done, name, overlap
        self._cv = threading.Condition()
        self._active: list[Window] = []
        self._waiting: list[tuple[int, Window]] = []  # (ticket, window)
        self._tickets = 0
        self.revoked: str | None = None

    def revoke(self, why: str) -> None:
        """A figure measured beside another benchmark disagreed with the same server's alone one: every later
        benchmark of this tune runs alone."""
        with self._cv:
            self.overlap, self.revoked = False, self.revoked or why

    def _may_enter(self, entry: tuple[int, Window]) -> bool:
        if any(w.alone for w in self._active):
            return False
        alone = [e for e in self._waiting if e[1].alone]
        if not entry[1].alone:
            return not alone  # a benchmark alone waits for the running ones to end: none may slip in before it
        first = min(alone, key=lambda e: (*self.rank(e[1].job), e[0]))
        return not self._active and first is entry

    @contextmanager
    def __call__(self, alone: bool = False) -> Iterator[Window]:
        window = Window(self.current(), alone or not self.overlap)
        with self._cv:
            self._tickets += 1
            entry = (self._tickets, window)
            self._waiting.append(entry)
            while not self._may_enter(entry):
                self._cv.wait(POLL_S)
            self._waiting.remove(entry)
            for other in self._active:
                other.beside.add(self.name(window.job))
                window.beside.add(self.name(other.job))
            self._active.append(window)
        start = time.time()
        try:
            yield window
        finally:
            with self._cv:
                self._active.remove(window)
                self._cv.notify_all()
            self.done(window.job, start, time.time())


class AheadTrials:
    """``TrialRunner`` running asked trials side by side and hinted ones ahead, on disjoint GPU sets."""

    def __init__(self, inner: LaunchTrials, ledger: Any, max_parallel: int | None,
                 cancelled: Callable[[], bool] = lambda: False, report: GpuReport | None = None,
                 sweeper: ServerSweeper | None = None, overlap_benchmarks: bool = True) -> None:
        self.inner, self.ledger, self.max_parallel, self.cancelled = inner, ledger, max_parallel, cancelled
        self.report = report or detect_gpus(inner.ws.root)
        self.topology = Topology.of(self.report)
        self.sweeper = sweeper if sweeper is not None else ServerSweeper(inner.launcher)
        self.timeline: list[Placement] = []
        self.notes: list[str] = []
        self._cv = threading.Condition(threading.RLock())
        self._jobs: list[_Job] = []
        self._leased: set[int] = set()
        self._reserve = 0  # launches the search keeps for later stages: never spent ahead
        self._reference: str | None = None  # the baseline's run, once measured: what trials are judged against
        self._local = threading.local()
        self._windows: list[tuple[Placement, float, float]] = []  # benchmark windows, for the timeline
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=max(2, len(self.report.gpus)), thread_name_prefix="trial")
        self.slot = BenchSlot(lambda: getattr(self._local, "job", None), self._rank, self._window,
                              lambda j: "search" if j is None else j.place.trial, overlap_benchmarks)
        # the best p50 so far: the search's (its newest trials carry it) or one measured here that passed its floor
        self._near: float | None = None
        inner.bench_slot, inner.near = self.slot, lambda: self._near
        self.concurrency = self.width(2)

    def width(self, gpus: int) -> int:
        """How many trials of ``gpus`` GPUs run at once (the policy screens that many together)."""
        fit = len(self.report.gpus) // max(1, gpus)
        return max(1, min(fit, self.max_parallel or fit))

    # -- the TrialRunner interface ------------------------------------------------------------------
    def run(self, trial: Trial, gpus: list[int]) -> Outcome:
        return self.run_many([(trial, gpus)])[0]

    def run_many(self, batch: list[tuple[Trial, list[int]]]) -> list[Outcome]:
        """Results in the batch's order; a trial already run (or running) ahead is taken, not launched again."""
        self._settle()
        self._heard([t for t, _ in batch])
        jobs = [self._ask(t, len(g)) for t, g in batch]
        self._dispatch()
        self._wait(jobs)
        return self._hand_over(jobs, [t for t, _ in batch])

    def session(self, trial: Trial, gpus: list[int]) -> AbstractContextManager[Any]:
        """Request variants inside one server, on GPUs leased like a trial's (never beside another server)."""
        return self._session(trial, len(gpus))

    def reuse(self, trial: Trial, run_id: str) -> Outcome:
        return self.inner.reuse(trial, run_id)

    # -- what the search says it will ask next ----------------------------------------------------------
    def ahead(self, trials: Sequence[Trial], reserve: int = 0) -> None:
        """The trials the search will probably ask for next, most likely first. Replaces the previous hint's
        trials that have not started; those running or done are kept until the search asks or ends."""
        self._settle()
        with self._cv:
            self._reserve = reserve
            for j in self._jobs:
                if j.state == "waiting" and not j.asked:
                    self._drop(j)
            known = {j.key for j in self._jobs if j.state != "dropped" and not j.hold}  # asked once is enough
            self._heard(trials)
            for t in trials:
                key = self.ledger.key(t.config, t.request)
                if key not in known:
                    known.add(key)
                    self._add(t, key, asked=False)
        self._dispatch()

    def outstanding(self, keys: Sequence[str] = ()) -> int:
        """Launches started and not yet in the search's ledger, ``keys`` (the batch it is about to ask) excepted."""
        self._settle()
        return self._uncharged(keys)

    def ready(self) -> set[str]:
        """Keys of trials measured ahead that the search has not asked for (yet)."""
        with self._cv:
            return {j.key for j in self._jobs if not j.asked and not j.hold and j.state == "done"
                    and j.out is not None and j.out.p50_s}

    def has(self, key: str) -> bool:
        """A trial with this key is running or done ahead: asking for it costs no launch."""
        with self._cv:
            return any(j.key == key and not j.asked and j.state in ("running", "done") for j in self._jobs)

    def _heard(self, trials: Sequence[Trial]) -> None:
        """The search's best p50 so far, as its newest trials carry it (it only gets faster)."""
        near = [t.repeat_near for t in trials if t.repeat_near]
        if near:
            with self._cv:
                self._near = min([*near, *([self._near] if self._near else [])])

    def _settle(self) -> None:
        """Called from the search's thread: what was handed to it before is in its ledger now (it records each
        outcome as soon as ``run_many`` returns, before it calls the runner again)."""
        with self._cv:
            for j in self._jobs:
                if j.handed:
                    j.charged = True

    def _uncharged(self, keys: Sequence[str] = ()) -> int:
        with self._cv:
            return sum(1 for j in self._jobs if not j.hold and not j.charged and j.state in ("running", "done")
                       and j.key not in keys and (j.out is None or j.out.launched))

    def close(self) -> None:
        """The search has ended: trials still running ahead are stopped; those never asked for are charged to the
        budget and noted. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._settle()
        with self._cv:
            for j in self._jobs:
                if j.state == "waiting":
                    self._drop(j)
            running = [j for j in self._jobs if j.state == "running" and not j.hold]
        for j in running:  # their benchmarks end with their servers
            self.sweeper(j.leased, j.place.started_at or 0.0)
        deadline = time.monotonic() + CANCEL_WAIT_S
        with self._cv:
            while any(j.state == "running" and not j.hold for j in self._jobs) and time.monotonic() < deadline:
                self._cv.wait(POLL_S)
            unused = [j for j in self._jobs if not j.asked and not j.hold and j.state == "done" and not j.handed]
            for j in unused:
                j.place.status = "not_used" if j.place.status == "done" else j.place.status
            for j in self._jobs:  # never handed to the search (not asked for, or the search was cancelled)
                if not j.hold and j.state == "done" and not j.charged and j.out is not None:
                    j.handed = j.charged = True
                    self.ledger.spend(int(j.out.launched), j.out.gpu_seconds)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._mark_overlaps()
        if unused:
            spent = sum(j.out.gpu_seconds for j in unused if j.out)
            self.notes.append(f"{len(unused)} trial(s) started ahead on idle GPUs were not asked for by the search "
                              f"({spent:.1f} GPU-s, in the budget): " + ", ".join(j.trial.name for j in unused))
        ran = [p for p in self.timeline if p.started_at]
        if ran:
            early = sum(1 for j in self._jobs if j.asked and not j.hold and j.place.ahead)
            beside = sum(1 for p in ran if p.bench_beside)
            how = "one benchmark at a time" if not beside else (
                f"{beside} benchmark(s) beside another's (figures close to the best are measured again alone "
                f"on the same server)")
            self.notes.append(f"{len(ran)} trial(s) on disjoint GPU sets, {sum(1 for p in ran if p.beside)} of them "
                              f"side by side, {early} started ahead of the search; {how}")
            if self.slot.revoked:
                self.notes.append(self.slot.revoked)

    # -- internals ------------------------------------------------------------------------------------
    def _add(self, trial: Trial, key: str, asked: bool, hold: bool = False) -> _Job:
        place = Placement(trial=trial.name, ahead=not asked)
        job = _Job(trial=trial, key=key, gpus=max(1, len(trial.config.get("gpus") or [0])), asked=asked,
                   place=place, seq=len(self._jobs), hold=hold)
        self._jobs.append(job)
        self.timeline.append(place)
        return job

    def _drop(self, job: _Job) -> None:
        """A job that never started leaves no trace in the timeline."""
        job.state = "dropped"
        if job.place in self.timeline:
            self.timeline.remove(job.place)

    def _ask(self, trial: Trial, gpus: int) -> _Job:
        key = self.ledger.key(trial.config, trial.request)
        with self._cv:
            for j in self._jobs:
                if j.key == key and not j.asked and not j.hold and j.state in ("waiting", "running", "done"):
                    j.asked, j.trial = True, self._keep(j.trial, trial)
                    return j
            job = self._add(trial, key, asked=True)
            job.gpus = max(1, gpus)
            return job

    @staticmethod
    def _keep(ran: Trial, asked: Trial) -> Trial:
        """The asked trial, as it was run (the baseline to judge against may only be known now)."""
        return asked.model_copy(update={"config": ran.config})

    @staticmethod
    def _rank(job: _Job | None) -> tuple[int, int]:
        return (0, -1) if job is None else (0 if job.asked else 1, job.seq)

    def _window(self, job: _Job | None, start: float, end: float) -> None:
        if job is not None:
            with self._cv:
                self._windows.append((job.place, start, end))

    def _room(self) -> int:
        """Launches that may still start ahead: the budget left, less what the search keeps and what is out."""
        if self.ledger is None:
            return 1 << 30
        limit = self.ledger.req.max_gpu_seconds
        if limit and self.ledger.gpu_seconds >= 0.5 * limit:
            return 0  # a GPU-second budget: no speculation in its second half
        asked = sum(1 for j in self._jobs if j.asked and not j.hold and j.state == "waiting")
        return self.ledger.budget_left() - self._reserve - self._uncharged() - asked - 1

    def _dispatch(self, finished: _Job | None = None) -> None:
        """Start what fits now: asked trials first (in order); trials ahead only when no asked one waits, and not
        when ``finished`` (a trial's thread, its GPUs just freed) was the last the search was waiting for: the
        search is reading its result and may say something else (a baseline out of memory, say) before the GPUs
        are given to a trial it hinted earlier. A trial run ahead that ends frees its GPUs for the next at once
        (the search was not waiting for it)."""
        with self._cv:
            waiting = [j for j in self._jobs if j.state == "waiting"]
            if not waiting or self.cancelled():
                return
            running = sum(1 for j in self._jobs if j.state == "running")
            limit = None if self.max_parallel is None else self.max_parallel - running
            if limit is not None and limit <= 0:
                return
            free, _ = usable_gpus(self.report, self.sweeper.held() | self._leased if self.sweeper else self._leased)
            memory = {g.index: g.memory_free_mib for g in self.report.gpus if g.memory_free_mib is not None}
            asked = [j for j in waiting if j.asked]
            started = self._place(asked, free, limit, memory)
            if len(started) < len(asked):
                return
            left = [g for g in free if not any(g in j.leased for j in started)]
            if finished is not None and finished.asked and not any(
                    j is not finished and (j.asked or j.hold) and j.state in ("waiting", "running")
                    for j in self._jobs):
                return
            room = self._room()
            ahead = [j for j in waiting if not j.asked][:max(0, room)]
            self._place(ahead, left, None if limit is None else limit - len(started), memory)

    def _place(self, jobs: list[_Job], free: list[int], limit: int | None, memory: dict[int, int]) -> list[_Job]:
        chosen = fits_now([Ask(j.gpus) for j in jobs], free, self.topology, limit, memory)
        started = []
        for k, gpus in chosen.items():
            j = jobs[k]
            assert not self._leased & set(gpus), "a GPU was about to be given to two trials"
            self._leased |= set(gpus)
            j.leased, j.state = gpus, "running"
            j.place.gpus, j.place.status, j.place.started_at = gpus, "running", time.time()
            j.place.nvlink = self.topology.all_nvlink(gpus) if len(gpus) > 1 else None
            started.append(j)
            if not j.hold:
                self._pool.submit(self._run_job, j).add_done_callback(lambda f, j=j: self._finished(j, f))
        if started:
            self._cv.notify_all()
        return started

    def _run_job(self, job: _Job) -> Outcome:
        """Launch, benchmark, stop; the GPUs go back before the pictures are judged (against the baseline, once
        known: a trial started before it was measured is judged when the search asks for it)."""
        self._local.job = job
        trial = job.trial
        out = self._launch_and_measure(job, trial.model_copy(update={"compare_to": None}))
        reference = trial.compare_to or self._reference
        if out.p50_s and reference:
            try:
                self.inner.judge(out, trial.model_copy(update={"compare_to": reference}))
                job.against = reference
            except Exception:  # judged again when the search asks for it, where a failure is the search's
                log.exception("judging trial %s against %s failed", trial.name, reference)
                out.verdict, out.psnr_db_mean = None, None
        return out

    def _launch_and_measure(self, job: _Job, trial: Trial) -> Outcome:
        since = time.time()
        try:
            out = self.inner.run(trial, job.leased)
            job.place.status = "done"
            return out
        except BaseException as exc:  # a failing trial is a failed outcome, never a failed tune
            job.place.status, job.place.error = "failed", f"{type(exc).__name__}: {exc}"
            if isinstance(exc, Cancelled) or self.cancelled() or self._closed:
                job.place.status = "cancelled"
            else:
                log.warning("trial %s on GPUs %s failed: %s", trial.name, job.leased, exc)
            return Outcome.model_validate({"name": trial.name, "stage": trial.stage, "kind": trial.kind,
                                           "status": "failed", "cause": "crashed", "config": trial.config,
                                           "reason": f"{type(exc).__name__}: {exc}", "gpus": job.leased,
                                           "launched": True, "estimate_mib": trial.estimate_mib})
        finally:
            if self.sweeper:
                left = self.sweeper(job.leased, since)
                if left:
                    log.warning("trial %s left servers %s on GPUs %s: stopped", trial.name, left, job.leased)
            job.place.ended_at = time.time()
            self._local.job = None
            with self._cv:  # its server is stopped: the GPUs are free for the next trial
                self._leased -= set(job.leased)
                self._cv.notify_all()
            self._dispatch(finished=job)

    def _finished(self, job: _Job, fut: Future) -> None:
        with self._cv:
            if fut.cancelled() or fut.exception() is not None:  # never ran (closed first), or a bug: no hang
                why = "cancelled before it started" if fut.cancelled() else f"{fut.exception()!r}"
                job.out = Outcome(name=job.trial.name, stage=job.trial.stage, kind=job.trial.kind, status="failed",
                                  cause="crashed", config=job.trial.config, reason=why, launched=not fut.cancelled())
                self._leased -= set(job.leased)
            else:
                job.out = out = fut.result()
                floor = job.trial.floor
                if out.p50_s and out.status == "measured" and not (floor and out.verdict and
                                                                   out.verdict not in ACCEPT[floor]):
                    self._near = min(out.p50_s, self._near or out.p50_s)  # a later figure close to it is contested
            job.state = "done"
            self._cv.notify_all()
        self._dispatch(finished=job)

    def _wait(self, jobs: list[_Job]) -> None:
        """Until every job is done; a cancel stops every running server and raises ``Cancelled``."""
        with self._cv:
            while any(j.state != "done" for j in jobs):
                if self.cancelled():
                    break
                self._cv.wait(POLL_S)
                if any(j.state == "waiting" for j in jobs):
                    self._dispatch()  # GPUs another omnitune server held may be free now
            else:
                return
        self.close()
        raise Cancelled()

    def _hand_over(self, jobs: list[_Job], asked: list[Trial]) -> list[Outcome]:
        """Each job's outcome under the asked trial's name, judged against the asked trial's baseline where it
        was not yet (started before the baseline was measured), the comparisons side by side."""
        for j in jobs:
            if j.judging is not None:
                j.judging.result()
        todo = [(j, t) for j, t in zip(jobs, asked, strict=True)
                if j.out is not None and j.out.p50_s and t.compare_to and j.against != t.compare_to]
        if todo:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="judge") as pool:
                list(pool.map(lambda jt: self._judge(jt[0], jt[1].compare_to), todo))
        outs = []
        with self._cv:
            for j, t in zip(jobs, asked, strict=True):
                assert j.out is not None
                j.handed = True
                j.place.status = j.place.status if j.place.status != "running" else "done"
                update: dict[str, Any] = {"name": t.name, "stage": t.stage, "kind": t.kind,
                                          "estimate_mib": t.estimate_mib}
                if j.place.ahead:
                    update["reason"] = "; ".join(x for x in (j.out.reason, "started ahead of the search on idle GPUs")
                                                 if x)
                outs.append(j.out.model_copy(update=update))
                if t.stage == "baseline" and j.out.p50_s and j.out.run_id:
                    self._reference = j.out.run_id
            if self._reference:  # trials done ahead are judged now, in the background, not when asked for
                for j in self._jobs:
                    if j.state == "done" and not j.handed and j.judging is None and j.out is not None and \
                            j.out.p50_s and j.against is None:
                        j.judging = self._pool.submit(self._judge, j, self._reference)
        self._mark_overlaps()
        return outs

    def _judge(self, job: _Job, reference: str | None) -> None:
        assert job.out is not None
        try:
            self.inner.judge(job.out, job.trial.model_copy(update={"compare_to": reference}))
            job.against = reference
        except Exception:  # in the background: judged again when the search asks for it
            log.exception("judging trial %s against %s failed", job.trial.name, reference)
            job.out.verdict, job.out.psnr_db_mean = None, None

    @contextmanager
    def _session(self, trial: Trial, gpus: int) -> Iterator[Any]:
        key = self.ledger.key(trial.config, trial.request) if self.ledger else trial.name
        self._settle()
        with self._cv:
            job = self._add(trial, key, asked=True, hold=True)
            job.gpus = max(1, gpus)
        self._dispatch()
        with self._cv:
            while job.state == "waiting":
                if self.cancelled():
                    self._drop(job)
                    raise Cancelled()
                self._cv.wait(POLL_S)
                self._dispatch()
        since = time.time()
        self._local.job = job
        try:
            with self.inner.session(trial, job.leased) as session:
                yield session
        finally:
            self._local.job = None
            if self.sweeper:
                self.sweeper(job.leased, since)
            with self._cv:
                job.state, job.handed, job.place.status, job.place.ended_at = "done", True, "done", time.time()
                self._leased -= set(job.leased)
                self._cv.notify_all()
            self._dispatch()

    def _mark_overlaps(self) -> None:
        """Trials that ran at the same time (``beside``), and whose benchmarks overlapped (none: the slot)."""
        spans = [(p, p.started_at, p.ended_at) for p in self.timeline if p.started_at and p.ended_at]
        for p, start, end in spans:
            p.beside = [q.trial for q, s, e in spans if q is not p and s < end and start < e]  # type: ignore[operator]
            p.alone = not p.beside
        with self._cv:
            windows = list(self._windows)
        for p, start, end in windows:
            p.bench_beside = sorted({q.trial for q, s, e in windows if q is not p and s < end and start < e})
