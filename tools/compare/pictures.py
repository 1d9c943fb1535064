"""Pictures an agent (or a person) can look at: baseline | candidate | amplified difference heatmap per pair,
frame strips for videos, and a captioned contact sheet of a whole comparison, worst pairs first.

The heatmap maps |baseline - candidate| x ``amplify`` (mean over RGB) to black -> red -> yellow -> white, so
lossless noise stays black and a cache that skipped too much lights up where the picture changed.
"""

from __future__ import annotations

import io

import numpy as np

WHITE, GAP, CAPTION_H = 255, 4, 18
VERDICT_COLOURS = {"identical": (40, 140, 60), "lossless-equivalent": (60, 120, 200), "acceptable": (200, 140, 20),
                   "degraded": (200, 40, 40)}


def heatmap(a: np.ndarray, b: np.ndarray, amplify: float) -> np.ndarray:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=2, dtype=np.float32)
    d = np.clip(d * (amplify * 3 / 255.0), 0, 3)
    return (np.stack([np.clip(d, 0, 1), np.clip(d - 1, 0, 1), np.clip(d - 2, 0, 1)], axis=2) * 255).astype(np.uint8)


def _row(parts: list[np.ndarray]) -> np.ndarray:
    h = max(p.shape[0] for p in parts)
    canvas = np.full((h, sum(p.shape[1] for p in parts) + GAP * (len(parts) - 1), 3), WHITE, np.uint8)
    x = 0
    for p in parts:
        canvas[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + GAP
    return canvas


def side_by_side(a: np.ndarray, b: np.ndarray, amplify: float) -> np.ndarray:
    """baseline | candidate | difference x amplify, at full resolution."""
    return _row([a, b, heatmap(a, b, amplify)])


def frame_strip(fa: list[np.ndarray], fb: list[np.ndarray], amplify: float, count: int = 4,
                include: int | None = None) -> np.ndarray:
    """A few evenly spaced frames (plus frame ``include``, the worst): baseline over candidate over difference."""
    idx = sorted(set(np.linspace(0, len(fa) - 1, min(count, len(fa))).round().astype(int).tolist())
                 | ({include} if include is not None else set()))
    rows = [_row([f[i] for i in idx]) for f in (fa, fb)]
    rows.append(_row([heatmap(fa[i], fb[i], amplify) for i in idx]))
    gap = np.full((GAP, rows[0].shape[1], 3), WHITE, np.uint8)
    return np.concatenate([rows[0], gap, rows[1], gap, rows[2]], axis=0)


def resize_to_width(img: np.ndarray, width: int) -> np.ndarray:
    from PIL import Image
    if img.shape[1] == width:
        return img
    height = max(1, round(img.shape[0] * width / img.shape[1]))
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def thumbnail(img: np.ndarray, max_side: int) -> np.ndarray:
    """Scaled down (never up) so that neither side exceeds ``max_side``."""
    scale = max_side / max(img.shape[:2])
    return img if scale >= 1 else resize_to_width(img, max(1, round(img.shape[1] * scale)))


def captioned(img: np.ndarray, text: str, verdict: str | None = None) -> np.ndarray:
    """``img`` under a caption band (coloured by verdict)."""
    from PIL import Image, ImageDraw
    band = Image.new("RGB", (img.shape[1], CAPTION_H), VERDICT_COLOURS.get(verdict or "", (60, 60, 60)))
    ImageDraw.Draw(band).text((4, 3), text, fill=(255, 255, 255))
    return np.concatenate([np.asarray(band), img], axis=0)


def contact_sheet(tiles: list[np.ndarray], columns: int = 2, width: int = 1500) -> np.ndarray:
    """Captioned tiles in a grid ``width`` px wide, row-major in the order given."""
    columns = max(1, min(columns, len(tiles)))
    tile_w = min((width - GAP * (columns - 1)) // columns, max(t.shape[1] for t in tiles))  # never upscaled
    scaled = [resize_to_width(t, tile_w) for t in tiles]
    rows = [_row(scaled[i:i + columns]) for i in range(0, len(scaled), columns)]
    full = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, GAP), (0, full - r.shape[1]), (0, 0)), constant_values=WHITE) for r in rows]
    return np.concatenate(rows, axis=0)[:-GAP]


def png(img: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes; level 1 because these pictures are large and written on the request path."""
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
