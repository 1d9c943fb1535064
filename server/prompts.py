"""MCP prompts: the optimisation guide as a walk-through an agent can follow with omnitune's tools."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

GUIDE = """You are tuning vLLM-Omni diffusion serving for {model} on this machine.
Goal: {goal}. Quality policy: {quality}.
Measure everything; never report a speed-up you did not measure here. Work step by step:

1. Hardware: call detect_gpus. Note GPU count, memory (MiB), fp8_native (SM 8.9+) and NVLink between GPUs.
2. Capabilities: call inspect_model_capabilities for {model}. Only use methods whose status is `supported`;
   quote their evidence (path:line) when you explain a choice. Respect the constraints it lists.
3. Baseline: launch_server with enforce_eager=true on one GPU (or the fewest that fit). benchmark it with a
   representative workload (fixed seeds, the sizes and steps you will serve, warmup >= 1). stop_server.
4. Lossless first, one change at a time, each launched, benchmarked with the SAME workload, then stopped:
   torch.compile (drop enforce_eager), FP8 (quantization=fp8, only if fp8_native), then the parallel layouts the
   capability report allows for the GPUs you have (CFG models: cfg_parallel_size=2 x usp beats pure usp;
   otherwise usp / ring / tensor_parallel_size), VAE slicing/tiling or CPU offload only if memory demands it.
   Run compare_outputs(baseline, candidate) after each: a lossless change must come out identical or
   lossless-equivalent; if not, say so and drop it.
5. {lossy_step}
6. Report: the winning `vllm serve` command (launch_server dry_run=true gives it exactly), its p50 latency,
   throughput and peak memory against the baseline, the quality verdict, and what you pruned and why.
   plan and tune_start automate steps 3-5 when they are available; their reports carry the same evidence. A tune
   whose omnitune died shows as `failed` with an "interrupted" error in job_status: continue it with
   tune_start(resume=<job id>). Look at pictures with show_picture (results link them under `pictures`).
"""

LOSSY = ("Lossy, only within the quality floor: TeaCache (cache_backend=tea_cache, rel_l1_thresh 0.1 -> 0.2 -> 0.4) "
         "where supported, else Cache-DiT (cache_backend=cache_dit); sweep from gentle to aggressive, compare each "
         "with the baseline, stop at the first 'degraded' verdict, and discard thresholds that give no speed-up. "
         "Then request-level settings on one server of the best configuration: fewer num_inference_steps, and "
         "guidance_scale=1 (no CFG pass, ~2x on a CFG model), each compared with the baseline the same way.")
LOSSLESS_ONLY = "Skip lossy methods (TeaCache, Cache-DiT, fewer steps): quality is paramount."


def register(mcp: MCPServer) -> None:
    @mcp.prompt(name="tune_diffusion_serving", title="Tune vLLM-Omni diffusion serving")
    def tune_diffusion_serving(model: str, goal: str = "latency", allow_lossy: str = "no") -> str:
        """Walk through the optimisation guide with omnitune's tools: baseline, lossless, lossy with comparison,
        report. `goal` is latency or throughput; `allow_lossy` yes/no."""
        lossy = allow_lossy.strip().lower() in ("yes", "true", "1", "y")
        return GUIDE.format(model=model, goal=goal,
                            quality="lossy allowed within a quality floor" if lossy else "lossless only",
                            lossy_step=LOSSY if lossy else LOSSLESS_ONLY)
