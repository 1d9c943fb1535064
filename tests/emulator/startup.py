"""What `vllm serve MODEL --omni` decides before any worker starts, as the real vLLM-Omni 0.30.0 does.

Three steps, each as the real one: argparse (``flags.parse``, exit 2), ``OmniServeCommand.validate`` (ValueError,
exit 1), and the diffusion config build (the engine-args projection and ``DiffusionParallelConfig`` in the API
server process; ``OmniDiffusionConfig`` and the device count inside the orchestrator, whose failures the real
server re-raises as ``RuntimeError: Orchestrator initialization failed: ...``). Model-specific refusals that the
real engine raises only while loading on a GPU stay in ``world.check_startup``.

Recorded against the real stack in ``reference/vllm-omni-0.30.0/real-answers.json``;
``tests/test_emulator_real_contract.py`` runs the same cases through both so they cannot drift.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from tests.emulator import flags
from tests.emulator import world as w

# vllm_omni/quantization/factory.py: SUPPORTED_QUANTIZATION_METHODS in 0.30.0 (the real refusal lists them).
QUANTIZATION_METHODS = [
    "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "modelopt_mxfp8",
    "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "humming", "compressed-tensors",
    "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online",
    "fp8_per_tensor", "fp8_per_block", "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8",
    "int8", "bitsandbytes", "mxfp4_dualscale", "svdquant", "auto-round", "auto_round", "torchao_float8_weight_only"]


class StartupError(Exception):
    """A refusal before serving. ``where``: "main" (raised in the API server process, the log ends with it) or
    "orchestrator" (raised during stage init: the log ends with ``Orchestrator initialization failed: ...``)."""

    def __init__(self, text: str, where: str = "main", stage: str = "config") -> None:
        super().__init__(text)
        self.text, self.where, self.stage = text, where, stage


@dataclass
class Verdict:
    """What the real CLI would do with an argv: ``stage`` is where it stops ("ok": it would serve)."""
    stage: str                                   # parse | validate | config | load | ok
    exit_code: int | None = None
    error: str | None = None                     # the exception line(s) or argparse's stderr
    where: str = "main"
    ns: argparse.Namespace | None = None
    cfg: w.Config | None = None
    warnings: list[str] = field(default_factory=list)


class Invalid(StartupError):
    """OmniServeCommand.validate's refusal: a ValueError before anything is built."""

    def __init__(self, text: str) -> None:
        super().__init__(text, "main", "validate")


def pydantic_error(model: str, message: str) -> str:
    """A pydantic ValidationError for a model validator's ValueError, as pydantic 2.14 prints it."""
    return (f"ValidationError: 1 validation error for {model}\n  Value error, {message} [type=value_error, "
            "input_value=ArgsKwargs((), {...}), input_type=ArgsKwargs]\n"
            "    For further information visit https://errors.pydantic.dev/2.14/v/value_error")


def validate(ns: argparse.Namespace) -> None:
    """OmniServeCommand.validate (vllm_omni/entrypoints/cli/serve.py) for the flags a launch can carry.

    Its ban on ``--data-parallel-size``/``--enable-expert-parallel`` reads ``args._cli_explicit_keys``, which
    nothing sets in 0.30.0, so it never fires: both are accepted (DP then counts in the world size).
    """
    model = ns.model_tag if ns.model_tag is not None else ns.model if ns.model != _default("model") else None
    if ns.stage_id is not None and (ns.omni_master_address is None or ns.omni_master_port is None):
        raise Invalid("ValueError: --stage-id requires both --omni-master-address and --omni-master-port to be set")
    if ns.omni and (model is None or not str(model).strip()):
        raise Invalid(
            "ValueError: `vllm serve --omni` requires an explicit model. Pass it positionally (`vllm serve <model> "
            "--omni`) or via `--model`. `--deploy-config` carries per-stage engine args only and does not supply a "
            "model; without an explicit model, vLLM's default (Qwen/Qwen3-0.6B) is selected and routed into the "
            "diffusion stage, which fails with a confusing diffusion-registry error.")
    if ns.omni_replica_address is not None and not ns.headless:
        raise Invalid("ValueError: --omni-replica-address requires --headless to be set")
    count = ns.api_server_count
    if count is not None and count < 1 and not ns.headless:
        raise Invalid("ValueError: --api-server-count must be >= 1 unless --headless is set")
    if ns.headless and count is not None and count > 0:
        raise Invalid("ValueError: --api-server-count cannot be used with --headless")
    if ns.omni_dp_size_local is not None and ns.omni_dp_size_local < 1:
        raise Invalid(f"ValueError: --omni-dp-size-local must be >= 1, got {ns.omni_dp_size_local}")
    if ns.omni_dp_size_local not in (None, 1) and ns.stage_id is None:
        raise Invalid("ValueError: --omni-dp-size-local != 1 requires --stage-id to be set")
    if ns.lora_backend == "distill" and not ns.lora_path:
        raise Invalid("ValueError: --lora-backend distill requires --lora-path")
    if ns.omni_heartbeat_timeout is not None and ns.omni_heartbeat_timeout <= 0:
        raise Invalid(f"ValueError: --omni-heartbeat-timeout must be > 0, got {ns.omni_heartbeat_timeout}")


def _default(dest: str):
    return next((a["default"] for a in flags.actions() if a["dest"] == dest), None)


def check_config(ns: argparse.Namespace, cfg: w.Config) -> None:
    """The real diffusion config build: engine-args projection, DiffusionParallelConfig, OmniDiffusionConfig."""
    if ns.quantization and ns.diffusion_quantization_config is not None:
        raise StartupError("ValueError: Diffusion config fields 'quantization' and 'quantization_config' cannot "
                           "both be provided.")
    if ns.quantization and ns.quantization.strip().lower() not in QUANTIZATION_METHODS:
        raise StartupError(pydantic_error("_DiffusionConfigProjection", f"Unknown quantization method: "
                                          f"{ns.quantization!r}. Supported: {QUANTIZATION_METHODS}"))
    for name, value in (("Ulysses degree", cfg.usp), ("Ring degree", cfg.ring), ("CFG parallel size", cfg.cfg),
                        ("VAE patch parallel size", cfg.vae_patch)):
        if value <= 0:
            raise StartupError(f"ValidationError: 1 validation error for DiffusionParallelConfig\n  Assertion failed, "
                               f"{name} must be > 0")
    problem = hsdp_problem(cfg)
    if problem:
        raise StartupError(pydantic_error("DiffusionParallelConfig", problem))
    if getattr(ns, "num_gpus", None):  # OmniDiffusionConfig: resolve_data_parallel_size(num_gpus)
        resolve_num_gpus(cfg, int(ns.num_gpus))
    if cfg.compile_full:  # OmniDiffusionConfig.__post_init__, inside the orchestrator
        offload = "layerwise offload" if cfg.layerwise else "CPU offload" if cfg.cpu_offload else None
        blockers = [name for name, on in (("HSDP", cfg.hsdp), ("sequence parallelism", cfg.usp * cfg.ring > 1),
                                          (offload, offload is not None)) if on]
        if blockers:
            raise StartupError("ValueError: diffusion_compile_granularity='full' is incompatible with "
                               f"{', '.join(str(b) for b in blockers)}; use 'regional' compilation instead",
                               "orchestrator")


def resolve_num_gpus(cfg: w.Config, num_gpus: int) -> None:
    """DiffusionParallelConfig.resolve_data_parallel_size: ``--num-gpus`` is the world; DP fills what is left."""
    def refuse(message: str) -> StartupError:
        return StartupError(f"ValueError: {message}", "orchestrator")
    if num_gpus <= 0:
        raise refuse(f"WORLD size must be > 0, but got {num_gpus}")
    if cfg.hsdp:
        if cfg.dp != 1:
            raise refuse("HSDP (FSDP2) requires data_parallel_size to be 1")
        shard = cfg.hsdp_shards
        if num_gpus != cfg.hsdp_replicate * shard:
            raise refuse(f"WORLD size ({num_gpus}) must equal HSDP size ({cfg.hsdp_replicate} x {shard} = "
                         f"{cfg.hsdp_replicate * shard})")
        return
    non_dp = cfg.pp * cfg.tp * cfg.usp * cfg.ring * cfg.cfg
    if num_gpus % non_dp:
        raise refuse(f"WORLD size ({num_gpus}) must be divisible by non-DP parallel size ({non_dp})")
    if cfg.dp != 1 and cfg.dp != num_gpus // non_dp:  # an explicit -dp 1 is indistinguishable from the default here
        raise refuse(f"data_parallel_size ({cfg.dp}) does not match WORLD-derived value ({num_gpus // non_dp})")
    cfg.dp = num_gpus // non_dp


def hsdp_problem(cfg: w.Config) -> str | None:
    """DiffusionParallelConfig.__post_init__'s HSDP rules (diffusion/data.py)."""
    if not cfg.hsdp:
        return None
    incompatible = [name for name, on in (("TP", cfg.tp > 1), ("DP", cfg.dp > 1), ("PP", cfg.pp > 1)) if on]
    if incompatible:
        return "HSDP (FSDP2) is not compatible with " + ", ".join(incompatible)
    other = cfg.parallel_world
    if cfg.hsdp_shard == -1:
        if cfg.hsdp_replicate <= 0:
            return "hsdp_replicate_size must be > 0"
        if other == 1:
            return ("Cannot auto-calculate hsdp_shard_size when other parallelism is all 1. "
                    "Please specify hsdp_shard_size explicitly for standalone HSDP.")
        if other % cfg.hsdp_replicate:
            return (f"Invalid HSDP configuration: replicate_size ({cfg.hsdp_replicate}) must evenly divide "
                    f"world_size ({other}) when shard_size is -1.")
    elif other != 1 and cfg.hsdp_shard * cfg.hsdp_replicate != other:
        return (f"HSDP dimensions ({cfg.hsdp_replicate} × {cfg.hsdp_shard} = {cfg.hsdp_replicate * cfg.hsdp_shard}) "
                f"must equal world_size from other parallelism ({other})")
    return None


def resolve_pipeline(model: str, scenario: dict) -> str:
    """The pipeline class: scenario override, model_index.json's _class_name, or MODEL as a class name."""
    path = Path(model)
    local = (path / "model_index.json").is_file()
    if not local and (model.startswith(("/", ".", "~")) or path.exists()):
        raise FileNotFoundError(f"OSError: {model} is not a local folder with a model_index.json and is not a valid "
                                f"model identifier listed on 'https://huggingface.co/models'")
    index = json.loads((path / "model_index.json").read_text()) if local else {}
    if not scenario["model"].get("transformer_class") and isinstance(index.get("transformer"), list):
        scenario["model"]["transformer_class"] = index["transformer"][-1]  # the DiT class TeaCache looks up
    if scenario["model"].get("pipeline_class"):
        return scenario["model"]["pipeline_class"]
    if local:
        return index["_class_name"]
    return model.rsplit("/", 1)[-1]


def check_load(scenario: dict, cfg: w.Config, gpus: list[int], pipeline: str) -> list[str]:
    """What the workers refuse while loading on the GPUs (model-specific rules, weights over memory); warnings."""
    warnings = w.check_startup(scenario, cfg, gpus, pipeline)
    load_mib = w.load_memory_mib(scenario, cfg)
    for g in gpus[: cfg.world_size]:
        total = scenario["gpus"][g]["memory_mib"] if g < len(scenario["gpus"]) else 143771
        if load_mib > total:
            raise w.Refusal(f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
                            f"{load_mib / 1024:.2f} GiB. GPU {g} has a total capacity of {total / 1024:.2f} GiB")
    return warnings


def check_devices(cfg: w.Config, devices: list[int]) -> None:
    """build_diffusion_config's device count (engine/stage_init_utils.py), inside the orchestrator."""
    if cfg.world_size > len(devices):
        shown = [str(d) for d in devices]
        raise StartupError(f"ValueError: Stage 0 requires {cfg.world_size} device(s) based on parallel_config, but "
                           f"{len(devices)} device(s) are available: {shown}", "orchestrator")


def check(ns: argparse.Namespace) -> Verdict:
    """Validation and config build of a parsed argv (what follows argparse, before any worker)."""
    try:
        validate(ns)
        cfg = w.Config.from_args(ns)
        check_config(ns, cfg)
    except StartupError as exc:
        return Verdict(exc.stage, 1, exc.text, exc.where, ns)
    warnings = [] if cfg.cache_config or not ns.cache_config else ["Invalid cache_config JSON, using backend defaults."]
    return Verdict("ok", None, None, "main", ns, cfg, warnings)


def decide(argv: list[str]) -> Verdict:
    """Every CPU-observable startup decision for ``vllm <argv>`` (argv starts with "serve"), without serving."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            ns = flags.parse(list(argv))
    except SystemExit as exc:
        return Verdict("parse", int(exc.code or 0), err.getvalue())
    except flags.FlexibleError as exc:
        return Verdict("parse", 1, f"ValueError: {exc}")
    return check(ns)


def non_default(ns: argparse.Namespace) -> dict:
    """The "non-default args" the real server logs at start."""
    defaults = {a["dest"]: a.get("default") for a in flags.actions()}
    return {k: v for k, v in vars(ns).items() if v is not None and v != defaults.get(k, None) and k != "omni"}
