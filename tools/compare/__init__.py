"""compare_outputs: is a faster configuration still good enough? Metrics, verdicts, pictures, trade-off."""

from tools.compare.compare import Comparison, PairResult, compare_runs
from tools.compare.report import RunFigures, TradeOff
from tools.compare.verdict import Thresholds, Verdict

__all__ = ["Comparison", "PairResult", "RunFigures", "Thresholds", "TradeOff", "Verdict", "compare_runs"]
