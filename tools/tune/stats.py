"""The tune's statistics on outcomes: the median's standard error, noise between two p50s, same pixels."""

from __future__ import annotations

import math
import statistics

from omnitune.tools.tune.models import Outcome


def p50_se(latencies: list[float]) -> float | None:
    """Standard error of the median, from the MAD: one stalled request on a busy host must not make every
    comparison 'within the noise' (the standard deviation would)."""
    if len(latencies) < 2:
        return None
    mid = statistics.median(latencies)
    mad = statistics.median(abs(x - mid) for x in latencies)
    return 1.2533 * 1.4826 * mad / math.sqrt(len(latencies))


def noise(a: Outcome, b: Outcome) -> float:
    """Combined relative standard error of two p50s."""
    return math.hypot(*((o.p50_se_s or 0) / o.p50_s if o.p50_s else 0 for o in (a, b)))


def same_pixels(a: Outcome, b: Outcome) -> bool:
    """Both identical to the baseline, or the same distance from it (within 0.05 dB)."""
    return a.verdict == b.verdict == "identical" or (
        a.psnr_db_mean is not None and b.psnr_db_mean is not None and abs(a.psnr_db_mean - b.psnr_db_mean) < 0.05)


def pooled(first: Outcome, second: Outcome) -> None:
    """Pool a second measurement of the same server into ``first`` (mean of p50s, combined error)."""
    if first.p50_s and second.p50_s:
        first.p50_s, first.repeat_run_id = (first.p50_s + second.p50_s) / 2, second.run_id
        first.p50_se_s = math.hypot(first.p50_se_s or 0, second.p50_se_s or 0) / 2
        first.reason = "measured twice (within the spread of the best so far); p50 pooled"
