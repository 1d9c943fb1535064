"""Latency statistics: percentiles by linear interpolation (numpy's default), so figures match numpy/pandas."""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydantic import BaseModel, Field


class LatencyStats(BaseModel):
    """Seconds. ``std_s`` is the sample standard deviation (0 for one value)."""

    count: int
    mean_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    min_s: float
    max_s: float
    std_s: float = Field(description="Sample standard deviation (n-1).")


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of already sorted values, linear between closest ranks."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(values: Iterable[float]) -> LatencyStats | None:
    data = sorted(float(v) for v in values)
    if not data:
        return None
    n = len(data)
    mean = sum(data) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in data) / (n - 1)) if n > 1 else 0.0
    return LatencyStats(count=n, mean_s=mean, p50_s=percentile(data, 50), p90_s=percentile(data, 90),
                        p99_s=percentile(data, 99), min_s=data[0], max_s=data[-1], std_s=std)


def mean(values: Iterable[float]) -> float | None:
    data = [float(v) for v in values]
    return sum(data) / len(data) if data else None
