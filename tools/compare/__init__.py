"""compare_outputs: is a faster configuration still good enough? Metrics, verdicts, pictures, trade-off."""

from omnitune.tools.compare.compare import Comparison, PairResult, compare_runs
from omnitune.tools.compare.report import RunFigures, TradeOff
from omnitune.tools.compare.verdict import Thresholds, Verdict

__all__ = ["Comparison", "PairResult", "RunFigures", "Thresholds", "TradeOff", "Verdict", "compare_runs"]
