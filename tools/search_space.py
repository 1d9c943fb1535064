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
