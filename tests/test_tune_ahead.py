"""Trials side by side and ahead of the search (tools/tune/ahead.py), in memory: the emulator's world model behind a
runner that takes a little time per launch and per benchmark, so that trials really overlap in threads.

Each test states the world and asserts decisions and invariants (the same winner as one trial at a time, no GPU
leased twice, benchmarks overlapping only on disjoint GPU sets and never beside one taken alone, every launch
charged, the budget kept), never a speed read off a clock.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext

import pytest

from omnitune.tools.settings import Settings
from omnitune.tools.tune.ahead import AheadTrials, BenchSlot
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
        self.windows: list[tuple[float, float, tuple[int, ...]]] = []
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
                    self.windows.append((t0, time.monotonic(), tuple(gpus)))
            with self.lock:  # run ids are numbered: one at a time
                return super().run(trial, gpus)
        finally:
            with self.lock:
                del self.live[me]


def ahead_tuner(ws, world, job_id="tune-ahead", max_parallel=None, cancelled=lambda: False, overlap=True, **request):
    t = policy(ws, world, job_id=job_id, **request)
    t.ledger.reusable_run = lambda key: None  # measure afresh (another test tune in this workspace measured it)
    inner = Slow(world, t.req)
    t.runner = AheadTrials(inner, t.ledger, max_parallel, cancelled, report=gpu_report(world), sweeper=NoSweep(),
                           overlap_benchmarks=overlap)
    return t, inner


def overlapping(windows):
    return [(a, b) for i, a in enumerate(windows) for b in windows[i + 1:] if a[0] < b[1] and b[0] < a[1]]


@pytest.mark.parametrize("overlap", [True, False])
def test_side_by_side_and_ahead_the_search_decides_as_one_at_a_time(ws, overlap):
    world = load_world("cfg4_qwen_image", gpus=[H200] * 8)
    one = policy(ws, world, job_id="sequential")
    best_one = one.run()
    t, inner = ahead_tuner(ws, world, overlap=overlap)
    best = t.run()
    assert best is not None and best_one is not None and best.name == best_one.name
    assert inner.shared == []  # no GPU was ever given to two trials at once
    # judged against the baseline, started before it was measured or not
    assert all(o.verdict for o in t.outcomes if o.p50_s and o.stage != "baseline")
    together = overlapping(sorted(inner.windows))
    assert all(set(a[2]).isdisjoint(b[2]) for a, b in together)  # benchmarks side by side on disjoint GPUs only
    timeline = t.runner.timeline
    assert [p for p in timeline if p.beside]
    if overlap:  # the first wave's benchmarks ran together, and the timeline says which ran beside which
        assert together and any(p.bench_beside for p in timeline)
    else:  # one benchmark at a time
        assert together == [] and all(p.bench_beside == [] for p in timeline if p.bench_beside is not None)
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
    # the same configuration (the sequential tune sweeps the caches on the layout: on one GPU it would take
    # longer; side by side on four, the tune sweeps them on one GPU and confirms on the layout)
    assert best is not None and best_one is not None and best.config == best_one.config
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
        # (a real one: the fake's run calls judge without a reference too, and breaking that crashed the baseline's
        # run, a race the baseline won only on a loaded host)
        if trial.compare_to and threading.current_thread() is not threading.main_thread() and not failed:
            failed.append(trial.name)
            raise RuntimeError("comparison broke")
        judge(out, trial)

    inner.judge = flaky
    best = t.run()
    assert failed and best is not None
    assert all(o.verdict for o in t.outcomes if o.p50_s and o.stage != "baseline")


# -- the benchmark slot: side by side, or alone ------------------------------------------------------------------
def slot_of(overlap=True) -> BenchSlot:
    return BenchSlot(lambda: threading.current_thread().name, lambda job: (0, 0), lambda *a: None, str, overlap)


def in_thread(fn, name: str) -> threading.Thread:
    th = threading.Thread(target=fn, name=name, daemon=True)
    th.start()
    return th


def test_benchmarks_side_by_side_know_who_ran_beside_them_and_one_taken_alone_waits_for_them_and_keeps_others_out():
    slot = slot_of()
    entered, release, windows = {}, threading.Event(), {}

    def bench(alone=False):
        def body():
            with slot(alone=alone) as window:
                entered[threading.current_thread().name] = time.monotonic()
                windows[threading.current_thread().name] = window
                release.wait(10)
        return body

    a, b = in_thread(bench(), "a"), in_thread(bench(), "b")
    deadline = time.monotonic() + 10
    while len(entered) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert set(entered) == {"a", "b"}  # side by side: both in at once
    c = in_thread(bench(alone=True), "c")
    time.sleep(0.3)
    d = in_thread(bench(), "d")  # a shared one arriving while one alone waits: after it
    time.sleep(0.3)
    assert "c" not in entered and "d" not in entered
    release.set()
    for th in (a, b, c, d):
        th.join(10)
    assert windows["a"].beside == {"b"} and windows["b"].beside == {"a"}
    assert windows["c"].beside == set() and windows["c"].alone  # nothing ran beside the one taken alone
    assert entered["c"] < entered["d"]


def test_a_revoked_slot_runs_every_later_benchmark_alone():
    slot = slot_of()
    slot.revoke("a figure beside another disagreed with the same server alone")
    with slot() as window:
        assert window.alone
    assert slot.revoked and not slot.overlap


def test_a_trial_run_ahead_that_ends_frees_its_gpus_for_the_next_one_without_the_search_asking(ws):
    world = load_world("cfg4_qwen_image", gpus=[H200] * 2)
    t, inner = ahead_tuner(ws, world)
    wide = [t.trial(name, "lossless", "layout", {**cfg, "gpus": [0, 1]}, "lossless")
            for name, cfg in (("cfg", {"cfg_parallel_size": 2}), ("usp", {"usp": 2}))]
    t.runner.ahead(wide)  # both need the two GPUs: one after the other
    deadline = time.monotonic() + 20
    while len(inner.started) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert inner.started == ["cfg", "usp"] and inner.shared == []
    t.runner.close()


def test_a_wider_layout_is_not_started_ahead_behind_a_round_of_one_trial_that_holds_its_gpus(ws):
    # a 38 GiB DiT on 4 L4s: each wider round is one 4-GPU trial; a 4-GPU layout hinted behind it could only start
    # when it ends, when the search decides anyway: started ahead there, it was a launch spent on a guess
    L4 = {"name": "NVIDIA L4", "memory_mib": 23034, "compute_capability": [8, 9]}
    world = load_world("lossy_cliff", gpus=[L4] * 4, topology="pcie")
    t, inner = ahead_tuner(ws, world, weights=True, workload={"sizes": ["512x512"], "measured": 3, "warmup": 1,
                                                              "num_inference_steps": 20})
    best = t.run()
    assert best is not None and len(best.config["gpus"]) == 4 and inner.shared == []
    timeline = t.runner.timeline
    wide = [p for p in timeline if p.started_at and len(p.gpus) == 4]
    assert len(wide) >= 2 and all(p.status != "not_used" for p in timeline)
    # started ahead: only the first wider round, hinted while the narrower trials ran beside it; every later
    # 4-GPU trial was asked for by the search (the one hinted behind Ulysses 4 was started on a guess before)
    assert [p.trial for p in wide if p.ahead] == [wide[0].trial]
    assert t.ledger.launches == len(inner.started)
