"""Image and video quality metrics from scikit-image (PSNR, SSIM) plus a multi-scale SSIM and a temporal measure.

SSIM is computed on the luma (Y of BT.601), as most diffusion papers report it; PSNR on all RGB channels.
MS-SSIM: the product of SSIM over 5 dyadic scales with the weights of Wang et al. 2003 (a simplification
that uses the full SSIM at every scale), only when the smaller side is at least 176 px.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def load_image(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def load_video(path: Path) -> list[np.ndarray]:
    import av
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def ssim(ya: np.ndarray, yb: np.ndarray) -> float:
    from skimage.metrics import structural_similarity
    return float(structural_similarity(ya, yb, data_range=255.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def ms_ssim(ya: np.ndarray, yb: np.ndarray, full_scale: float) -> float | None:
    """``full_scale`` is the SSIM already computed at scale 1 (not computed twice)."""
    if min(ya.shape) < 176:
        return None
    value = max(full_scale, 1e-6) ** MS_WEIGHTS[0]
    for weight in MS_WEIGHTS[1:]:
        ya, yb = _half(ya), _half(yb)
        value *= max(ssim(ya, yb), 1e-6) ** weight
    return value


def _half(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4


def image_metrics(a: np.ndarray, b: np.ndarray, multiscale: bool = True) -> dict:
    if a.shape != b.shape:
        return {"psnr_db": 0.0, "ssim": 0.0, "ms_ssim": None, "identical": False,
                "note": f"shapes differ {a.shape} vs {b.shape}"}
    identical = bool(np.array_equal(a, b))
    if identical:
        return {"psnr_db": math.inf, "ssim": 1.0, "ms_ssim": 1.0 if multiscale else None, "identical": True}
    ya, yb = luma(a.astype(np.float64)), luma(b.astype(np.float64))
    full = ssim(ya, yb)
    return {"psnr_db": psnr(a, b), "ssim": full, "ms_ssim": ms_ssim(ya, yb, full) if multiscale else None,
            "identical": False}


def video_metrics(fa: list[np.ndarray], fb: list[np.ndarray]) -> dict:
    if len(fa) != len(fb) or not fa:
        return {"psnr_db": 0.0, "ssim": 0.0, "identical": False, "note": f"frames differ {len(fa)} vs {len(fb)}"}
    per = [image_metrics(a, b, multiscale=False) for a, b in zip(fa, fb)]
    # temporal consistency: how differently the two videos move from frame to frame (0 = same motion)
    deltas = [np.abs((fa[i + 1].astype(np.float32) - fa[i]) - (fb[i + 1].astype(np.float32) - fb[i])).mean()
              for i in range(len(fa) - 1)]
    finite = [p["psnr_db"] for p in per if math.isfinite(p["psnr_db"])]
    return {"psnr_db": min(finite) if finite else math.inf,
            "psnr_db_mean": sum(finite) / len(finite) if finite else math.inf,
            "ssim": min(p["ssim"] for p in per), "ssim_mean": sum(p["ssim"] for p in per) / len(per),
            "worst_frame": int(np.argmin([p["ssim"] for p in per])), "frames": len(per),
            "temporal_diff": float(np.mean(deltas)) if deltas else 0.0,
            "identical": all(p["identical"] for p in per)}
