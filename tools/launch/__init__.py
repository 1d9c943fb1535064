"""Safe lifecycle of `vllm serve MODEL --omni`: typed config -> validated argv -> process group -> health."""

from omnitune.tools.launch.config import CacheConfig, ServeConfig, build_argv
from omnitune.tools.launch.launcher import Launcher, ServerView, StopResult
from omnitune.tools.launch.validate import ValidationResult, validate

__all__ = ["CacheConfig", "Launcher", "ServeConfig", "ServerView", "StopResult", "ValidationResult", "build_argv",
           "validate"]
