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
        lines.append(f"| {name} | {o.stage} | {o.status} | {o.p50_s or '':.4} | "
                     f"{f'{o.speedup_vs_baseline:.2f}x' if o.speedup_vs_baseline else ''} | "
                     f"{f'{o.peak_memory_mib:.0f}' if o.peak_memory_mib else ''} | {o.verdict or ''} | {o.reason or ''} |"
                     if o.p50_s else f"| {name} | {o.stage} | {o.status} | | | | {o.verdict or ''} | {o.reason or ''} |")
    lines += ["", "Pruned before launching:", ""] + [f"- {p.name}: {p.why}" for p in r.pruned]
    if r.timeline:  # trials side by side or on a cluster: where and when each ran
        from omnitune.tools.tune.parallel import timeline_markdown
        lines += ["", "Where and when each trial ran (side-by-side figures are re-measured alone before deciding):",
                  "", timeline_markdown(r.timeline)]
    return "\n".join(lines) + "\n"


def pareto(outcomes: list[Outcome], path: Path) -> Path:
    """Latency (x) against quality (y: PSNR vs baseline, identical at the top), Pareto front highlighted."""
    from PIL import Image, ImageDraw
    pts = [(o.p50_s, 60.0 if o.verdict in (None, "identical") else min(o.psnr_db_mean or 0, 60.0), o.name)
           for o in outcomes if o.p50_s]
    img = Image.new("RGB", (800, 500), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([60, 20, 780, 460], outline="black")
    d.text((300, 470), "p50 latency (s) ->  (lower is better)", fill="black")
    d.text((5, 5), "PSNR vs baseline (dB; top = identical)", fill="black")
    if pts:
        xs = [p[0] for p in pts]
        lo, hi = min(xs), max(xs)
        span = (hi - lo) or 1.0
        front = [p for p in pts if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts)]
        for x, y, name in pts:
            px, py = 80 + (x - lo) / span * 680, 440 - (min(max(y, 10.0), 60.0) - 10) / 50 * 400
            colour = "red" if (x, y, name) in front else "grey"
            d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colour)
            d.text((px + 7, py - 6), name[:28], fill=colour)
    img.save(path)
    return path
