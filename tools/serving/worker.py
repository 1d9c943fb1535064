# pyright: reportMissingImports=false
"""Runs INSIDE the serving environment (its own python), never imported by omnitune.

It answers, with the engine's own code, two questions about `vllm serve MODEL --omni ...`:
  * ``catalogue``: every argparse action of the real `serve` parser (names, type, choices, nargs, action class);
  * ``check``: does this argv parse (the real parser), pass `OmniServeCommand.validate`, resolve to stage
    configs (`resolve_omni_config`) and build the diffusion config a worker receives (`build_diffusion_config`)?
The parser is built exactly as `vllm_omni.entrypoints.cli.main.main` builds it; the config path follows
`OmniServeCommand.cmd` -> `build_async_omni_from_stage_config` -> `OmniBase.__init__` -> `OmniEngineBase` ->
`_resolve_stage_configs` -> `build_diffusion_config` (vllm-omni 0.30.0), stopping before any device or process.

Protocol: one JSON request per line on stdin, one JSON answer per line on the original stdout; everything the
engine prints goes to stderr. Python stdlib only at import (vLLM is imported on the first request).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback

if sys.path and os.path.dirname(os.path.abspath(__file__)) == os.path.abspath(sys.path[0] or "."):
    del sys.path[0]  # never let this folder shadow the serving environment's modules
_STATE: dict = {}


class _PlannedDevices:
    """The engine's platform, but counting the devices omnitune will hand the server (CUDA_VISIBLE_DEVICES).

    `build_diffusion_config` ends with a device-count check against the host; the preflight may run on a host
    without the GPUs (or before they are free), so it checks against the planned list instead."""

    device_control_env_var = "CUDA_VISIBLE_DEVICES"

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def get_device_count(self) -> int:
        return len([d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()])


def _out_channel():
    fd = os.dup(1)
    os.dup2(2, 1)  # the engine logs to stdout: send it to stderr, keep the real stdout for answers
    sys.stdout = sys.stderr
    return os.fdopen(fd, "w", buffering=1)


def _parser():
    if "parser" in _STATE:
        return _STATE["parser"], _STATE["cmd"]
    import importlib.metadata

    import vllm_omni.entrypoints.cli.serve as serve
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm_omni.utils.tracking_parser import TrackingArgumentParser

    cli_env_setup()
    serve._ensure_vllm_platform()
    parser = TrackingArgumentParser(description="vLLM OMNI CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    (cmd,) = [c for c in serve.cmd_init() if c.name == "serve"]
    sub = cmd.subparser_init(subparsers)
    sub.set_defaults(dispatch_function=cmd.cmd)
    versions = {}
    for dist in ("vllm", "vllm-omni", "torch"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    _STATE.update(parser=parser, cmd=cmd, sub=sub, versions=versions)
    return parser, cmd


def _type_name(fn) -> str | None:
    if fn is None:
        return None
    name = getattr(fn, "__name__", type(fn).__name__)
    if name in ("_optional_type", "_parse_type") and getattr(fn, "__closure__", None):
        inner = [c.cell_contents for c in fn.__closure__ if callable(c.cell_contents)]
        if inner:
            return f"optional:{_type_name(inner[0])}" if name == "_optional_type" else _type_name(inner[0])
    return name


def _json_safe(v):
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return repr(v)


def catalogue() -> dict:
    _parser()
    actions = []
    group = {id(a): g.title for g in _STATE["sub"]._action_groups for a in g._group_actions}
    for a in _STATE["sub"]._actions:
        if not a.option_strings:
            actions.append({"dest": a.dest, "positional": True})
            continue
        actions.append({
            "flags": list(a.option_strings), "dest": a.dest, "action": type(a).__name__,
            "type": _type_name(a.type), "nargs": _json_safe(a.nargs),
            "choices": [str(c) for c in a.choices] if a.choices is not None else None,
            "default": _json_safe(a.default), "group": group.get(id(a)), "help": (a.help or "")[:300],
        })
    return {"versions": _STATE["versions"], "actions": actions}


def _parse(argv: list[str]):
    parser, cmd = _parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip() and not ln.startswith(("usage:", "  "))]
        return None, {"stage": "parse", "exit_code": exc.code, "error": "\n".join(lines[-3:]) or err.getvalue()[-500:]}
    try:
        cmd.validate(args)
    except Exception as exc:  # the CLI turns these into a traceback and exit 1
        return None, {"stage": "validate", "error": f"{type(exc).__name__}: {exc}"}
    return args, None


def _config(args) -> dict:
    """The kwargs path of `vllm serve --omni` up to the diffusion config (no processes, no devices)."""
    from vllm_omni.config.omni_config import BaseVllmOmniStageConfig
    from vllm_omni.engine import stage_init_utils
    from vllm_omni.engine.async_omni_engine import AsyncOmniEngine
    from vllm_omni.engine.stage_init_utils import (
        build_diffusion_config,
        extract_legacy_stage_metadata,
        extract_stage_metadata_from_omni_stage_config,
    )

    if getattr(args, "model_tag", None) is not None:  # OmniServeCommand.cmd
        args.model = args.model_tag
    if getattr(args, "no_guardrails", False):
        mc = dict(getattr(args, "model_config", None) or {})
        mc["guardrails"] = False
        args.model_config = mc
        args.explicit_keys = (args.explicit_keys - {"no_guardrails"}) | {"model_config"}
    kwargs = args.get_explicit_kwargs_dict()  # build_async_omni_from_stage_config
    kwargs.pop("robot_openpi_idle_timeout", None)
    model = kwargs.pop("model", None) or args.model
    kwargs.setdefault("log_stats", not args.disable_log_stats)
    for key in ("stage_init_timeout", "init_timeout", "log_stats", "enable_ar_profiler", "output_modalities",
                "tts_batch_max_items"):  # OmniBase.__init__
        kwargs.pop(key, None)
    for removed in ("diffusion_batch_size", "log_requests"):
        if removed in kwargs:
            raise TypeError(f"`{removed}` has been removed in Omni/AsyncOmni.")
    trust_remote_code = kwargs.pop("trust_remote_code", None)  # OmniEngineBase.__init__ named parameters
    for key in ("single_stage_mode", "tokenizer", "client_config", "enable_orch_monitor"):
        kwargs.pop(key, None)
    engine = object.__new__(AsyncOmniEngine)
    engine._config_resolution = None
    _, stage_configs = engine._resolve_stage_configs(model, kwargs, trust_remote_code=trust_remote_code)
    out: dict = {"stages": len(stage_configs), "diffusion": []}
    for stage_cfg in stage_configs:
        meta = extract_stage_metadata_from_omni_stage_config(stage_cfg) \
            if isinstance(stage_cfg, BaseVllmOmniStageConfig) else extract_legacy_stage_metadata(stage_cfg)
        if meta.stage_type != "diffusion":
            continue
        real = stage_init_utils.current_omni_platform
        if "CUDA_VISIBLE_DEVICES" in os.environ:
            stage_init_utils.current_omni_platform = _PlannedDevices(real)
        try:
            od = build_diffusion_config(model, stage_cfg, meta)
        finally:
            stage_init_utils.current_omni_platform = real
        pc = od.parallel_config
        out["diffusion"].append({
            "world_size": pc.world_size,
            "parallel": {k: _json_safe(getattr(pc, k, None)) for k in (
                "ulysses_degree", "ring_degree", "cfg_parallel_size", "tensor_parallel_size", "data_parallel_size",
                "pipeline_parallel_size", "use_hsdp", "hsdp_shard_size", "hsdp_replicate_size",
                "vae_patch_parallel_size", "enable_expert_parallel", "sequence_parallel_size")},
            "fields": {k: _json_safe(getattr(od, k, None)) for k in (
                "model_class_name", "enforce_eager", "cache_backend", "cache_config", "quantization_config",
                "enable_cpu_offload", "enable_layerwise_offload", "vae_use_slicing", "vae_use_tiling", "flow_shift",
                "boundary_ratio", "diffusion_compile_dynamic", "vae_fast_path", "num_gpus")},
        })
    return out


def check(argv: list[str], env: dict[str, str]) -> dict:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        args, refusal = _parse(argv)
        if refusal:
            return {"ok": False, **refusal}
        try:
            config = _config(args)
        except BaseException as exc:  # noqa: BLE001 - every refusal of the engine is an answer
            if isinstance(exc, KeyboardInterrupt):
                raise
            tb = traceback.extract_tb(exc.__traceback__)
            where = f"{tb[-1].filename.split('site-packages/')[-1]}:{tb[-1].lineno}" if tb else ""
            return {"ok": False, "stage": "config", "error": f"{type(exc).__name__}: {exc}"[:2000], "where": where}
        return {"ok": True, "stage": "config", "config": config}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    out = _out_channel()
    if "--warm" in sys.argv[1:]:  # import vLLM now, before the first question arrives
        started = time.monotonic()
        try:
            _parser()
            import vllm_omni.engine.async_omni_engine  # noqa: F401  (the config build's modules: the first check
            import vllm_omni.engine.stage_init_utils  # noqa: F401  would otherwise pay for them, ~7 s)
            out.write(json.dumps({"ready": True, "import_s": round(time.monotonic() - started, 3)}) + "\n")
        except Exception as exc:  # noqa: BLE001 - reported to omnitune, which falls back to its rules
            out.write(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
    else:
        out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req: dict = {}
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "catalogue":
                answer = catalogue()
            elif op == "check":
                started = time.monotonic()
                answer = check(list(req["argv"]), dict(req.get("env") or {}))
                answer["elapsed_s"] = round(time.monotonic() - started, 3)
            elif op == "versions":
                _parser()
                answer = {"versions": _STATE["versions"]}
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # noqa: BLE001 - the worker must keep answering
            answer = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        out.write(json.dumps({"id": req.get("id"), **answer}) + "\n")


if __name__ == "__main__":
    main()
