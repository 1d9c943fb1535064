"""What a tune takes and gives: the request, one outcome per candidate, and the result."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from omnitune.tools.benchmark import Workload
from omnitune.tools.errors import OmnituneError
from omnitune.tools.plan import Goal, Kind, Pruned
from omnitune.tools.strict import StrictModel
from omnitune.tools.tune.parallel import Placement

ACCEPT = {
    "lossless": ("identical", "lossless-equivalent"),
    "lossless-equivalent": ("identical", "lossless-equivalent"),
    "acceptable": ("identical", "lossless-equivalent", "acceptable"),
}
Status = Literal[
    "measured",
    "reused",
    "failed",
    "rejected_quality",
    "over_memory",
    "inert",
    "within_noise",
    "skipped_budget",
    "not_needed",
    "skipped_memory",
]
# Why a candidate failed or was not launched (typed: decisions never read the human-readable reason).
Cause = Literal[
    "refused",
    "out_of_memory",
    "out_of_memory_request",
    "crashed",
    "timeout",
    "no_measurement",
    "launch_gate",
    "predicted_out_of_memory",
    "budget",
    "node_lost",
]


class TuneRequest(StrictModel):
    model: str
    workload: Workload = Field(
        default_factory=lambda: Workload.model_validate({"sizes": ["1024x1024"], "measured": 4, "warmup": 1})
    )
    goal: Goal = Field(default_factory=lambda: Goal.model_validate({}))
    max_launches: int = Field(default=20, ge=1, le=200, description="Budget: server launches (reused runs are free).")
    max_gpu_seconds: float | None = Field(
        default=None, gt=0, le=1e9, description="Budget: GPU-seconds (launch + benchmark x GPUs)."
    )
    max_parallel_trials: int | None = Field(
        default=None, ge=1, le=64, description="Trials running at once on disjoint GPU sets of this host (never two "
        "on one GPU), the next stage's likely candidates started ahead on GPUs the search leaves idle; launches "
        "overlap, benchmarks run one at a time. None (default): as many as the free GPUs allow; 1: one trial at a "
        "time. With OMNITUNE_RAY_ADDRESS set, trials run as Ray tasks on the cluster's nodes whatever this says.")


class Outcome(BaseModel):
    name: str
    stage: str
    status: Status
    config: dict[str, Any]
    kind: Kind = "single_gpu"
    cause: Cause | None = Field(default=None, description="Why it failed or was not launched (None: it was measured).")
    reason: str | None = None
    run_id: str | None = None
    p50_s: float | None = None
    throughput: float | None = None
    peak_memory_mib: float | None = Field(
        default=None,
        description="Most GPU memory the server used on any of its GPUs "
        "(NVML, above the level before its launch, warm-up too).",
    )
    verdict: str | None = None
    psnr_db_mean: float | None = None
    speedup_vs_baseline: float | None = None
    gpu_seconds: float = 0.0
    std_s: float | None = None
    p50_se_s: float | None = Field(
        default=None,
        description="Standard error of p50 (1.25 x 1.48 MAD / sqrt(n), robust to "
        "a stalled request); decides what is within the noise.",
    )
    repeat_run_id: str | None = Field(
        default=None,
        description="Second measurement on the same server, taken when the first was within the "
        "spread of the best so far or too noisy to decide on (p50s then pooled by inverse variance).",
    )
    request_settings: dict[str, Any] = Field(
        default_factory=dict, description="Request-level settings (steps, guidance) measured inside one server."
    )
    resumed: bool = Field(default=False, description="Taken from this job's own records when it was resumed.")
    estimate_mib: float | None = Field(
        default=None,
        description="Per-GPU memory estimated before launching (weights from "
        "the model's safetensors headers + activations).",
    )
    gpus: list[int] = Field(default_factory=list, description="Physical GPUs the trial ran on.")
    launched: bool = Field(
        default=False, description="This outcome's trial started a server process (counts in the budget)."
    )
    started_at: float | None = Field(default=None, description="Wall-clock start of the trial (epoch seconds).")
    ended_at: float | None = None
    vae_share: float | None = Field(default=None, description="Share of the server-reported time in VAE decode.")
    server_warnings: list[str] = Field(default_factory=list, description="What the server log said it ignored.")


class TuneResult(BaseModel):
    model: str
    winner: Outcome | None
    command: str | None = Field(description="The winning `vllm serve` command (replicas: one line per replica, "
                                "each on its own GPUs and port, then how to spread requests over them).")
    request_settings: dict[str, Any] = Field(default_factory=dict, description="Send these with each request too.")
    baseline: Outcome | None
    candidates: list[Outcome]
    pruned: list[Pruned]
    launches: int
    gpu_seconds: float
    notes: list[str] = Field(default_factory=list)
    report: str | None = Field(default=None, description="Markdown report path.")
    pareto_png: str | None = None
    folder: str
    timeline: list[Placement] = Field(default_factory=list, description="Where (node, GPUs) and when each trial "
                                      "launched side by side or on a cluster ran.")


class Cancelled(Exception):
    """Raised between trials when the job is cancelled (the caller maps it to its job state)."""


class NodeLost(OmnituneError):
    """A Ray node died while trials ran on it: their outcomes are recorded as failed (node_lost) and the tune stops
    after the batch, resumable. Continuing would decide on a stage whose measurement is missing; a resume re-runs
    only the lost trials (a ``node_lost`` record is never replayed) on the nodes left."""

    def __init__(self, trials: list[str], job_id: str | None = None) -> None:
        self.trials = trials
        super().__init__(
            f"interrupted: a Ray node was lost while {', '.join(trials)} ran on it (recorded as failed, node_lost); "
            "every other result so far is recorded.",
            f"tune_start(resume={job_id!r}) continues on the nodes left and re-runs only "
            f"{'that trial' if len(trials) == 1 else 'those trials'} (add a node first to keep the width)."
            if job_id else "resume the tune job (tune_start(resume=<job id>)).")
