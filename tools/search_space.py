"""The parallel layouts vLLM-Omni 0.30.0 offers on n GPUs: every valid product cfg x usp x ring x tp = n.

World size = cfg_parallel_size x ulysses x ring x tensor_parallel (DiffusionParallelConfig); CFG parallel is
1 or 2 and only does work for a pipeline that runs classifier-free guidance; TP must divide the DiT's heads.
Nothing here is measured or ranked: plan lists, tune ranks by its cost model.
"""

from __future__ import annotations

from omnitune.tools.gpus import GpuReport

DIMENSIONS = ("cfg_parallel_size", "usp", "ring", "tensor_parallel_size")  # the label's order
METHOD_KEYS = {"usp": "ulysses_sp", "ring": "ring_sp", "cfg_parallel_size": "cfg_parallel",
               "tensor_parallel_size": "tensor_parallel"}


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def layouts(n: int, uses_cfg: bool) -> list[dict[str, int]]:
    """Every cfg x usp x ring x tp product equal to n (degrees of 1 left out), CFG-parallel ones first for CFG
    models (the guide's tip), then fewer dimensions first (less communication)."""
    out: list[dict[str, int]] = []
    for cfg in ((2, 1) if uses_cfg and n % 2 == 0 else (1,)):
        rest = n // cfg
        for usp in divisors(rest):
            for ring in divisors(rest // usp):
                tp = rest // usp // ring
                degrees = {"cfg_parallel_size": cfg, "usp": usp, "ring": ring, "tensor_parallel_size": tp}
                layout = {k: v for k, v in degrees.items() if v > 1}
                if layout:
                    out.append(layout)
    return sorted(out, key=lambda lay: ("cfg_parallel_size" not in lay, len(lay), -lay.get("usp", 1),
                                        -lay.get("ring", 1)))


def label(layout: dict[str, int]) -> str:
    return "x".join(f"{k}={layout[k]}" for k in DIMENSIONS if k in layout)


def nvlinked(report: GpuReport, n: int) -> bool | None:
    """Whether GPUs 0..n-1 all reach each other over NVLink (None: the links are not known)."""
    pairs = [link for link in report.links if link.a < n and link.b < n]
    if not pairs:
        return None
    return all(link.nvlink for link in pairs)


# -- replicas (throughput) ---------------------------------------------------------------------------------
# vLLM-Omni 0.30.0 serves a generic diffusion model (no registered Omni pipeline: Qwen-Image, Z-Image, Wan T2V...)
# as ONE replica per `vllm serve`. Replica DP is a stage's ``runtime.num_replicas`` (engine/stage_init_utils.py:931,
# split_devices_for_replicas), but the generic builder drops it from a deploy YAML or --stage-overrides
# (config/config_factory.py:678 keeps only OmniDiffusionConfig fields, :772 builds its own DeployConfig;
# 0.32.0rc1 passes it on, config_factory.py:790-792); ``--data-parallel-size`` is in-engine DP whose ranks all run
# the same request (diffusion_engine.py:379-395, diffusion/executor/multiproc_executor.py:620-640) unless layerwise
# offload is distributed over them. So N replicas are N independent servers, each on its own GPUs, with requests
# spread over them.


def replica_count(n_gpus: int, per_replica: int) -> int:
    """Most replicas of a ``per_replica``-GPU configuration on ``n_gpus`` (fewer only leave GPUs idle)."""
    return n_gpus // max(1, per_replica)


def replica_gpus(gpus: list[int], replicas: int) -> list[list[int]]:
    """The GPU set of each replica: consecutive equal slices (replica r gets gpus[r*k:(r+1)*k])."""
    k = len(gpus) // max(1, replicas)
    if replicas < 1 or k < 1 or k * replicas != len(gpus):
        raise ValueError(f"{len(gpus)} GPUs do not split into {replicas} equal replicas")
    return [gpus[r * k:(r + 1) * k] for r in range(replicas)]
