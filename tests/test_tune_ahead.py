"""Trials side by side and ahead of the search (tools/tune/ahead.py), in memory: the emulator's world model behind a
runner that takes a little time per launch and per benchmark, so that trials really overlap in threads.

Each test states the world and asserts decisions and invariants (the same winner as one trial at a time, no GPU
leased twice, benchmarks never overlapping, every launch charged, the budget kept), never a speed read off a clock.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import pytest

from omnitune.tools.settings import Settings
from omnitune.tools.tune.ahead import AheadTrials
from omnitune.tools.tune.models import Cancelled
from omnitune.tools.workspace import Workspace
from tests.tune_fakes import WorldTrials, gpu_report, load_world, policy

H200 = {"name": "NVIDIA H200", "memory_mib": 143771, "compute_capability": [9, 0]}


@pytest.fixture
def ws(tmp_path):
    workspace = Workspace.open(Settings.model_validate({"workspace": tmp_path / "ws"}))
    yield workspace
    workspace.close()


class NoSweep:
    """No real servers here: nothing to sweep, nothing held by other omnitune servers."""

    def __call__(self, gpus, since) -> list[str]:
        return []

    def held(self) -> set[int]:
        return set()


class Slow(WorldTrials):
    """``WorldTrials`` whose launch and benchmark each take ``delay`` seconds, recording which GPUs are live and
    when benchmarks ran (to check the invariants), and a ``bench_slot`` as ``LaunchTrials`` has."""

    def __init__(self, *args, delay: float = 0.03, **kw) -> None:
        super().__init__(*args, **kw)
        self.delay, self.bench_slot = delay, nullcontext
        self.lock = threading.Lock()
        self.live: dict[int, list[int]] = {}
        self.shared: list[str] = []
        self.windows: list[tuple[float, float]] = []
        self.started: list[str] = []

    def run(self, trial, gpus):
        me = threading.get_ident()
        with self.lock:
            if {g for s in self.live.values() for g in s} & set(gpus):
                self.shared.append(trial.name)
            self.live[me] = list(gpus)
            self.started.append(trial.name)
        try:
            time.sleep(self.delay)  # the launch
            with self.bench_slot():
                t0 = time.monotonic()
                time.sleep(self.delay)
                with self.lock:
                    self.windows.append((t0, time.monotonic()))
            with self.lock:  # run ids are numbered: one at a time
                return super().run(trial, gpus)
        finally:
            with self.lock:
                del self.live[me]


def ahead_tuner(ws, world, job_id="tune-ahead", max_parallel=None, cancelled=lambda: False, **request):
    t = policy(ws, world, job_id=job_id, **request)
    t.ledger.reusable_run = lambda key: None  # measure afresh (another test tune in this workspace measured it)
    inner = Slow(world, t.req)
    t.runner = AheadTrials(inner, t.ledger, max_parallel, cancelled, report=gpu_report(world), sweeper=NoSweep())
    return t, inner


def test_side_by_side_and_ahead_the_search_decides_as_one_at_a_time(ws):
    world = load_world("cfg4_qwen_image", gpus=[H200] * 8)
    one = policy(ws, world, job_id="sequential")
    best_one = one.run()
    t, inner = ahead_tuner(ws, world)
    best = t.run()
    assert best is not None and best_one is not None and best.name == best_one.name
    assert inner.shared == []  # no GPU was ever given to two trials at once
    # judged against the baseline, started before it was measured or not
    assert all(o.verdict for o in t.outcomes if o.p50_s and o.stage != "baseline")
    windows = sorted(inner.windows)
    assert all(a[1] <= b[0] for a, b in zip(windows, windows[1:], strict=False))  # one benchmark at a time
    timeline = t.runner.timeline
    overlapped = [p for p in timeline if p.beside]
    assert overlapped and all(p.bench_beside == [] for p in timeline if p.bench_beside is not None)
    used_early = [p for p in timeline if p.ahead and p.status == "done"]
    assert used_early  # started before the search asked, then taken by it
    # every launch is charged: those the search took through its ledger, those it never asked for at the end
    assert t.ledger.launches == len(inner.started) == sum(1 for p in timeline if p.started_at)
    names = [o.name for o in t.outcomes if o.launched]
    assert len(names) == len(set(names))  # nothing launched twice for the same question
    unused = [p.trial for p in timeline if p.status == "not_used"]
    assert set(names) | set(unused) == set(inner.started)
    assert not unused or any("not asked for" in n for n in t.runner.notes)


def test_trials_started_ahead_never_break_the_launch_budget(ws):
    world = load_world("cfg4_qwen_image", gpus=[H200] * 8)
    t, inner = ahead_tuner(ws, world, max_launches=4)
    t.run()
    assert len(inner.started) <= 4 and t.ledger.launches <= 4
    assert any(o.status == "skipped_budget" for o in t.outcomes)


def test_a_lossy_sweep_keeps_its_launch_for_steps_and_guidance_with_trials_ahead(ws):
    world = load_world("lossy_cliff", gpus=[H200] * 4)
    one = policy(ws, world, job_id="sequential", goal={"quality": "lossy"})
    best_one = one.run()
    t, inner = ahead_tuner(ws, world, goal={"quality": "lossy"})
    best = t.run()
    assert best is not None and best_one is not None and best.name == best_one.name
    assert inner.shared == [] and len(inner.started) <= t.req.max_launches
    assert all(o.verdict for o in t.outcomes if o.p50_s and o.stage != "baseline")
    request_level = [o for o in t.outcomes if o.request_settings]
    assert request_level and request_level[0].launched and request_level[0].status != "skipped_budget"


def test_one_trial_at_a_time_when_asked(ws):
    world = load_world("cfg4_qwen_image", gpus=[H200] * 4)
    t, inner = ahead_tuner(ws, world, max_parallel=1)
    assert t.run() is not None
    assert not any(p.beside for p in t.runner.timeline)


def test_a_cancel_stops_the_trials_and_charges_what_ran(ws):
    world = load_world("cfg4_qwen_image", gpus=[H200] * 8)
    stop = threading.Event()
    t, inner = ahead_tuner(ws, world, cancelled=stop.is_set)
    inner.delay = 0.2
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(Cancelled):
        t.run()
    assert inner.live == {}  # every trial returned (its server stopped)
    assert t.ledger.launches == len(inner.started)


def test_a_comparison_failing_off_the_search_thread_is_made_again_when_asked_never_a_hang(ws):
    world = load_world("cfg4_qwen_image", gpus=[H200] * 8)
    t, inner = ahead_tuner(ws, world)
    judge, failed = inner.judge, []

    def flaky(out, trial):  # the first comparison made on a trial's own thread breaks
        if threading.current_thread() is not threading.main_thread() and not failed:
            failed.append(trial.name)
            raise RuntimeError("comparison broke")
        judge(out, trial)

    inner.judge = flaky
    best = t.run()
    assert failed and best is not None
    assert all(o.verdict for o in t.outcomes if o.p50_s and o.stage != "baseline")
