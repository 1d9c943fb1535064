"""Automatic tuning: measure the plan's candidates, gate them on quality, return the best command."""

from omnitune.tools.tune.models import ACCEPT, Outcome, TuneRequest, TuneResult
from omnitune.tools.tune.resume import resumable_request
from omnitune.tools.tune.tuner import Tuner, tune_job

__all__ = ["ACCEPT", "Outcome", "TuneRequest", "TuneResult", "Tuner", "resumable_request", "tune_job"]
