"""compare_outputs: is a faster configuration still good enough? Metrics, verdicts, pictures, trade-off."""

from tools.compare.compare import Comparison, PairResult, Thresholds, compare_runs

__all__ = ["Comparison", "PairResult", "Thresholds", "compare_runs"]
