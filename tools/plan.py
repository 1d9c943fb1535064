"""``plan``: the guide's decision flowchart applied to this machine's GPUs and the model's capability report.

An ordered list of candidate configurations (baseline, lossless, then lossy if allowed), each with its
reason, the facts it rests on and the gain the guide expects; and every configuration pruned, with why.
Nothing here is measured: ``tune`` measures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from omnitune.tools.errors import InvalidRequestError, OmnituneError, UnregisteredPipeline
from omnitune.tools.gpus import GpuReport, detect_gpus
from omnitune.tools.launch.validate import constraint_violations
from omnitune.tools.search_space import METHOD_KEYS, label, layouts, nvlinked, replica_count
from omnitune.tools.settings import Settings
from omnitune.tools.strict import StrictModel

Stage = Literal["baseline", "lossless", "lossy"]
# What a candidate changes, so the tuner decides on types, never on names.
Kind = Literal["baseline", "single_gpu", "layout", "offload", "sharded", "vae_patch", "cache", "request", "replicas"]
STEP_FRACTIONS = [0.75, 0.5]
TEA_THRESHOLDS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8]
CACHE_DIT_THRESHOLDS = [0.08, 0.12, 0.24, 0.4]
CACHE_LADDERS = [("tea_cache", "rel_l1_thresh", TEA_THRESHOLDS),
                 ("cache_dit", "residual_diff_threshold", CACHE_DIT_THRESHOLDS)]
CACHE_GAINS = {"tea_cache": "~1.5x at 0.1-0.2, ~2x at 0.4-0.8", "cache_dit": "~1.5x at 0.08, ~2x at 0.24"}


class Goal(StrictModel):
    objective: Literal["latency", "throughput"] = Field(
        "latency", description="What 'faster' means. latency: the p50 of one request. throughput: images (or "
        "seconds of video) per second with the GPUs kept busy: the benchmark sends at least as many requests at "
        "once as there are GPUs, and tune also tries replicas (independent servers on disjoint GPUs, requests "
        "spread over them), which raise throughput but not the latency of one request.")
    quality: Literal["lossless", "lossy"] = Field("lossless", description="lossless only, or lossy methods too "
                                                                          "(each gated by compare_outputs).")
    quality_floor: Literal["lossless-equivalent", "acceptable"] = Field(
        "acceptable", description="Worst compare_outputs verdict a lossy candidate may have.")
    vram_limit_mib: int | None = Field(None, gt=0, le=2**24,
                                       description="Per-GPU memory the server may use, MiB (default: all).")
    max_gpus: int | None = Field(None, ge=1, le=1024, description="Use at most this many GPUs.")


class Candidate(BaseModel):
    name: str
    stage: Stage
    kind: Kind = "single_gpu"
    config: dict[str, Any] = Field(description="ServeConfig fields (model excluded).")
    request: dict[str, Any] = Field(
        default_factory=dict,
        description="Request-level settings, measured inside one "
        "server on top of the best configuration (steps_fraction scales the workload's "
        "num_inference_steps).",
    )
    reason: str
    evidence: list[str] = Field(default_factory=list)
    expected_gain: str | None = None


class Pruned(BaseModel):
    name: str
    why: str
    evidence: list[str] = Field(default_factory=list)


class Plan(BaseModel):
    model: str
    gpus: int
    fp8_native: bool | None
    uses_cfg: bool = Field(default=True, description="The pipeline runs classifier-free guidance (or it is unknown).")
    nvlink: bool | None = Field(default=None, description="The GPUs used reach each other over NVLink (None: unknown).")
    gpu_memory_mib: int | None = Field(default=None, description="The smallest used GPU's memory.")
    capability_report: bool = Field(description="False: the capability report was unavailable; support unchecked.")
    sp_by_hand: bool = Field(default=False, description="The model drives sequence parallelism in its own code "
                             "(no _sp_plan): the server's 'SP hooks not applied' warning does not make SP inert.")
    candidates: list[Candidate]
    pruned: list[Pruned]
    notes: list[str] = Field(default_factory=list)


def _status(report: Any, key: str) -> tuple[str, list[str], str]:
    if report is None:
        return "unknown", [], "no capability report"
    m = report.methods.get(key)
    return (m.status, m.evidence, m.notes) if m else ("unknown", [], "not analysed")


def _heads(report: Any) -> int | None:
    for c in getattr(report, "constraints", []) or []:
        if c.kind == "divides" and c.parameter in ("tensor_parallel_size", "ulysses_degree") and c.value:
            return c.value
    return None


def _memory_candidates(n_gpus: int, uses_cfg: bool, allowed: Callable[[str, str], bool],
                       capability: Any) -> list[Candidate]:
    """What tune tries when one GPU is not enough memory: layerwise offload sharded over the SP group
    (vLLM-Omni 0.30.0's distributed layerwise offload), HSDP-sharded DiT weights, and VAE patch parallel
    (decodes in tiles over the layout's GPUs)."""
    out: list[Candidate] = []
    for n in range(2, n_gpus + 1):
        sp = [lay for lay in layouts(n, uses_cfg) if "tensor_parallel_size" not in lay and "usp" in lay]
        for lay in sp:
            if not all(allowed(METHOD_KEYS[k], label(lay)) for k in lay) or (capability is not None and any(
                    _status(capability, METHOD_KEYS[k])[0] == "unknown" for k in lay)) \
                    or constraint_violations(capability, lay):
                continue
            if allowed("layerwise_offload", "layerwise offload"):
                out.append(Candidate(name=f"{label(lay)} + layerwise offload ({n} GPUs)", stage="lossless",
                                     kind="offload", config={**lay, "enable_layerwise_offload": True,
                                                             "gpus": list(range(n))},
                                     reason="distributed layerwise offload shards the weights over the SP group: "
                                            "fits where one GPU cannot, and the layout still divides the work",
                                     evidence=_status(capability, "layerwise_offload")[1], expected_gain="fits"))
            if allowed("hsdp", "HSDP"):
                out.append(Candidate(name=f"{label(lay)} + HSDP ({n} GPUs)", stage="lossless", kind="sharded",
                                     config={**lay, "use_hsdp": True, "gpus": list(range(n))},
                                     reason="HSDP shards the DiT weights over the layout's GPUs",
                                     evidence=_status(capability, "hsdp")[1], expected_gain="fits"))
    if allowed("vae_patch_parallel", "VAE patch parallel"):
        out.append(Candidate(name="VAE patch parallel", stage="lossless", kind="vae_patch", config={},
                             reason="decodes the VAE in patches over the best layout's GPUs (tried on top of it)",
                             evidence=_status(capability, "vae_patch_parallel")[1],
                             expected_gain="less VAE time and memory on large outputs"))
    return out


def _replica_candidates(goal: Goal, n_gpus: int, best_single: dict, layout_cands: list[Candidate],
                        pruned: list[Pruned]) -> list[Candidate]:
    """Throughput only: as many replicas as fit of the one-GPU recipe and of each layout (k GPUs -> n // k
    replicas; fewer would leave GPUs idle). Each replica is its own server (vLLM-Omni 0.30.0 runs one replica per
    process for a generic diffusion model: search_space.py); tune fills in the per-replica configuration it
    measured best at that width."""
    if goal.objective != "throughput":
        pruned.append(Pruned(name="replicas", why="replicas raise throughput, not the latency of one request "
                                                  "(goal.objective is latency)"))
        return []
    if n_gpus < 2:
        pruned.append(Pruned(name="replicas", why=f"{n_gpus} GPU(s): no room for a second replica"))
        return []
    out = [Candidate(name=f"{n_gpus} replicas x one GPU ({n_gpus} GPUs)", stage="lossless", kind="replicas",
                     config={**best_single, "replicas": n_gpus, "gpus": list(range(n_gpus))},
                     reason="independent servers, one per GPU, requests spread over them: throughput scales with "
                            "the replicas, each request's latency stays the one-GPU latency",
                     expected_gain=f"up to ~{0.95 * n_gpus:.1f}x throughput (3.83x on 4 GPUs in vLLM-Omni #4707)")]
    for c in layout_cands:
        k = len(c.config["gpus"])
        r = replica_count(n_gpus, k)
        if r < 2:
            continue
        out.append(Candidate(name=f"{r} replicas x {c.name.rsplit(' (', 1)[0]} ({r * k} GPUs)", stage="lossless",
                             kind="replicas", config={**c.config, "replicas": r, "gpus": list(range(r * k))},
                             reason=f"{r} servers of {k} GPUs each: the layout's speed-up per request, times the "
                                    "replicas for throughput", evidence=c.evidence,
                             expected_gain=f"~{r * 0.95:.1f}x the layout's throughput"))
    return out


def request_candidates(capability: Any, pruned: list[Pruned]) -> list[Candidate]:
    """Steps and guidance: set per request, so tune measures them inside one server (no relaunch).

    Guidance changes compute only by switching classifier-free guidance off (a scale <= 1 skips the
    unconditional pass), so that is the one guidance setting worth timing; other scales only move the pixels.
    """
    out = [
        Candidate(
            name=f"fewer steps ({fraction:.0%})",
            stage="lossy",
            kind="request",
            config={},
            request={"steps_fraction": fraction},
            expected_gain=f"~{1 / fraction:.2f}x on the DiT",
            reason="request-level, swept gentle to aggressive, stops at the quality cliff",
        )
        for fraction in STEP_FRACTIONS
    ]
    uses_cfg = getattr(capability, "uses_cfg", None)
    if uses_cfg is False:
        pruned.append(
            Pruned(
                name="guidance off", why="the pipeline runs no classifier-free guidance: guidance changes no compute"
            )
        )
    else:
        out.append(
            Candidate(
                name="guidance off",
                stage="lossy",
                kind="request",
                config={},
                request={"guidance_scale": 1.0, "true_cfg_scale": 1.0},
                expected_gain="~2x on the DiT",
                reason="a scale <= 1 skips CFG's unconditional pass; pictures change, so the quality "
                "gate decides" + ("" if uses_cfg else " (CFG use unknown: measured)"),
            )
        )
    return out


def model_capability(settings: Settings, model: str, serve: bool = False) -> tuple[Any, str | None]:
    """The model's capability report, or why there is none (vllm-omni not found, ...).

    A model that does not exist, lies outside the model roots or names a pipeline the installed vLLM-Omni does
    not register is refused here (raises), before anything is planned or launched; with ``serve`` a bare
    pipeline class name is refused too (it names code, not weights `vllm serve` can load).
    """
    from omnitune.tools.capabilities import inspect_model
    from omnitune.tools.capabilities.models import resolve_model
    resolved = resolve_model(settings, model)
    try:
        report, error = inspect_model(settings, model), None
    except UnregisteredPipeline:
        raise
    except OmnituneError as exc:
        report, error = None, str(exc)
    if serve and not resolved.launchable:
        raise InvalidRequestError(f"{model!r} is a pipeline class name: there are no weights to serve.",
                                  "pass the model's folder (holding model_index.json) or its Hugging Face id.")
    return report, error


def make_plan(
    settings: Settings,
    model: str,
    goal: Goal,
    gpu_report: GpuReport | None = None,
    capability: Any = None,
    capability_error: str | None = None,
) -> Plan:
    if capability is None and capability_error is None:
        capability, capability_error = model_capability(settings, model)
    report = gpu_report or detect_gpus(settings.workspace)
    gpus = list(report.gpus)
    n_gpus = min(len(gpus), goal.max_gpus or len(gpus))
    fp8_native = all(g.fp8_native for g in gpus[: max(n_gpus, 1)]) if gpus else None
    uses_cfg = getattr(capability, "uses_cfg", None) is not False  # unknown: CFG layouts are measured
    heads = _heads(capability)
    cands: list[Candidate] = [
        Candidate(
            name="baseline",
            stage="baseline",
            kind="baseline",
            config={"enforce_eager": True, "gpus": [0]},
            reason="the guide's baseline: eager, one GPU, no cache",
        )
    ]
    pruned: list[Pruned] = []
    notes = [f"capability report unavailable ({capability_error}): support not checked"] if capability_error else []
    if goal.vram_limit_mib:
        notes.append(
            f"memory limit {goal.vram_limit_mib} MiB per GPU: tune rejects a candidate whose measured peak "
            "is over it (over_memory), and a baseline over it is retried with offload"
        )

    def allowed(key: str, label: str) -> bool:
        status, ev, why = _status(capability, key)
        if status in ("unsupported", "rejected"):
            if any(p.name == label for p in pruned):
                return False
            pruned.append(Pruned(name=label, why=f"{key} is {status}: {why}", evidence=ev))
            return False
        return True

    single = {"gpus": [0]}
    cands.append(
        Candidate(
            name="compile",
            stage="lossless",
            config=dict(single),
            reason="torch.compile (regional) is on by default; the first request per shape compiles",
            evidence=_status(capability, "regional_compile")[1],
            expected_gain="1.1-1.3x",
        )
    )
    best_single = dict(single)
    if allowed("fp8", "fp8"):
        gain = (
            "1.3-1.5x, half the DiT weight memory" if fp8_native else "memory only (weight-only fallback below SM 8.9)"
        )
        cands.append(
            Candidate(
                name="compile+fp8",
                stage="lossless",
                config={**single, "quantization": "fp8"},
                reason="FP8 DiT weights",
                evidence=_status(capability, "fp8")[1],
                expected_gain=gain,
            )
        )
        best_single = {**single, "quantization": "fp8"}
    nvlink = nvlinked(report, n_gpus) if n_gpus > 1 else None
    for n in range(2, n_gpus + 1):
        for layout in layouts(n, uses_cfg):
            name = label(layout)
            tp = layout.get("tensor_parallel_size", 1)
            if not all(allowed(METHOD_KEYS[k], name) for k in layout):
                continue
            unknown = [k for k in layout if capability is not None
                       and _status(capability, METHOD_KEYS[k])[0] == "unknown"]
            if unknown:
                pruned.append(Pruned(name=f"{name} ({n} GPUs)", why=f"the capability report cannot vouch for "
                                     f"{', '.join(METHOD_KEYS[k] for k in unknown)} with this model"))
                continue
            if heads and tp > 1 and heads % tp:
                why = f"tensor_parallel_size does not divide {heads} heads"
                pruned.append(Pruned(name=f"{name} ({n} GPUs)", why=why))
                continue
            broken = constraint_violations(capability, layout)
            if broken:  # the launch gate would refuse it: never proposed
                pruned.append(Pruned(name=f"{name} ({n} GPUs)", why=broken[0][0]))
                continue
            if tp > 1 and nvlink is False:
                pruned.append(Pruned(name=f"{name} ({n} GPUs)", why="tensor parallelism all-reduces every layer: "
                                     "across PCIe (no NVLink between these GPUs) it costs more than it gives"))
                continue
            cands.append(Candidate(
                name=f"{name} ({n} GPUs)", stage="lossless", kind="layout",
                config={**best_single, **layout, "gpus": list(range(n))},
                reason="CFG parallel x Ulysses beats pure Ulysses for CFG models" if "cfg_parallel_size" in layout
                else f"sequence/tensor parallel over {n} GPUs",
                evidence=[e for k in layout for e in _status(capability, METHOD_KEYS[k])[1]][:4],
                expected_gain=f"up to ~{0.8 * n:.1f}x on the DiT"))
    if n_gpus < 2:
        pruned.append(Pruned(name="multi-GPU layouts", why=f"{len(gpus)} GPU(s) available"))
    else:
        cands += _memory_candidates(n_gpus, uses_cfg, allowed, capability)
    cands += _replica_candidates(goal, n_gpus, best_single, [c for c in cands if c.kind == "layout"], pruned)
    vae = {"vae_use_slicing": True, "vae_use_tiling": True}
    for key, name, cfg in (("layerwise_offload", "layerwise offload", {"enable_layerwise_offload": True}),
                           ("cpu_offload", "model-level offload", {"enable_cpu_offload": True})):
        if allowed(key, name):
            cands.append(Candidate(name=name, stage="lossless", kind="offload", config={**single, **cfg, **vae},
                                   reason="only when the model does not fit (tune tries it after an out-of-memory)",
                                   evidence=_status(capability, key)[1], expected_gain="fits; layerwise nearly free"))
    if goal.quality == "lossy":
        backends = [(b, k, v) for b, k, v in CACHE_LADDERS if allowed(b, b)]
        if not backends:
            notes.append("no cache backend is supported for this model: no lossy stage")
        for backend, key, values in backends:
            cands += [Candidate(name=f"{backend} {v}", stage="lossy", kind="cache",
                                config={"cache_backend": backend, "cache_config": {key: v}},
                                reason="swept gentle to aggressive on top of the best lossless configuration; stops "
                                       "at the quality cliff, then bisects between the last pass and the first fail",
                                evidence=_status(capability, backend)[1], expected_gain=CACHE_GAINS[backend])
                      for v in values]
        cands += request_candidates(capability, pruned)
    else:
        pruned.append(Pruned(name="lossy methods", why="quality policy is lossless"))
    return Plan(
        model=model,
        gpus=n_gpus,
        fp8_native=fp8_native,
        uses_cfg=uses_cfg,
        nvlink=nvlink,
        gpu_memory_mib=min((g.memory_total_mib for g in gpus[: max(n_gpus, 1)] if g.memory_total_mib), default=None),
        capability_report=capability is not None,
        sp_by_hand=any(getattr(capability.methods.get(k), "via", None) == "model_code"
                       for k in ("ulysses_sp", "ring_sp")) if capability is not None else False,
        candidates=cands,
        pruned=pruned,
        notes=notes,
    )
