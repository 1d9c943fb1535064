"""The tune's report: a markdown table of every candidate and a Pareto plot of latency against quality."""

from __future__ import annotations

import json
from pathlib import Path

from omnitune.tools.tune.models import Outcome, TuneResult


def markdown(r: TuneResult) -> str:
    lines = [f"# omnitune tune report: {r.model}", "",
             f"Winner: **{r.winner.name if r.winner else 'none'}**"
             + (f", {r.winner.speedup_vs_baseline:.2f}x faster than the baseline at p50" if r.winner and
                r.winner.speedup_vs_baseline else ""), ""]
    if r.command:
        lines += ["```bash", r.command, "```", ""]
    if r.request_settings:
        lines += [f"Send with each request: {json.dumps(r.request_settings)}", ""]
    lines += [f"Launches: {r.launches}; GPU-seconds: {r.gpu_seconds:.1f}", ""]
    if r.notes:
        lines += [f"- {n}" for n in r.notes] + [""]
    lines += ["| candidate | stage | outcome | p50 (s) | speed-up | peak MiB | quality | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o in r.candidates:
        name = o.name + (" (resumed)" if o.resumed else "")
        figures = (f"{o.p50_s:.4} | {f'{o.speedup_vs_baseline:.2f}x' if o.speedup_vs_baseline else ''} | "
                   f"{f'{o.peak_memory_mib:.0f}' if o.peak_memory_mib else ''}") if o.p50_s else " | | "
        lines.append(f"| {name} | {o.stage} | {o.status} | {figures} | {o.verdict or ''} | {o.reason or ''} |")
    lines += ["", "Pruned before launching:", ""] + [f"- {p.name}: {p.why}" for p in r.pruned]
    if r.timeline:  # trials side by side or on a cluster: where and when each ran
        from omnitune.tools.tune.parallel import timeline_markdown
        lines += ["", "Where and when each trial ran (side-by-side figures are re-measured alone before deciding):",
                  "", timeline_markdown(r.timeline)]
    return "\n".join(lines) + "\n"


W, H, LEFT, RIGHT, TOP, BOTTOM = 1000, 600, 70, 30, 50, 60
Y_LO, Y_HI = 10.0, 60.0  # PSNR range drawn (dB); identical sits at the top
REJECTED = ("rejected_quality", "over_memory", "failed")


def _ticks(hi: float, count: int = 6) -> list[float]:
    """Round tick values from 0 to at least ``hi``."""
    raw = hi / count
    step = min((m * 10 ** e for e in range(-4, 4) for m in (1, 2, 2.5, 5) if m * 10 ** e >= raw), default=raw)
    return [i * step for i in range(int(hi / step) + 2)]


def pareto(outcomes: list[Outcome], path: Path) -> Path:
    """p50 latency (x, from 0) against quality (y: PSNR vs the baseline; identical at the top), with the verdict
    thresholds; the Pareto front in red, rejected candidates in orange, the rest grey; labels kept apart."""
    from PIL import Image, ImageDraw, ImageFont
    pts = [(o.p50_s, Y_HI if o.verdict in (None, "identical") else min(max(o.psnr_db_mean or 0, Y_LO), Y_HI), o)
           for o in outcomes if o.p50_s]
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    ticks = _ticks(max((p[0] for p in pts), default=1.0) * 1.05)
    x_hi = ticks[-1]

    def xy(x: float, y: float) -> tuple[float, float]:
        return (LEFT + x / x_hi * (W - LEFT - RIGHT), H - BOTTOM - (y - Y_LO) / (Y_HI - Y_LO) * (H - TOP - BOTTOM))

    d.text((LEFT, 6), "tune: p50 latency against quality  (red: Pareto front, orange: rejected, grey: measured)",
           fill="black", font=font)
    d.text((4, TOP - 20), "PSNR vs baseline, dB (higher is better)", fill="black", font=small)
    d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline="black")
    for t in ticks:
        px = xy(t, Y_LO)[0]
        d.line([px, H - BOTTOM, px, H - BOTTOM + 5], fill="black")
        d.text((px - 12, H - BOTTOM + 8), f"{t:g}", fill="black", font=small)
    d.text((W // 2 - 120, H - 24), "p50 latency, seconds (lower is better)", fill="black", font=font)
    for y, label in ((20, "20 dB broken"), (30, "30 dB acceptable"), (40, "40 dB lossless-equiv."),
                     (50, "50 dB"), (Y_HI, "identical")):
        py = xy(0, y)[1]
        d.line([LEFT, py, W - RIGHT, py], fill=(225, 225, 225))
        d.text((4, py - 7), label.split(" ")[0] if y != Y_HI else "ident.", fill="black", font=small)
        if y in (30, 40):
            d.text((W - RIGHT - 150, py - 15), label, fill=(150, 150, 150), font=small)
    kept = [p for p in pts if p[2].status not in REJECTED]
    front = [p for p in kept if not any(q[0] <= p[0] and q[1] >= p[1] and (q[0], q[1]) != (p[0], p[1]) for q in kept)]
    placed = [(px - 7, py - 7, px + 7, py + 7) for px, py in (xy(x, y) for x, y, _ in pts)]  # labels avoid points
    for x, y, o in sorted(pts, key=lambda p: (p[0], -p[1])):
        px, py = xy(x, y)
        colour = "orange" if o.status in REJECTED else ("red" if any(o is f[2] for f in front) else "grey")
        d.ellipse([px - 6, py - 6, px + 6, py + 6], fill=colour, outline="black")
        label = f"{o.name[:34]} ({o.speedup_vs_baseline:.2f}x)" if o.speedup_vs_baseline else o.name[:34]
        w = d.textlength(label, font=small)
        lx = px + 9 if px + 9 + w < W - 4 else px - 9 - w
        ly = py - 7
        while any(lx < b[2] and b[0] < lx + w and ly < b[3] and b[1] < ly + 14 for b in placed) and ly < H:
            ly += 15  # below the labels and points already there, so names never print over each other
        placed.append((lx, ly, lx + w, ly + 14))
        if abs(ly - (py - 7)) > 1:
            d.line([px, py, lx, ly + 7], fill=(190, 190, 190))
        d.text((lx, ly), label, fill="black" if colour != "grey" else (90, 90, 90), font=small)
    img.save(path)
    return path
