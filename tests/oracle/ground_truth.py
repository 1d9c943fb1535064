"""Ground truth for the capability analysis, read by EXECUTING vLLM-Omni (not by reading its code).

Run with the Python of a real serving stack (vllm + vllm-omni importable; no GPU needed), e.g.::

    /opt/omni-oracle/venv-0.30.0/bin/python tests/oracle/ground_truth.py \
        --hints tests/oracle/hints-0.30.0.json --out tests/oracle/ground_truth-0.30.0.json
    # another release's sources put first on sys.path (import errors are recorded per pipeline):
    ... ground_truth.py --source .venv/vllm-omni-src/0.22.0 --hints ... --out tests/oracle/ground_truth-0.22.0.json

What execution can answer, per registered pipeline (``None`` where it cannot; the reason is kept):
- the pipeline class imports (or the import error);
- class attributes as Python resolves them on the DiT class (inherited from any base, in or out of the
  package): ``_sp_plan``, ``_repeated_blocks``, ``_hsdp_shard_conditions``, layerwise-offload attrs,
  ``_cache_dit_adapter_config``; a pipeline's own ``setup_compile``;
- the cache registries as populated at import (``CUSTOM_DIT_ENABLERS``, TeaCache enablers/extractors,
  ``_NO_CACHE_ACCELERATION``) and, for Cache-DiT's fallback, whether the cache-dit library knows the DiT;
- refusals: the pipeline is constructed (empty model folder) once plainly and once per feature; a
  feature that makes construction raise a *different*, feature-naming error before weights load is refused.
The DiT class to inspect comes from ``--hints`` (the analysis's answer, written by ``hints.py``); the
oracle only imports it and reads what Python says about it. VAE class, TP layers and CFG code paths need
an instance with weights and are left unanswered here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

KEYS = ("ulysses_sp", "ring_sp", "cfg_parallel", "tensor_parallel", "layerwise_offload", "regional_compile", "hsdp",
        "vae_patch_parallel", "tea_cache", "cache_dit")
PROBES: dict[str, tuple[dict, dict]] = {          # method -> (parallel_config kwargs, OmniDiffusionConfig kwargs)
    "ulysses_sp": ({"ulysses_degree": 2}, {}),
    "ring_sp": ({"ring_degree": 2}, {}),
    "cfg_parallel": ({"cfg_parallel_size": 2}, {}),
    "tensor_parallel": ({"tensor_parallel_size": 2}, {}),
    "hsdp": ({"use_hsdp": True, "hsdp_shard_size": 2}, {}),
    "vae_patch_parallel": ({"vae_patch_parallel_size": 2}, {}),
    "layerwise_offload": ({}, {"enable_layerwise_offload": True}),
    "tea_cache": ({}, {"cache_backend": "tea_cache"}),
    "cache_dit": ({}, {"cache_backend": "cache_dit"}),
}
WORDS = {"ulysses_sp": ("sequence", "ulysses", "sp"), "ring_sp": ("sequence", "ring", "sp"),
         "cfg_parallel": ("cfg", "classifier"), "tensor_parallel": ("tensor", "tp"), "hsdp": ("hsdp",),
         "vae_patch_parallel": ("vae",), "layerwise_offload": ("offload", "layerwise"),
         "tea_cache": ("cache", "teacache"), "cache_dit": ("cache",)}


class Timeout(Exception):
    pass


def _alarm(*_):
    raise Timeout("probe took too long")


def _truthy(value) -> bool:
    try:
        return bool(value)
    except Exception:
        return True


def _registries() -> dict[str, set[str]]:
    """Cache registries exactly as the installed code fills them at import time."""
    out: dict[str, set[str]] = {"dit_enablers": set(), "tea_enablers": set(), "extractors": set()}
    for name in ("vllm_omni.diffusion.cache.cachedit.backend", "vllm_omni.diffusion.cache.cachedit.model_specific",
                 "vllm_omni.diffusion.cache.cache_dit_backend"):
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        out["dit_enablers"] |= set(getattr(mod, "CUSTOM_DIT_ENABLERS", {}) or {})
    for name in ("vllm_omni.diffusion.cache.teacache.backend", "vllm_omni.diffusion.cache.teacache.extractors"):
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        out["tea_enablers"] |= set(getattr(mod, "CUSTOM_TEACACHE_ENABLERS", {}) or {})
        out["extractors"] |= set(getattr(mod, "EXTRACTOR_REGISTRY", {}) or {})
    return out


def _cache_dit_knows(dit_cls) -> bool | None:
    """Whether the installed cache-dit library has a built-in adapter for this DiT class (by its name)."""
    try:
        from cache_dit.caching.block_adapters import BlockAdapterRegister  # type: ignore
    except Exception:
        return None
    names = [c.__name__ for c in dit_cls.__mro__]
    reg = getattr(BlockAdapterRegister, "_adapters", None) or {}
    keys = list(reg) if isinstance(reg, dict) else []
    if not keys:
        return None
    return any(any(n.startswith(k) for k in keys) for n in names)


def _probe(cls, arch: str, folder: str, par: dict, extra: dict) -> str:
    from vllm_omni.diffusion.data import (  # pyright: ignore[reportMissingImports]
        DiffusionParallelConfig,
        OmniDiffusionConfig,
    )
    try:
        pc = DiffusionParallelConfig(**par)
        cfg = OmniDiffusionConfig(model=folder, model_class_name=arch, parallel_config=pc, **extra)
    except Exception as exc:
        return f"config {type(exc).__name__}: {str(exc)[:160]}"
    signal.alarm(20)
    try:
        cls(od_config=cfg)
        return "constructed"
    except BaseException as exc:  # noqa: BLE001 - every failure is data here
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        signal.alarm(0)


def _refused(method: str, base: str, got: str) -> bool:
    if got == base or got.startswith("config "):
        return False
    text = got.lower()
    return got.startswith("NotImplementedError") or any(w in text for w in WORDS[method])


def pipeline_row(arch: str, entry: tuple, hint: dict, regs: dict, no_cache: set[str], folder: str) -> dict:
    row: dict = {"pipeline_class": arch, "import_error": None,
                 "dit_class": hint.get("dit_class"),
                 "cells": dict.fromkeys(KEYS), "how": {}, "probes": {}}
    mod_folder, rel, cls_name = entry
    try:
        mod = _import_with_shims(f"vllm_omni.diffusion.models.{mod_folder}.{rel}", SHIMS)
        cls = getattr(mod, cls_name)
    except BaseException as exc:  # noqa: BLE001
        row["import_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return row
    dit = None
    if hint.get("dit_class") and hint.get("dit_module"):
        try:
            dit = getattr(importlib.import_module(hint["dit_module"]), hint["dit_class"])
        except BaseException as exc:  # noqa: BLE001
            row["how"]["dit"] = f"DiT import failed: {type(exc).__name__}: {str(exc)[:120]}"
    cells, how = row["cells"], row["how"]

    def put(key: str, status: str | None, why: str) -> None:
        cells[key], how[key] = status, why

    if dit is not None:
        plan = getattr(dit, "_sp_plan", None)
        for key in ("ulysses_sp", "ring_sp"):
            put(key, "supported" if _truthy(plan) else None,
                "_sp_plan set on the class" if _truthy(plan) else "no class-level _sp_plan (instance or manual SP "
                "cannot be seen without an instance)")
        put("hsdp", "supported" if _truthy(getattr(dit, "_hsdp_shard_conditions", None)) else "unsupported",
            "getattr(DiT, '_hsdp_shard_conditions')")
        lw = getattr(dit, "_layerwise_offload_blocks_attrs", None) \
            or getattr(dit, "_layerwise_offload_blocks_attr", None)
        put("layerwise_offload", "supported" if _truthy(lw) else "unsupported", "getattr(DiT, layerwise attrs)")
        put("regional_compile", "supported" if _truthy(getattr(dit, "_repeated_blocks", None)) else "unsupported",
            "getattr(DiT, '_repeated_blocks')")
    if "setup_compile" in vars(cls) or any("setup_compile" in vars(b) for b in cls.__mro__[1:]
                                           if b.__module__.startswith("vllm_omni")):
        put("regional_compile", None, "the pipeline's own setup_compile decides (not judged by attributes)")
    # caches
    if arch in no_cache:
        put("tea_cache", "unsupported", "_NO_CACHE_ACCELERATION")
        put("cache_dit", "unsupported", "_NO_CACHE_ACCELERATION")
    else:
        if cls_name in regs["tea_enablers"] or (dit is not None and dit.__name__ in regs["extractors"]):
            put("tea_cache", "supported", "TeaCache enabler / extractor registered")
        elif dit is not None:
            put("tea_cache", "unsupported", "no TeaCache enabler or extractor for these exact names")
        if cls_name in regs["dit_enablers"]:
            put("cache_dit", "supported", "CUSTOM_DIT_ENABLERS")
            row["cache_dit_effect"] = "yes"
        elif dit is not None and getattr(dit, "_cache_dit_adapter_config", None) is not None:
            put("cache_dit", "supported", "_cache_dit_adapter_config")
            row["cache_dit_effect"] = "yes"
        elif dit is not None:
            put("cache_dit", "supported", "generic path: vllm-omni hands the DiT to cache-dit's built-in adapters")
            knows = _cache_dit_knows(dit)
            row["cache_dit_effect"] = {True: "yes", False: "no", None: "unknown"}[knows]
    # refusals by construction
    base = _probe(cls, arch, folder, {}, {})
    row["probes"]["baseline"] = base
    for key, (par, extra) in PROBES.items():
        got = _probe(cls, arch, folder, par, extra)
        row["probes"][key] = got
        if _refused(key, base, got):
            put(key, "rejected", f"construction raises: {got[:160]}")
    return row


def _import_with_shims(module: str, shims: list[str], limit: int = 40):
    """Import ``module``; a name an older release expects from the installed vllm / transformers but that
    they no longer have is stubbed (recorded in the output), so that its classes can still be imported and read."""
    import re

    for _ in range(limit):
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            found = re.search(r"cannot import name '(\w+)' from '([\w.]+)'", str(exc))
            if not found or found.group(2).startswith("vllm_omni"):
                raise
            name, source = found.groups()
            target = importlib.import_module(source)
            if name[:1].isupper():
                setattr(target, name, type(name, (), {"__init__": lambda self, *a, **k: None}))
            else:
                setattr(target, name, lambda *_a, **_k: False)
            shims.append(f"{source}.{name}")
            for key in [k for k in sys.modules if k == module or k.startswith(module + ".")
                        or (k.startswith("vllm_omni.diffusion.models.") and k not in _LOADED)]:
                sys.modules.pop(key, None)
    raise ImportError(f"{module} did not import after {limit} shims")


def _cpu_platform(shims: list[str]) -> None:
    """Older releases leave the platform's device_type empty without a GPU, and some model modules use it at
    import time (``@torch.amp.autocast(current_omni_platform.device_type)``): call the CPU a CPU."""
    try:
        from vllm_omni.platforms import current_omni_platform  # pyright: ignore[reportMissingImports]
        if not getattr(current_omni_platform, "device_type", "cpu"):
            try:
                current_omni_platform.device_type = "cpu"
            except Exception:
                type(current_omni_platform).device_type = "cpu"
            shims.append("current_omni_platform.device_type='cpu'")
    except Exception as exc:  # noqa: BLE001
        shims.append(f"platform left as is ({type(exc).__name__})")


_LOADED: set[str] = set()
SHIMS: list[str] = []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=Path, help="a vllm-omni source folder to import instead of the installed one")
    ap.add_argument("--hints", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.source:
        sys.path.insert(0, str(args.source.resolve()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    signal.signal(signal.SIGALRM, _alarm)
    started = time.time()
    try:
        _import_with_shims("vllm_omni.diffusion.registry", SHIMS)
        _cpu_platform(SHIMS)
        _LOADED.update(k for k in sys.modules if k.startswith("vllm_omni.diffusion.models."))
    except BaseException as exc:  # noqa: BLE001 - the whole release cannot be executed here: that is the answer
        out = {"vllm_omni_version": None, "import_error": f"{type(exc).__name__}: {str(exc)[:300]}", "rows": []}
        args.out.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        return
    import vllm_omni  # pyright: ignore[reportMissingImports]
    from vllm_omni.diffusion import registry  # pyright: ignore[reportMissingImports]
    hints = json.loads(args.hints.read_text())
    regs = _registries()
    no_cache = set(getattr(registry, "_NO_CACHE_ACCELERATION", set()) or set())
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for arch, entry in sorted(registry._DIFFUSION_MODELS.items()):
            rows.append(pipeline_row(arch, entry, hints.get(arch, {}), regs, no_cache, folder))
            print(arch, file=sys.stderr, flush=True)
    out = {"vllm_omni_version": getattr(vllm_omni, "__version__", "?"), "shims": sorted(set(SHIMS)),
           "seconds": round(time.time() - started, 1), "rows": rows}
    args.out.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
