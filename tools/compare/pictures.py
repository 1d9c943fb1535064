"""Pictures an agent (or a person) can look at: side-by-side with an amplified difference heatmap,
a contact sheet of a whole comparison, and frame strips for videos."""

from __future__ import annotations

import numpy as np


def heatmap(a: np.ndarray, b: np.ndarray, amplify: float) -> np.ndarray:
    """|a - b| (mean over channels) x amplify, as black -> red -> yellow -> white."""
    d = np.clip(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2) * amplify / 255.0, 0, 1)
    return (np.stack([np.clip(d * 3, 0, 1), np.clip(d * 3 - 1, 0, 1), np.clip(d * 3 - 2, 0, 1)], axis=2)
            * 255).astype(np.uint8)


def side_by_side(a: np.ndarray, b: np.ndarray, amplify: float, gap: int = 4) -> np.ndarray:
    h = max(a.shape[0], b.shape[0])
    parts = [a, b, heatmap(a, b, amplify)] if a.shape == b.shape else [a, b]
    canvas = np.full((h, sum(p.shape[1] for p in parts) + gap * (len(parts) - 1), 3), 255, np.uint8)
    x = 0
    for p in parts:
        canvas[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    return canvas


def frame_strip(fa: list[np.ndarray], fb: list[np.ndarray], amplify: float, count: int = 4) -> np.ndarray:
    """A few evenly spaced frames: baseline over candidate over difference."""
    idx = np.linspace(0, len(fa) - 1, min(count, len(fa))).round().astype(int)
    rows = [np.concatenate([f[i] for i in idx], axis=1) for f in (fa, fb)]
    rows.append(np.concatenate([heatmap(fa[i], fb[i], amplify) for i in idx], axis=1))
    return np.concatenate(rows, axis=0)


def thumbnail(img: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image
    pil = Image.fromarray(img)
    pil.thumbnail((max_side, max_side))
    return np.asarray(pil)


def contact_sheet(tiles: list[np.ndarray], max_width: int = 1200) -> np.ndarray:
    """Tiles stacked vertically, each scaled to the sheet's width."""
    from PIL import Image
    width = min(max_width, max(t.shape[1] for t in tiles))
    rows = []
    for t in tiles:
        pil = Image.fromarray(t)
        pil = pil.resize((width, max(1, round(t.shape[0] * width / t.shape[1]))))
        rows.append(np.asarray(pil))
        rows.append(np.full((4, width, 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def png(img: np.ndarray) -> bytes:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()
