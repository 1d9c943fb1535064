"""The trial runner's own decisions, in memory: what a failure under a stopping tune is recorded as.

A candidate whose benchmark fails because the tune is being stopped (job_cancel, a client closing, a SIGTERM)
is not the candidate's failure: recorded as failed it would be replayed on resume and the true winner lost.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from omnitune.tools.errors import OmnituneError
from omnitune.tools.settings import Settings
from omnitune.tools.tune import trial as trial_module
from omnitune.tools.tune.models import Cancelled, TuneRequest
from omnitune.tools.tune.trial import LaunchTrials, Trial
from omnitune.tools.workspace import Workspace


@pytest.fixture
def runner(tmp_path, monkeypatch):
    ws = Workspace.open(Settings.model_validate({"workspace": tmp_path / "ws"}))
    cancel = threading.Event()
    stopped: list[str] = []
    launcher = SimpleNamespace(  # launches at once; what the trial stops is kept
        launch=lambda config, labels=None: SimpleNamespace(server=SimpleNamespace(id="srv-fake")),
        stop=lambda server_id, **_: stopped.append(server_id))
    request = TuneRequest.model_validate({"model": str(tmp_path), "workload": {"sizes": ["64x64"]}})
    yield LaunchTrials(ws, launcher=launcher, request=request, job_id="job-1", cancel=cancel), cancel  # type: ignore[arg-type]
    assert stopped == ["srv-fake"]  # however the trial ended, its server was stopped
    ws.close()


def failing_benchmark(cancel: threading.Event | None):
    def run_benchmark(ws, target, workload, cancel=None):
        if cancel_first is not None:
            cancel_first.set()  # the shutdown stops the server while its benchmark is in flight
        raise OmnituneError("server srv-fake stopped answering", "see its log")
    cancel_first = cancel
    return run_benchmark


def test_a_benchmark_failing_because_the_tune_is_stopping_is_a_cancellation_not_a_failed_candidate(runner,
                                                                                                   monkeypatch):
    launch_trials, cancel = runner
    monkeypatch.setattr(trial_module, "run_benchmark", failing_benchmark(cancel))
    with pytest.raises(Cancelled), launch_trials.session(Trial(name="fp8", stage="s", kind="single_gpu",
                                                               config={}), [0]) as session:
        session.measure(Trial(name="fp8", stage="s", kind="single_gpu", config={}))


def test_a_server_dying_under_a_running_tune_is_a_failed_candidate(runner, monkeypatch):
    launch_trials, _ = runner
    monkeypatch.setattr(trial_module, "run_benchmark", failing_benchmark(None))
    t = Trial(name="fp8", stage="s", kind="single_gpu", config={})
    with launch_trials.session(t, [0]) as session:
        out = session.measure(t)
    assert (out.status, out.cause) == ("failed", "crashed") and "stopped answering" in (out.reason or "")


# -- a figure measured beside another trial's benchmark ---------------------------------------------------------
class FakeSlot:
    """The first benchmark had company (``beside``); records whether each was asked alone; ``revoke`` noted."""

    def __init__(self, beside: set[str]) -> None:
        self.beside, self.calls, self.revoked = beside, [], None

    def __call__(self, alone: bool = False):
        from contextlib import contextmanager

        @contextmanager
        def cm():
            self.calls.append(alone)
            yield SimpleNamespace(beside=set() if alone or len(self.calls) > 1 else self.beside, alone=alone)
        return cm()

    def revoke(self, why: str) -> None:
        self.revoked = why


def beside_runner(runner, monkeypatch, figures: list[float], near: float | None):
    """``runner`` whose benchmarks give ``figures`` in turn (p50, steady), the search's best so far ``near``."""
    from omnitune.tools.tune.models import Outcome
    launch_trials, _ = runner
    runs = iter(range(len(figures)))
    monkeypatch.setattr(trial_module, "run_benchmark", lambda ws, target, workload, cancel=None: SimpleNamespace(
        status="completed", run_id=f"run-{next(runs)}", summary=None))
    monkeypatch.setattr(trial_module, "get_server", lambda store, sid: SimpleNamespace(log_path=None))
    launch_trials.read = lambda trial, run_id, status="measured", reason=None: Outcome(
        name=trial.name, stage=trial.stage, kind=trial.kind, status=status, config=trial.config, run_id=run_id,
        reason=reason, p50_s=figures[int(run_id.split("-")[1])], p50_se_s=0.001)
    launch_trials.near = lambda: near
    slot = FakeSlot({"ring=2 (2 GPUs)"})
    launch_trials.bench_slot = slot
    return launch_trials, slot


def measure_one(launch_trials):
    t = Trial(name="cfg=2", stage="lossless", kind="layout", config={}, repeat_band=0.02)
    with launch_trials.session(t, [0, 1]) as session:
        return session.measure(t)


def test_a_contested_figure_measured_beside_another_benchmark_is_measured_again_alone_and_pooled_if_it_agrees(
        runner, monkeypatch):
    launch_trials, slot = beside_runner(runner, monkeypatch, [0.201, 0.200], near=0.203)
    out = measure_one(launch_trials)
    assert slot.calls == [False, True]  # the repeat on the same server, with no other benchmark beside it
    assert out.repeat_run_id == "run-1" and 0.200 <= (out.p50_s or 0) <= 0.201
    assert "beside ring=2 (2 GPUs)" in (out.reason or "") and slot.revoked is None


def test_a_figure_beside_another_benchmark_that_the_alone_one_disowns_is_replaced_and_overlap_stops(
        runner, monkeypatch):
    launch_trials, slot = beside_runner(runner, monkeypatch, [0.204, 0.180], near=0.203)
    out = measure_one(launch_trials)
    assert slot.calls == [False, True]
    assert out.p50_s == 0.180 and out.repeat_run_id == "run-1" and "alone figure is the one" in (out.reason or "")
    assert slot.revoked and "disagreed" in slot.revoked  # every later benchmark of the tune runs alone


def test_a_figure_beside_another_benchmark_far_from_the_best_so_far_is_kept_and_says_so(runner, monkeypatch):
    launch_trials, slot = beside_runner(runner, monkeypatch, [0.300], near=0.200)
    out = measure_one(launch_trials)
    assert slot.calls == [False] and out.p50_s == 0.300
    assert "beside ring=2 (2 GPUs)" in (out.reason or "") and "not close enough" in (out.reason or "")


def test_a_figure_beside_another_benchmark_a_little_slower_than_the_best_is_measured_again_alone(runner, monkeypatch):
    launch_trials, slot = beside_runner(runner, monkeypatch, [0.215, 0.196], near=0.200)  # company cost it ~9%
    out = measure_one(launch_trials)
    assert slot.calls == [False, True] and out.p50_s == 0.196 and "less than a benchmark beside" in (out.reason or "")
