"""The launch contract against the real stack: every argv omnitune's configurations produce, through the real
parser and config build (one warm worker), compared with omnitune's rules-only verdict.

Used by tests/test_real_contract.py; also runnable to print the table:
    OMNITUNE_REAL_VLLM_VENV=/opt/omni-oracle/venv-0.30.0 .venv/bin/python -m tests.real_contract
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "models"
MODELS = {"qwen": FIXTURES / "tiny-qwenimage", "wan": FIXTURES / "tiny-wan", "zimage": FIXTURES / "tiny-zimage"}
TYPED = [  # the typed ServeConfig space the guide, plan and tune produce
    {}, {"enforce_eager": True}, {"usp": 2}, {"ring": 2}, {"cfg_parallel_size": 2}, {"tensor_parallel_size": 2},
    {"vae_patch_parallel_size": 2}, {"use_hsdp": True}, {"usp": 2, "use_hsdp": True}, {"enable_cpu_offload": True},
    {"enable_layerwise_offload": True}, {"vae_use_slicing": True, "vae_use_tiling": True}, {"quantization": "fp8"},
    {"cache_backend": "tea_cache", "cache_config": {"rel_l1_thresh": 0.2}}, {"cache_backend": "cache_dit"},
    {"flow_shift": 5.0}, {"boundary_ratio": 0.875}, {"usp": 2, "cfg_parallel_size": 2},
    {"quantization": "fp8", "cfg_parallel_size": 2, "cache_backend": "tea_cache"},
]
EXTRA = [  # extra_flags cases (on the Qwen fixture)
    {"--diffusion-compile-dynamic": False}, {"--diffusion-compile-dynamic": True},
    {"--diffusion-compile-dynamic": "true"},
    {"--vae-fast-path": "off"}, {"--vae-fast-path": "fast"}, {"--vae-fast-path": True}, {"--num-gpus": 2},
    {"--data-parallel-size": 2}, {"--pipeline-parallel-size": 2}, {"--hsdp-shard-size": 2}, {"--num-gpus": "two"},
    {"--additional-config": "{bad"}, {"--additional-config": '{"a": 1}'}, {"--fa-deterministic": True},
    {"--fa-deterministic": "true"}, {"--no-enforce-eager": True}, {"--vae-parallel-mode": "tile"},
    {"--diffusion-quantization-config": '{"method": "fp8"}'}, {"--model-class-name": "NoSuchPipeline"},
    {"--allgather-degree": 2}, {"--max-num-seqs": 4}, {"--enable-sleep-mode": True},
    {"--quantization-config": '{"no_such_field": 1}'}, {"--lora-backend": "distill"},
]


def cases() -> list[tuple[str, dict]]:
    out = [(f"{m}:{json.dumps(c, sort_keys=True)}", {"model": str(p), **c}) for m, p in MODELS.items() for c in TYPED]
    out += [(f"qwen:extra:{json.dumps(e)}", {"model": str(MODELS["qwen"]), "extra_flags": e}) for e in EXTRA]
    out += [("qwen:hsdp+shard", {"model": str(MODELS["qwen"]), "use_hsdp": True,
                                 "extra_flags": {"--hsdp-shard-size": 2}}),
            ("qwen:fp8+qcfg", {"model": str(MODELS["qwen"]), "quantization": "fp8",
                               "extra_flags": {"--diffusion-quantization-config": '{"method": "fp8"}'}})]
    return out


def rules_verdict(config_fields: dict, vllm: str, real_python: Path) -> tuple[bool, list[str], list[str], str]:
    """(ok, argv, problems, devices) from omnitune's own rules, on a 4-GPU host (whatever tree is on sys.path)."""
    import importlib

    from omnitune.tools.gpus import GpuReport
    v = importlib.import_module("omnitune.tools.launch.validate")
    from omnitune.tools.launch.config import ServeConfig, build_argv
    from omnitune.tools.settings import Settings

    gpus = GpuReport.model_validate({"available": True, "host": {
        "cpu_cores_logical": 2, "cpu_cores_physical": 2, "ram_total_mib": 1, "ram_available_mib": 1, "workspace": "/w",
        "workspace_disk_free_mib": 1}, "gpus": [{"index": i, "name": "NVIDIA H200", "memory_total_mib": 143771,
                                                 "memory_used_mib": 0, "fp8_native": True} for i in range(4)]})
    try:
        config = ServeConfig(**config_fields)
    except Exception as exc:  # the schema refused it
        return False, [], [f"schema: {exc}".splitlines()[0]], ""
    settings = Settings(model_roots=[FIXTURES], vllm=vllm)
    params = inspect.signature(v.validate).parameters
    if "catalogue" in params:
        from omnitune.tools.capabilities.flags import shipped
        r = v.validate(settings, config, gpus, None, shipped({"vllm": "0.30.0", "vllm-omni": "0.30.0"}))
    else:  # main before issue 15: the help-text flag list
        from omnitune.tools.launch.flags import installed_flags  # pyright: ignore[reportAttributeAccessIssue]
        flags, how = installed_flags(vllm, Path("/tmp/omnitune-contract-cache"))
        r = v.validate(settings, config, gpus, None, flags, how)
    argv = build_argv(vllm, config, r.model_arg or config.model, "127.0.0.1", 8000)
    return not r.errors, argv, r.errors, ",".join(map(str, r.gpus or [0]))


def misread(config_fields: dict, od: dict) -> list[str]:
    """Fields the real diffusion config reads differently from what the configuration meant."""
    p, f, x = od["parallel"], od["fields"], config_fields.get("extra_flags", {})
    want = {("parallel", "ulysses_degree"): config_fields.get("usp", 1),
            ("parallel", "ring_degree"): config_fields.get("ring", 1),
            ("parallel", "cfg_parallel_size"): config_fields.get("cfg_parallel_size", 1),
            ("parallel", "tensor_parallel_size"): config_fields.get("tensor_parallel_size", 1),
            ("parallel", "use_hsdp"): config_fields.get("use_hsdp", False),
            ("fields", "enforce_eager"): config_fields.get("enforce_eager", False),
            ("fields", "cache_backend"): config_fields.get("cache_backend") or "none"}
    if "--diffusion-compile-dynamic" in x and isinstance(x["--diffusion-compile-dynamic"], bool):
        want[("fields", "diffusion_compile_dynamic")] = x["--diffusion-compile-dynamic"]
    if isinstance(x.get("--vae-fast-path"), str):
        want[("fields", "vae_fast_path")] = x["--vae-fast-path"]
    got = {"parallel": p, "fields": f}
    bad = [f"{k[1]}={got[k[0]].get(k[1])!r} (meant {v!r})" for k, v in want.items()
           if k[1] in got[k[0]] and got[k[0]].get(k[1]) != v and not (v in (None, "none") and not got[k[0]].get(k[1]))]
    if config_fields.get("quantization") == "fp8" and not f.get("quantization_config"):
        bad.append("quantization_config is empty (meant fp8)")
    return bad


def _preflight():
    """The preflight client (loaded by path when the tree on sys.path is main's, which lacks it: the "before" run)."""
    import importlib.util
    try:
        from omnitune.tools.serving import preflight
        return preflight
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location("_contract_preflight", Path(__file__).resolve().parents[1] / "tools"
                                                  / "serving" / "preflight.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(real_python: Path) -> list[dict]:
    pf = _preflight()
    vllm = str(real_python.parent / "vllm")
    rows = []
    for name, fields in cases():
        ok, argv, problems, devices = rules_verdict(fields, vllm, real_python)
        row = {"case": name, "rules_ok": ok, "rules_errors": problems, "argv": argv[1:]}
        if argv:
            real = pf.check(real_python, argv, devices or "0", 900)
            row.update(real_ok=real.get("ok"), real_stage=real.get("stage"), real_error=(real.get("error") or "")[:300])
            stages = (real.get("config") or {}).get("diffusion") or []
            row["misread"] = misread(fields, stages[0]) if real.get("ok") and stages else []
        rows.append(row)
    return rows


def table(rows: list[dict]) -> dict:
    checked = [r for r in rows if "real_ok" in r]
    return {"argv checked": len(checked), "real accepted": sum(bool(r["real_ok"]) for r in checked),
            "real refused": sum(not r["real_ok"] for r in checked),
            "misread (accepted, read otherwise)": sum(bool(r["real_ok"] and r["misread"]) for r in checked),
            "omnitune ok, real refused": sum(r["rules_ok"] and not r["real_ok"] for r in checked),
            "omnitune ok, real misread": sum(bool(r["rules_ok"] and r["real_ok"] and r["misread"]) for r in checked),
            "omnitune refused, real accepted cleanly": sum(not r["rules_ok"] and bool(r["real_ok"]) and not r["misread"]
                                                           for r in checked)}


if __name__ == "__main__":
    venv = Path(os.environ.get("OMNITUNE_REAL_VLLM_VENV", "/opt/omni-oracle/venv-0.30.0"))
    result = run(venv / "bin" / "python")
    json.dump(result, open(sys.argv[1], "w"), indent=1) if len(sys.argv) > 1 else None
    print(json.dumps(table(result), indent=1))
