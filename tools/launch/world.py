"""How many GPUs a configuration really uses: the rules of vLLM-Omni 0.30.0's ``DiffusionParallelConfig``.

``diffusion/data.py``: world = pp x dp x tp x sp x cfg, with sp = ulysses x ring (or the all-gather degree);
dp here is in-engine data parallel (its ranks share each request), not replicas (``search_space.py``);
HSDP alone needs an explicit shard size (``Cannot auto-calculate hsdp_shard_size``) and then sets the world
to replicate x shard; ``--num-gpus`` fixes the world and infers dp (``resolve_data_parallel_size``).
The typed fields hold the guide's degrees; ``extra_flags`` may add the rest, so both are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from omnitune.tools.launch.config import ServeConfig

# Every spelling of the parallel flags extra_flags may carry -> DiffusionParallelConfig field.
WORLD_FLAGS = {
    "--num-gpus": "num_gpus", "--data-parallel-size": "data_parallel_size", "-dp": "data_parallel_size",
    "--pipeline-parallel-size": "pipeline_parallel_size", "-pp": "pipeline_parallel_size",
    "--hsdp-shard-size": "hsdp_shard_size", "--hsdp-replicate-size": "hsdp_replicate_size",
    "--allgather-degree": "allgather_degree",
}


@dataclass
class World:
    size: int | None          # None: the engine refuses the combination (see problem)
    formula: str
    problem: str | None = None
    fix: str | None = None
    warning: str | None = None


def dp_warning(dp: int, config: ServeConfig) -> str | None:
    """In-engine DP is not replicas in 0.30.0: every DP rank runs the same request (multiproc_executor.py:620-640),
    unless layerwise offload distributed over the ranks gives each its own (diffusion_engine.py:379-395)."""
    if dp <= 1 or config.enable_layerwise_offload:
        return None
    return (f"data parallel {dp} inside one vLLM-Omni 0.30.0 server runs each request on all {dp} DP ranks at once "
            "(only layerwise offload distributed over them gives each rank its own request): the GPUs serve no "
            "more requests; for throughput run replicas (tune with goal.objective 'throughput')")


def _int(value: object, default: int) -> int:
    try:
        return int(str(value)) if not isinstance(value, bool) else default
    except ValueError:
        return default


def world(config: ServeConfig) -> World:
    extra = {WORLD_FLAGS[k]: _int(v, 0) for k, v in config.extra_flags.items() if k in WORLD_FLAGS}
    pp, dp = extra.get("pipeline_parallel_size", 1) or 1, extra.get("data_parallel_size")
    allgather = extra.get("allgather_degree", 1) or 1
    if allgather > 1 and (config.usp > 1 or config.ring > 1):
        return World(None, "", f"--allgather-degree {allgather} cannot be combined with usp/ring (vLLM-Omni: "
                                "AllGather-KV is mutually exclusive with Ulysses/Ring)",
                     "use either all-gather or usp/ring")
    sp = allgather if allgather > 1 else config.usp * config.ring
    tp, cfg = config.tensor_parallel_size, config.cfg_parallel_size
    other = pp * (dp or 1) * tp * sp * cfg
    parts = [f"usp {config.usp}", f"ring {config.ring}", f"cfg {cfg}", f"tp {tp}"]
    parts += [f"allgather {allgather}"] if allgather > 1 else []
    parts += [f"pp {pp}"] if pp > 1 else []
    parts += [f"dp {dp}"] if dp and dp > 1 else []
    formula = " x ".join(parts)
    size = other
    if config.use_hsdp:
        shard, replicate = extra.get("hsdp_shard_size", -1) or -1, extra.get("hsdp_replicate_size", 1) or 1
        bad = [n for n, on in (("TP", tp > 1), ("DP", (dp or 1) > 1), ("PP", pp > 1),
                               ("EP", config.enable_expert_parallel)) if on]
        if bad:
            return World(None, formula, f"HSDP cannot be combined with {', '.join(bad)} (vLLM-Omni: HSDP (FSDP2) is "
                                        f"not compatible with {', '.join(bad)})", "drop use_hsdp or the other method")
        if shard == -1:
            if other == 1:
                return World(None, formula, "use_hsdp alone fails at start in vLLM-Omni (Cannot auto-calculate "
                                            "hsdp_shard_size when other parallelism is all 1)",
                             "add extra_flags {'--hsdp-shard-size': N} (N GPUs), or combine HSDP with usp/ring/cfg")
            if other % replicate:
                return World(None, formula, f"hsdp replicate size {replicate} does not divide the world size {other}",
                             "choose a replicate size that divides it")
        elif other == 1:
            size, formula = replicate * shard, f"hsdp replicate {replicate} x shard {shard}"
        elif replicate * shard != other:
            return World(None, formula, f"HSDP dimensions ({replicate} x {shard} = {replicate * shard}) must equal "
                                        f"the world size from the other parallelism ({other})",
                         "make replicate x shard equal the product of the parallel degrees")
    gpus = extra.get("num_gpus")
    if gpus:
        non_dp = pp * tp * sp * cfg
        if config.use_hsdp and gpus != size:
            return World(None, formula, f"--num-gpus {gpus} must equal the HSDP size {size}", "make them equal")
        if not config.use_hsdp:
            if gpus % non_dp:
                return World(None, formula, f"--num-gpus {gpus} is not divisible by the non-data-parallel size "
                                            f"{non_dp}", f"use a multiple of {non_dp}")
            if dp is not None and dp != gpus // non_dp:
                return World(None, formula, f"--data-parallel-size {dp} does not match --num-gpus {gpus} / {non_dp}",
                             "drop one of them")
        size, formula = gpus, f"--num-gpus {gpus} ({formula} x dp {gpus // non_dp})"
        dp = gpus // non_dp if not config.use_hsdp else 1
    return World(size, formula, warning=dp_warning(dp or 1, config))
