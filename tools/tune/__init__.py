"""Automatic tuning: measure the plan's candidates, gate them on quality, return the best command.

policy (``tuner.py`` stages on ``decide.py`` mechanics) -> trials (``trial.py``, the only part that launches)
and books (``ledger.py``), ranked by ``costmodel.py`` and screened by ``memory.py``; ``job.py`` wires them.
"""

from omnitune.tools.tune.job import tune_job
from omnitune.tools.tune.models import ACCEPT, Outcome, TuneRequest, TuneResult
from omnitune.tools.tune.resume import resumable_request
from omnitune.tools.tune.tuner import Tuner

__all__ = ["ACCEPT", "Outcome", "TuneRequest", "TuneResult", "Tuner", "resumable_request", "tune_job"]
