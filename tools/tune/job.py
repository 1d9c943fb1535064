"""A tune job: the policy wired to the real trial runner and the ledger, and its result written to the run folder."""

from __future__ import annotations

import threading
from collections.abc import Callable

from omnitune.tools.errors import InvalidRequestError
from omnitune.tools.gpus import detect_gpus
from omnitune.tools.launch import ServeConfig
from omnitune.tools.launch.config import build_argv
from omnitune.tools.launch.launcher import Launcher, quote
from omnitune.tools.plan import Plan, make_plan
from omnitune.tools.search_space import replica_gpus
from omnitune.tools.tune.ledger import Ledger
from omnitune.tools.tune.memory import MemoryModel, model_weights_mib
from omnitune.tools.tune.models import NodeLost, Outcome, TuneRequest, TuneResult
from omnitune.tools.tune.replicas import replicas_of, serve_fields
from omnitune.tools.tune.report import markdown, pareto
from omnitune.tools.tune.trial import LaunchTrials, tune_workload
from omnitune.tools.tune.tuner import Cancelled, Progress, Tuner
from omnitune.tools.workspace import Workspace

Cancel = Callable[[], bool] | threading.Event


def make_tuner(workspace: Workspace, launcher: Launcher, request: TuneRequest, job_id: str,
               progress: Progress | None = None, cancelled: Cancel = lambda: False, notes: list[str] | None = None,
               plan: Plan | None = None) -> Tuner:
    # An Event (the job's) also stops a benchmark in flight at a shutdown or job_cancel, not only between trials.
    event = cancelled if isinstance(cancelled, threading.Event) else None
    is_cancelled: Callable[[], bool] = cancelled.is_set if isinstance(cancelled, threading.Event) else cancelled
    gpus = detect_gpus(workspace.root)
    plan = plan or make_plan(launcher.settings, request.model, request.goal, gpu_report=gpus)
    trials = LaunchTrials(workspace, launcher, request, job_id, event)
    trials.sp_by_hand = plan.sp_by_hand
    throughput = request.goal.objective == "throughput"
    if throughput:  # every trial measured with as many requests in flight as GPUs, and keyed so
        trials.workload = tune_workload(request.workload, fill=plan.gpus)
    ledger = Ledger(workspace, job_id, request, launcher.settings.vllm, [g.name for g in gpus.gpus],
                    workload=trials.workload if throughput else None)
    memory = memory_model(request, plan)
    from omnitune.tools.tune.screen import runner_for  # side by side / on a Ray cluster, where the request allows
    runner = runner_for(trials, ledger, is_cancelled)
    return Tuner(request, plan, runner, ledger, memory=memory, progress=progress, cancelled=is_cancelled,
                 notes=notes)


def memory_model(request: TuneRequest, plan: Plan) -> MemoryModel:
    """Weights from the model folder's safetensors headers (none for a hub id or a folder without weights)."""
    wl = request.workload
    width, height = (int(v) for v in (wl.sizes or ["1024x1024"])[0].split("x"))
    frames = (wl.num_frames or 1) if wl.is_video else 1
    return MemoryModel(model_weights_mib(request.model), plan.gpu_memory_mib, width * height / 1e6, frames,
                       plan.uses_cfg)


def tune_job(workspace: Workspace, launcher: Launcher, request: TuneRequest, job_id: str,
             progress: Progress | None = None, cancelled: Cancel = lambda: False,
             notes: list[str] | None = None) -> TuneResult:
    tuner = make_tuner(workspace, launcher, request, job_id, progress, cancelled, notes)
    check_gpus_alone(launcher, tuner.plan, job_id)
    try:
        best = tuner.run()
    except Cancelled:
        from omnitune.tools.jobs import JobCancelled
        raise JobCancelled() from None
    except NodeLost as exc:  # the job fails, resumable; the fix names this job
        raise NodeLost(exc.trials, job_id) from None
    return finish(workspace, launcher, tuner, job_id, best)


def check_gpus_alone(launcher: Launcher, plan: Plan, job_id: str) -> None:
    """A tune measures alone: GPUs its plan uses that omnitune's own servers hold make it refuse at once."""
    gpus = sorted({g for c in plan.candidates for g in (c.config.get("gpus") or [0])})
    held = [v for v in launcher.holders(gpus) if v.server.data.get("labels", {}).get("tune_job") != job_id]
    if held:
        names = ", ".join(f"{v.server.id} (GPU {sorted(v.server.gpus)}, {v.state})" for v in held)
        raise InvalidRequestError(f"the tune would share GPUs with omnitune servers that hold them: {names}; "
                                  "its measurements would not be alone.",
                                  "stop those servers (stop_server), then start the tune again.")


def command_for(launcher: Launcher, model: str, best: Outcome) -> str:
    """The winner as one line to paste (CUDA_VISIBLE_DEVICES first when it runs on chosen GPUs); replicas as one
    line per replica (its own GPUs and port) and what to put in front of them."""
    replicas = replicas_of(best.config)
    gpus = best.config.get("gpus")
    groups = replica_gpus(gpus or list(range(replicas)), replicas) if replicas > 1 else [gpus]
    lines = []
    for i, group in enumerate(groups):
        config = ServeConfig(model=model, **{**serve_fields(best.config), "gpus": group or None})
        command = quote(["vllm", *build_argv(launcher.settings.vllm, config, model, launcher.settings.serve_host,
                                             8000 + i)[1:]])
        lines.append(f"CUDA_VISIBLE_DEVICES={','.join(map(str, group))} {command}" if group else command)
    if replicas > 1:
        lines.append(f"# {replicas} replicas, one server each (vLLM-Omni 0.30.0 serves one replica per process for "
                     f"this model): spread requests over ports 8000-{8000 + replicas - 1}, each to the replica with "
                     "the fewest in flight, as tune measured them")
        return "\n".join(f"{line} &" if not line.startswith("#") else line for line in lines)
    return lines[0]


def finish(workspace: Workspace, launcher: Launcher, tuner: Tuner, job_id: str, best: Outcome | None) -> TuneResult:
    folder = workspace.runs_dir / job_id
    folder.mkdir(parents=True, exist_ok=True)
    req = tuner.req
    result = TuneResult(model=req.model, winner=best, command=command_for(launcher, req.model, best) if best else None,
                        baseline=tuner.baseline, request_settings=best.request_settings if best else {},
                        candidates=tuner.outcomes, pruned=tuner.plan.pruned, launches=tuner.ledger.launches,
                        gpu_seconds=tuner.ledger.gpu_seconds, notes=[*tuner.notes, *getattr(tuner.runner, "notes", [])],
                        folder=str(folder), timeline=getattr(tuner.runner, "timeline", []))
    result.pareto_png = str(pareto(tuner.outcomes, folder / "pareto.png"))
    report = folder / "report.md"
    report.write_text(markdown(result))
    result.report = str(report)
    (folder / "result.json").write_text(result.model_dump_json(indent=1))
    return result
