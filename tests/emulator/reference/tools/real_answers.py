# pyright: reportMissingImports=false
# (runs in the real serving venv, not in omnitune's: vllm and vllm_omni resolve there)
"""Ask the real vLLM 0.30.0 + vLLM-Omni 0.30.0 for its answers to the emulator contract cases.

Runs inside the REAL serving venv (``$OMNITUNE_REAL_VLLM_VENV/bin/python real_answers.py CASES MODEL OUT``) and writes
one JSON document to OUT: for each startup case, what the real parser, the serve command's validation and the real
diffusion config build say; for each HTTP case, what the real FastAPI app answers (driven in process through
httpx's ASGI transport, with a stand-in engine). One process for everything: importing vLLM costs ~35 s.

Nothing here starts a server or touches a GPU. The config build is the real one: ``build_async_omni`` (as
``vllm serve`` runs it) up to ``build_diffusion_config`` (the config a diffusion worker receives); the first
step after it (spawning workers) is replaced by a sentinel exception, so no worker starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import traceback


class ConfigBuilt(Exception):
    """Raised right after the real diffusion config was built: the argv passed every CPU-side check."""


def build_parser():
    """The `vllm` parser exactly as vllm_omni.entrypoints.cli.main builds it under `--omni`."""
    os.environ.setdefault("VLLM_LOGGING_COLOR", "0")
    sys.argv[0] = "vllm"  # argparse names the program after it in usage and error lines
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    import vllm_omni.entrypoints.cli.benchmark.main
    import vllm_omni.entrypoints.cli.serve
    from vllm_omni.entrypoints.cli.serve import _ensure_vllm_platform
    from vllm_omni.utils.tracking_parser import TrackingArgumentParser

    cli_env_setup()
    _ensure_vllm_platform()
    parser = TrackingArgumentParser(description="vLLM OMNI CLI")
    parser.add_argument("-v", "--version", action="version", version="0.30.0")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    cmds = {}
    for module in (vllm_omni.entrypoints.cli.serve, vllm_omni.entrypoints.cli.benchmark.main):
        for cmd in module.cmd_init():
            cmd.subparser_init(subparsers).set_defaults(dispatch_function=cmd.cmd)
            cmds[cmd.name] = cmd
    return parser, cmds


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def root_cause(exc: BaseException) -> BaseException:
    """The orchestrator re-raises a stage failure as RuntimeError("Orchestrator initialization failed: ...")."""
    seen = set()
    while id(exc) not in seen and (exc.__cause__ or exc.__context__) is not None:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def startup_case(parser, cmds, argv: list[str], env: dict[str, str]) -> dict:
    """parse -> validate -> config build, as `vllm serve MODEL --omni ...` does before any worker starts."""
    from vllm_omni.entrypoints.openai import api_server

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                args = parser.parse_args(["serve", *argv])
        except SystemExit as exc:
            return {"stage": "parse", "exit_code": exc.code, "error": last_line(err.getvalue()),
                    "stderr": err.getvalue()}
        except Exception as exc:  # FlexibleArgumentParser raises ValueError for some shapes
            return {"stage": "parse", "exit_code": 1, "error": describe(exc)}
        try:
            cmds[args.subparser].validate(args)
        except Exception as exc:
            return {"stage": "validate", "exit_code": 1, "error": describe(exc)}
        if args.model_tag is not None:  # as OmniServeCommand.cmd
            args.model = args.model_tag

        async def build() -> None:
            async with api_server.build_async_omni(args):
                pass

        try:
            asyncio.run(build())
        except BaseException as exc:  # noqa: BLE001 - every refusal is an answer
            cause = root_cause(exc)
            if isinstance(cause, ConfigBuilt):
                return {"stage": "ok", "exit_code": None, "error": None, "config": cause.args[0]}
            return {"stage": "config", "exit_code": 1, "error": describe(cause), "final_line": describe(exc),
                    "trace_tail": traceback.format_exc().strip().splitlines()[-3:]}
        return {"stage": "unexpected", "exit_code": None, "error": "the engine started"}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def summarize(od) -> dict:
    """The fields of the real OmniDiffusionConfig that the emulator simulates."""
    p = od.parallel_config
    quant = od.quantization_config
    cache = od.cache_config
    return {"world_size": p.world_size, "ulysses_degree": p.ulysses_degree, "ring_degree": p.ring_degree,
            "cfg_parallel_size": p.cfg_parallel_size, "tensor_parallel_size": p.tensor_parallel_size,
            "use_hsdp": p.use_hsdp, "enforce_eager": od.enforce_eager,
            "quantization": (quant.get_name() if hasattr(quant, "get_name") else quant) if quant else None,
            "cache_backend": od.cache_backend,
            "cache_config": {k: v for k, v in (cache.__dict__ if hasattr(cache, "__dict__") else dict(cache or {})
                                               ).items() if isinstance(v, (int, float, str, bool, type(None)))}
            if cache else None,
            "enable_cpu_offload": od.enable_cpu_offload, "enable_layerwise_offload": od.enable_layerwise_offload}


def patch_config_build(captured: dict) -> None:
    from vllm_omni.engine import stage_engine_startup, stage_init_utils
    real = stage_init_utils.build_diffusion_config

    def build_then_stop(model, stage_cfg, metadata):
        od = real(model, stage_cfg, metadata)
        captured["stage_cfg"] = stage_cfg
        raise ConfigBuilt(summarize(od))

    stage_init_utils.build_diffusion_config = build_then_stop
    stage_engine_startup.build_diffusion_config = build_then_stop


class StandInEngine:
    """The engine client the real app is built around: healthy, one diffusion stage, never asked to generate."""

    def __init__(self, stage_cfg) -> None:
        self.stage_configs = [stage_cfg]
        self.endpoint_restrictions = ()
        self.errored = False
        self.is_running = True
        self.dead_error = RuntimeError("dead")
        self.model_config = self.renderer = self.input_processor = self.io_processor = None

    async def check_health(self) -> None:
        return None

    async def get_supported_tasks(self):
        return ("generate",)

    async def get_vllm_config(self):
        return None

    def __getattr__(self, name):  # anything else the state builder reads: absent
        raise AttributeError(name)


async def http_cases(parser, model: str, stage_cfg, cases: list[dict]) -> dict:
    import httpx

    from vllm_omni.entrypoints.openai import api_server as srv

    args = parser.parse_args(["serve", model, "--omni"])
    args.model = model
    engine = StandInEngine(stage_cfg)
    app = srv.build_openai_app(args, ("generate",))
    srv.remove_route_from_app(app, "/v1/chat/completions", {"POST"})
    srv.remove_route_from_app(app, "/v1/chat/completions/batch", {"POST"})
    srv.remove_route_from_app(app, "/v1/models", {"GET"})
    srv.remove_route_from_app(app, "/health", {"GET"})
    app.include_router(srv.router)
    srv._register_omni_exception_handlers(app)
    app.state.api_server_count = 1  # as omni_run_server_worker
    await srv.omni_init_app_state(engine, app.state, args)
    answers = {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://real") as client:
        for case in cases:
            kwargs = {k: case[k] for k in ("json", "data", "content", "headers", "files", "params") if k in case}
            if "files" in kwargs:
                kwargs["files"] = {k: (None, v) for k, v in kwargs["files"].items()}
            try:
                r = await client.request(case["method"], case["path"], **kwargs)
            except Exception as exc:  # noqa: BLE001
                answers[case["id"]] = {"exception": f"{type(exc).__name__}: {exc}"}
                continue
            try:
                body = r.json()
            except ValueError:
                body = None
            answers[case["id"]] = {"status": r.status_code, "content_type": r.headers.get("content-type"),
                                   "allow": r.headers.get("allow"), "json": body,
                                   "text": None if body is not None else r.text[:300]}
    return answers


def main() -> None:
    cases_path, model, out_path = sys.argv[1:4]
    cases = json.loads(open(cases_path).read())
    import importlib.metadata as md
    parser, cmds = build_parser()
    captured: dict = {}
    patch_config_build(captured)
    out = {"versions": {name: md.version(name) for name in ("vllm", "vllm-omni", "fastapi", "pydantic")},
           "startup": {}, "http": {}}
    for case in cases["startup"]:
        argv = [model if a == "MODEL" else a for a in case["argv"]]
        out["startup"][case["id"]] = startup_case(parser, cmds, argv, case.get("env", {}))
    if "stage_cfg" not in captured:
        raise SystemExit("no startup case built a config: the HTTP cases need one (add an accepted case)")
    out["http"] = asyncio.run(http_cases(parser, model, captured["stage_cfg"], cases["http"]))
    with open(out_path, "w") as f:  # a file: vLLM logs to stdout
        json.dump(out, f, indent=1, sort_keys=True, default=str)
        f.write("\n")


if __name__ == "__main__":
    main()
