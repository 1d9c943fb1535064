"""Image and video quality metrics: PSNR and SSIM from scikit-image, MS-SSIM, per-frame and temporal for video.

- PSNR over all RGB channels of the uint8 pixels (``skimage.metrics.peak_signal_noise_ratio``, data range 255),
  as vLLM-Omni's quantization tool computes it; infinite for identical pixels.
- SSIM on the luma (BT.601 Y) with the Gaussian 11x11, sigma 1.5 window and population covariance of
  Wang et al. 2004 (``skimage.metrics.structural_similarity``), as most diffusion papers report it.
- MS-SSIM (Wang, Simoncelli, Bovik 2003): contrast-structure at scales 1-4 and full SSIM at scale 5, the
  published weights, 2x2 average pooling between scales; only when the smaller side is at least 176 px
  (the 11 px window must fit the 1/16 scale). Scale 1 reuses scikit-image's SSIM map (SSIM = l * cs), so the
  full-resolution filtering is done once.
- Video: the above per frame (mean and worst frame), plus temporal consistency: how differently the two
  videos change from frame to frame (mean |d baseline - d candidate|, 0-255) and the candidate's amount of
  frame-to-frame change relative to the baseline's (1 = same motion, > 1 flicker, < 1 frozen).
Images are decoded with Pillow, videos with PyAV.

No learned perceptual metric (LPIPS, DISTS): they need torch, which omnitune never requires, and ImageNet
backbone weights that torchvision downloads at first use; nothing the project may ship or can assume offline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_MIN_SIDE = 176
SIGMA, TRUNCATE, PAD = 1.5, 3.5, 5  # skimage's Gaussian window: radius int(3.5 * 1.5 + 0.5) = 5, 11 taps
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def load_image(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def load_video(path: Path) -> list[np.ndarray]:
    import av
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64, copy=False)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    if np.array_equal(a, b):
        return math.inf
    from skimage.metrics import peak_signal_noise_ratio
    return float(peak_signal_noise_ratio(a, b, data_range=255))


def mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute error in pixel values (0-255), the quantization tool's second uint8 measure."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _structural_similarity(ya: np.ndarray, yb: np.ndarray, full: bool) -> Any:
    """scikit-image's SSIM: a float, or (float, map) when ``full``; untyped there, so typed by the callers."""
    from skimage.metrics import structural_similarity
    return structural_similarity(ya, yb, data_range=255.0, gaussian_weights=True, sigma=SIGMA,
                                 use_sample_covariance=False, full=full)


def ssim(ya: np.ndarray, yb: np.ndarray) -> float:
    """Luma SSIM from scikit-image."""
    return float(_structural_similarity(ya, yb, full=False))


def ssim_full(ya: np.ndarray, yb: np.ndarray) -> tuple[float, np.ndarray]:
    """Luma SSIM and its per-pixel map from scikit-image."""
    result = _structural_similarity(ya, yb, full=True)  # (mssim, S) with full=True and gradient=False
    return float(result[0]), np.asarray(result[1])


def _filter(x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(x, sigma=SIGMA, truncate=TRUNCATE, mode="reflect")


def _luminance(ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
    ma, mb = _filter(ya), _filter(yb)
    return (2 * ma * mb + C1) / (ma * ma + mb * mb + C1)


def _ssim_cs(ya: np.ndarray, yb: np.ndarray) -> tuple[float, float]:
    """(SSIM, mean contrast-structure) at one scale, over the same valid region as scikit-image."""
    ma, mb = _filter(ya), _filter(yb)
    va, vb = _filter(ya * ya) - ma * ma, _filter(yb * yb) - mb * mb
    cov = _filter(ya * yb) - ma * mb
    cs = (2 * cov + C2) / (va + vb + C2)
    lum = (2 * ma * mb + C1) / (ma * ma + mb * mb + C1)
    crop = (slice(PAD, -PAD), slice(PAD, -PAD))
    return float((lum * cs)[crop].mean()), float(cs[crop].mean())


def _half(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4


def ms_ssim(ya: np.ndarray, yb: np.ndarray, ssim_map: np.ndarray | None = None) -> float | None:
    """MS-SSIM of two luma planes, or None when they are too small for five scales."""
    if min(ya.shape) < MS_MIN_SIDE:
        return None
    crop = (slice(PAD, -PAD), slice(PAD, -PAD))
    if ssim_map is None:
        _, ssim_map = ssim_full(ya, yb)
    cs1 = float((ssim_map / _luminance(ya, yb))[crop].mean())  # SSIM map = l * cs, so cs = map / l (l > 0)
    value = max(cs1, 0.0) ** MS_WEIGHTS[0]
    for i, weight in enumerate(MS_WEIGHTS[1:], start=1):
        ya, yb = _half(ya), _half(yb)
        full, cs = _ssim_cs(ya, yb)
        value *= max(full if i == len(MS_WEIGHTS) - 1 else cs, 0.0) ** weight
    return float(value)


def image_metrics(a: np.ndarray, b: np.ndarray, multiscale: bool = True) -> dict:
    """PSNR, MAE, SSIM and (optionally) MS-SSIM of two same-shape uint8 RGB arrays."""
    if np.array_equal(a, b):
        return {"psnr_db": math.inf, "ssim": 1.0, "ms_ssim": 1.0 if multiscale and min(a.shape[:2]) >= MS_MIN_SIDE
                else None, "mae": 0.0, "identical": True}
    ya, yb = luma(a), luma(b)
    if multiscale and min(ya.shape) >= MS_MIN_SIDE:
        value, smap = ssim_full(ya, yb)
        multi = ms_ssim(ya, yb, smap)
    else:
        value, multi = ssim(ya, yb), None
    return {"psnr_db": psnr(a, b), "ssim": float(value), "ms_ssim": multi, "mae": mae(a, b), "identical": False}


def temporal(fa: list[np.ndarray], fb: list[np.ndarray]) -> dict:
    """Frame-to-frame consistency of the candidate against the baseline (None for a single frame)."""
    if len(fa) < 2:
        return {"temporal_diff": None, "motion_ratio": None}
    diffs, motion_a, motion_b = [], [], []
    for i in range(len(fa) - 1):
        da = fa[i + 1].astype(np.int16) - fa[i]
        db = fb[i + 1].astype(np.int16) - fb[i]
        diffs.append(float(np.abs(da - db).mean()))
        motion_a.append(float(np.abs(da).mean()))
        motion_b.append(float(np.abs(db).mean()))
    base_motion = sum(motion_a)
    return {"temporal_diff": sum(diffs) / len(diffs),
            "motion_ratio": sum(motion_b) / base_motion if base_motion > 0 else None}


def video_metrics(fa: list[np.ndarray], fb: list[np.ndarray]) -> dict:
    """Per-frame PSNR/SSIM (worst and mean), MS-SSIM of the worst frame, and the temporal measures.

    ``psnr_db`` and ``ssim`` are the worst frame's (what the verdict judges); the lists keep every frame.
    """
    per = [image_metrics(a, b, multiscale=False) for a, b in zip(fa, fb)]
    psnrs = [p["psnr_db"] for p in per]
    ssims = [p["ssim"] for p in per]
    worst = int(np.argmin(ssims)) if not all(p["identical"] for p in per) else 0
    finite = [v for v in psnrs if math.isfinite(v)]
    multi = image_metrics(fa[worst], fb[worst])["ms_ssim"]
    return {"psnr_db": min(psnrs), "psnr_db_mean": sum(finite) / len(finite) if finite else math.inf,
            "ssim": min(ssims), "ssim_mean": sum(ssims) / len(ssims), "ms_ssim": multi,
            "mae": sum(p["mae"] for p in per) / len(per), "worst_frame": worst, "frames": len(per),
            "frame_psnr_db": psnrs, "frame_ssim": ssims, **temporal(fa, fb),
            "identical": all(p["identical"] for p in per)}
