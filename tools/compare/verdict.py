"""Verdicts against documented thresholds (every threshold is a parameter; these are the defaults).

- identical: the same pixels (every frame, for video).
- lossless-equivalent: PSNR >= 40 dB: differences no one sees (compile/FP8 kernel reordering noise).
- acceptable: PSNR >= 30 dB and SSIM >= 0.90: vLLM-Omni's own diffusion tests accept SSIM 0.90-0.97 and
  PSNR >= 30 dB; 30 dB is also the ``strict_min`` of its quantization tool
  (``vllm_omni/quantization/tools/compare_diffusion_trajectory_similarity.py``).
- degraded: anything worse. Below 20 dB (that tool's smoke threshold) the pair is also flagged ``broken``.

Video pairs are judged on their worst frame; a run on its worst pair, so one bad picture is never averaged away.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from omnitune.tools.strict import StrictModel

Verdict = Literal["identical", "lossless-equivalent", "acceptable", "degraded"]
ORDER: list[str] = ["identical", "lossless-equivalent", "acceptable", "degraded"]


class Thresholds(StrictModel):
    lossless_psnr_db: float = Field(40.0, description="PSNR (dB) at or above which a pair is lossless-equivalent.")
    acceptable_psnr_db: float = Field(30.0, description="Minimum PSNR (dB) for 'acceptable'.")
    acceptable_ssim: float = Field(0.90, ge=0, le=1, description="Minimum SSIM (luma, 0-1) for 'acceptable'; "
                                                                 "vLLM-Omni's tests use 0.90-0.97.")
    broken_psnr_db: float = Field(20.0, description="Below this PSNR (dB) a degraded pair is flagged broken.")

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.broken_psnr_db <= self.acceptable_psnr_db <= self.lossless_psnr_db:
            raise ValueError("thresholds must satisfy broken_psnr_db <= acceptable_psnr_db <= lossless_psnr_db")
        return self


def judge(psnr_db: float, ssim: float, identical: bool, t: Thresholds) -> Verdict:
    """One pair's verdict (``psnr_db`` and ``ssim`` of the worst frame for a video)."""
    if identical:
        return "identical"
    if psnr_db >= t.lossless_psnr_db:
        return "lossless-equivalent"
    if psnr_db >= t.acceptable_psnr_db and ssim >= t.acceptable_ssim:
        return "acceptable"
    return "degraded"


def broken(psnr_db: float, t: Thresholds) -> bool:
    return math.isfinite(psnr_db) and psnr_db < t.broken_psnr_db


def worst(verdicts: list[str]) -> Verdict:
    """A run's verdict: its worst pair's."""
    return max(verdicts, key=ORDER.index)  # type: ignore[return-value]


def rank(verdict: str) -> int:
    """0 for identical ... 3 for degraded (to sort pairs worst first)."""
    return ORDER.index(verdict)
