"""Automatic tuning: measure the plan's candidates, gate them on quality, return the best command."""

from tools.tune.models import ACCEPT, Outcome, TuneRequest, TuneResult
from tools.tune.resume import resumable_request
from tools.tune.tuner import Tuner, tune_job

__all__ = ["ACCEPT", "Outcome", "TuneRequest", "TuneResult", "Tuner", "resumable_request", "tune_job"]
