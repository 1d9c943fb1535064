"""Real, deterministic outputs: PNG images and MP4 videos whose pixels depend only on what should matter.

Content comes from (prompt, seed, size); lossy settings add a deterministic deviation of a known
standard deviation, so identical lossless configurations give byte-identical PNGs and lossy ones
drift by an amount tests can predict.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def base_image(prompt: str, seed: int, width: int, height: int, negative: str = "") -> np.ndarray:
    """A smooth, structured picture (so SSIM means something) fixed by prompt, seed and size."""
    rng = _rng("content", prompt, seed, negative)
    coarse = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    freq = 2 * np.pi * (2 + rng.integers(0, 6)) / max(width, height)
    img += 40 * np.sin(freq * (xx + yy))[..., None]
    return np.clip(img, 0, 255)


def deviate(img: np.ndarray, std: float, *key: object) -> np.ndarray:
    """Add a deterministic deviation of standard deviation ``std`` (0 leaves the image as is)."""
    if std <= 0:
        return img
    noise = _rng("deviation", *key).normal(0.0, std, img.shape).astype(np.float32)
    return np.clip(img + noise, 0, 255)


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.round(img).astype(np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def video_frames(prompt: str, seed: int, width: int, height: int, frames: int,
                 deviations: list[tuple[float, str, object]], negative: str = "") -> list[np.ndarray]:
    """A panning shot; each (std, tag, key) deviation is applied to every frame, in order."""
    base = base_image(prompt, seed, width + frames, height, negative)
    out = []
    for i in range(frames):
        frame = base[:, i:i + width]
        for std, tag, key in deviations:
            frame = deviate(frame, std, tag, prompt, seed, key, i)
        out.append(frame)
    return out


def mp4_bytes(frames: list[np.ndarray], fps: float) -> bytes:
    from fractions import Fraction

    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0", "preset": "ultrafast", "threads": "1"}
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(np.round(arr).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
