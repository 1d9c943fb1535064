"""The tune's statistics on outcomes: the median's standard error, noise between two p50s, same pixels."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # models imports parallel, which imports agree from here
    from omnitune.tools.tune.models import Outcome

NOISE = 0.02  # a relative difference always inside the noise: the tuner, the finalists, agreeing figures


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


def same_outputs(a: Outcome, b: Outcome) -> bool:
    """The very same pictures: both identical to the baseline, or exactly the same mean PSNR from it (two different
    sets of pictures practically never give the same float)."""
    return a.verdict == b.verdict == "identical" or (a.psnr_db_mean is not None and a.psnr_db_mean == b.psnr_db_mean)


SE_FLOOR = 0.005  # relative: three requests that happened to agree say no more than this about the p50
NOISY = 0.03      # relative standard error above which a figure is measured again before anything rests on it


def noisy(out: Outcome) -> bool:
    """The p50's own standard error is large (requests stalled on a busy host): too loose to decide on."""
    return bool(out.p50_s and out.p50_se_s and out.p50_se_s / out.p50_s > NOISY)


def pooled(first: Outcome, second: Outcome, why: str = "within the spread of the best so far") -> None:
    """Pool a second measurement of the same server into ``first``: p50s weighted by their inverse variance (a run
    whose requests stalled counts for less than a steady one), the combined error."""
    if first.p50_s and second.p50_s:
        w = [1 / max(o.p50_se_s or 0, SE_FLOOR * (o.p50_s or 0)) ** 2 for o in (first, second)]
        first.p50_s = (w[0] * first.p50_s + w[1] * second.p50_s) / sum(w)
        first.p50_se_s, first.repeat_run_id = 1 / math.sqrt(sum(w)), second.run_id
        first.reason = f"measured twice ({why}); p50 pooled"


def agree(side: tuple[float, float | None], alone: tuple[float, float | None], noise: float = NOISE) -> bool:
    """Two (p50, standard error) figures agree: within ``noise`` or twice their combined relative error."""
    (a, sa), (b, sb) = side, alone
    if not (a and b):
        return False
    spread = math.hypot((sa or 0) / a, (sb or 0) / b)
    return abs(a / b - 1) <= max(noise, 2 * spread)
