"""Honest, diffusion-aware benchmarking of a running vLLM-Omni server (images and videos).

Public surface: ``run_benchmark(workspace, BenchmarkTarget, Workload, progress, cancel) -> BenchmarkResult``,
``RunSummary`` (the stable field names stored in ``runs.summary``) and ``config_key`` (reuse key of a run).
"""

from omnitune.tools.benchmark.runner import BenchmarkResult, PlannedRequest, plan, run_benchmark
from omnitune.tools.benchmark.summary import RunSummary
from omnitune.tools.benchmark.target import BenchmarkTarget, config_key
from omnitune.tools.benchmark.workload import BUILTIN_PROMPTS, Workload

__all__ = ["BUILTIN_PROMPTS", "BenchmarkResult", "BenchmarkTarget", "PlannedRequest", "RunSummary", "Workload",
           "config_key", "plan", "run_benchmark"]
