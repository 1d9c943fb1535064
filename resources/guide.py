"""The optimisation guide as structured data: recipes A-G and the decision flowchart.

Recipes are commands, not claims: each is checked at read time against the installed flags
(``check_recipes``), so a recipe using a flag this vLLM-Omni lacks says so.
"""

from __future__ import annotations

import shlex

RECIPES: list[dict] = [
    {"id": "A", "title": "Qwen-Image, one GPU, FP8", "model": "Qwen/Qwen-Image", "pipeline": "QwenImagePipeline",
     "gpus": 1, "lossy": False, "methods": ["fp8", "regional_compile"],
     "args": ["--quantization", "fp8"]},
    {"id": "B", "title": "Qwen-Image, 4 GPUs: CFG parallel 2 x Ulysses 2 + FP8", "model": "Qwen/Qwen-Image",
     "pipeline": "QwenImagePipeline", "gpus": 4, "lossy": False, "methods": ["cfg_parallel", "ulysses_sp", "fp8"],
     "args": ["--cfg-parallel-size", "2", "--usp", "2", "--quantization", "fp8"]},
    {"id": "C", "title": "Wan2.2 A14B on low VRAM: layerwise offload + VAE slicing/tiling",
     "model": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "pipeline": "WanPipeline", "gpus": 1, "lossy": False,
     "methods": ["layerwise_offload"],
     "args": ["--enable-layerwise-offload", "--vae-use-slicing", "--vae-use-tiling"]},
    {"id": "D", "title": "Wan2.2, 8 GPUs: Ulysses 4 x Ring 2, VAE patch parallel 8, FP8",
     "model": "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "pipeline": "WanPipeline", "gpus": 8, "lossy": False,
     "methods": ["ulysses_sp", "ring_sp", "vae_patch_parallel", "fp8"],
     "args": ["--usp", "4", "--ring", "2", "--vae-patch-parallel-size", "8", "--quantization", "fp8"]},
    {"id": "E", "title": "Qwen-Image with Cache-DiT", "model": "Qwen/Qwen-Image", "pipeline": "QwenImagePipeline",
     "gpus": 1, "lossy": True, "methods": ["cache_dit"], "args": ["--cache-backend", "cache_dit"]},
    {"id": "F", "title": "LTX-2 baseline", "model": "Lightricks/LTX-2", "pipeline": "LTX2Pipeline", "gpus": 1,
     "lossy": False, "methods": [], "args": ["--flow-shift", "1.0", "--boundary-ratio", "1.0"]},
    {"id": "G", "title": "LTX-2 with Cache-DiT (~1.4x)", "model": "Lightricks/LTX-2", "pipeline": "LTX2Pipeline",
     "gpus": 1, "lossy": True, "methods": ["cache_dit"],
     "args": ["--flow-shift", "1.0", "--boundary-ratio", "1.0", "--cache-backend", "cache_dit"]},
]

FLOWCHART: dict = {
    "start": "baseline",
    "nodes": {
        "baseline": {"do": "launch with --enforce-eager, no parallelism; record inference time, e2e latency, VRAM, "
                           "outputs", "next": "quality"},
        "quality": {"ask": "is output quality paramount (bit-for-bit or lossless only)?",
                    "yes": "lossless", "no": "lossless_then_lossy"},
        "lossless": {"ask": "how many GPUs?", "one": "single_gpu", "several": "multi_gpu"},
        "single_gpu": {"do": "torch.compile (default on) + FP8 where fp8 is supported and the GPU is SM 8.9+",
                       "methods": ["regional_compile", "fp8"], "next": "oom"},
        "multi_gpu": {"do": "add CFG parallel (CFG models), Ulysses/Ring SP, TP by support; CFG 2 x Ulysses beats "
                            "pure Ulysses for CFG models",
                      "methods": ["cfg_parallel", "ulysses_sp", "ring_sp", "tensor_parallel", "vae_patch_parallel"],
                      "next": "oom"},
        "oom": {"ask": "out of memory?", "yes": "memory", "no": "done_lossless"},
        "memory": {"do": "layerwise offload (nearly free for big video models), model-level CPU offload, "
                         "VAE slicing/tiling, FP8 weights",
                   "methods": ["layerwise_offload", "cpu_offload", "fp8"], "next": "done_lossless"},
        "lossless_then_lossy": {"do": "apply the lossless path first, then a lossy cache compared with the baseline",
                                "next": "lossy"},
        "lossy": {"ask": "is TeaCache supported for this model?", "yes": "tea_cache", "no": "cache_dit"},
        "tea_cache": {"do": "--cache-backend tea_cache --cache-config '{\"rel_l1_thresh\": 0.2}' (0.1-0.2 ~1.5x, "
                            "0.4 ~1.8x, 0.6-0.8 ~2-2.25x)", "methods": ["tea_cache"], "next": "quality_gate"},
        "cache_dit": {"do": "--cache-backend cache_dit (DBCache/TaylorSeer/SCM, 1.5-2.5x)", "methods": ["cache_dit"],
                      "next": "quality_gate"},
        "quality_gate": {"do": "compare outputs with the baseline (PSNR/SSIM); keep only acceptable candidates",
                         "next": "done"},
        "done_lossless": {"do": "report the fastest lossless command"},
        "done": {"do": "report the fastest command that passed the quality gate"},
    },
}


def check_recipes(installed_flags: set[str], support: dict[str, dict[str, str]] | None = None) -> list[dict]:
    """Each recipe with its `vllm serve` command, the flags this version lacks, and method support."""
    out = []
    for recipe in RECIPES:
        used = [a for a in recipe["args"] if a.startswith("--")]
        missing = [f for f in used if f not in installed_flags]
        statuses = (support or {}).get(recipe["pipeline"], {})
        unsupported = {m: statuses[m] for m in recipe["methods"] if statuses.get(m) not in (None, "supported")}
        argv = ["vllm", "serve", recipe["model"], "--omni", *recipe["args"]]
        out.append({**recipe, "argv": argv, "command": shlex.join(argv), "missing_flags": missing,
                    "valid_flags": not missing,
                    "method_status": {m: statuses.get(m, "unknown") for m in recipe["methods"]},
                    "not_supported": unsupported})
    return out
