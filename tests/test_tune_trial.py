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
