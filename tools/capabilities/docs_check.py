"""Where a vllm-omni checkout's docs disagree with its code.

Only when the located package sits in a source checkout with ``docs/``. Markdown tables whose header
names optimisation methods (Ulysses, Ring, CFG, TP, HSDP, TeaCache, Cache-DiT, FP8, ...) and whose rows
name a registered pipeline class are compared cell by cell with the code's verdict. ``unknown`` code
verdicts are never reported as disagreements.
"""

from __future__ import annotations

import re
from pathlib import Path

from omnitune.tools.capabilities.report import DocsDisagreement

COLUMNS = [("ulysses_sp", r"ulysses|\busp\b"), ("ring_sp", r"\bring\b"), ("cfg_parallel", r"\bcfg"),
           ("tensor_parallel", r"tensor.?parallel|\btp\b"), ("vae_patch_parallel", r"vae.?patch"),
           ("hsdp", r"hsdp"), ("expert_parallel", r"expert"), ("regional_compile", r"compile"),
           ("layerwise_offload", r"layer.?wise"), ("cpu_offload", r"cpu.?offload|model.?level"),
           ("tea_cache", r"tea.?cache"), ("cache_dit", r"cache.?dit"), ("fp8", r"fp8")]
YES = {"✅", "✓", "✔", "yes", "y", "supported"}
NO = {"❌", "✗", "✘", "no", "n", "unsupported", "not supported"}
MAX_FILES = 400


def _column(header: str) -> str | None:
    low = header.lower()
    for key, rx in COLUMNS:
        if re.search(rx, low):
            return key
    return None


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _verdict(cell: str) -> str | None:
    low = cell.strip().strip("*` ").lower()
    if low in YES or any(mark in cell for mark in ("✅", "✓", "✔")):
        return "supported"
    if low in NO or any(mark in cell for mark in ("❌", "✗", "✘")):
        return "unsupported"
    return None


def doc_tables(docs: Path, pipelines: set[str]) -> dict[str, dict[str, tuple[str, str]]]:
    """pipeline -> method -> (docs verdict, 'file:line') from every method table under ``docs``."""
    found: dict[str, dict[str, tuple[str, str]]] = {}
    for path in sorted(docs.rglob("*.md"))[:MAX_FILES]:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        columns: list[str | None] | None = None
        for n, line in enumerate(lines, 1):
            if not line.lstrip().startswith("|"):
                columns = None
                continue
            cells = _cells(line)
            if columns is None:
                keys = [_column(c) for c in cells]
                columns = keys if sum(k is not None for k in keys) >= 2 else None
                continue
            if all(set(c) <= set("-: ") for c in cells):
                continue
            names = [p for p in pipelines if re.search(rf"\b{re.escape(p)}\b", line)]
            for pipeline in names:
                for key, cell in zip(columns, cells):
                    verdict = _verdict(cell) if key else None
                    if verdict and key:
                        found.setdefault(pipeline, {})[key] = (verdict, f"{path.relative_to(docs.parent)}:{n}")
    return found


def docs_disagreements(analyzer, results) -> list[DocsDisagreement]:
    docs = analyzer.located.docs
    if docs is None:
        return []
    tables = doc_tables(docs, {r.pipeline_class for r in results} | {r.pipeline_impl for r in results})
    out: list[DocsDisagreement] = []
    for r in results:
        claims = {**tables.get(r.pipeline_impl, {}), **tables.get(r.pipeline_class, {})}
        for key, (said, where) in claims.items():
            code = r.methods[key]
            if code.status == "unknown" or (said == "supported") == (code.status == "supported"):
                continue
            out.append(DocsDisagreement(pipeline=r.pipeline_class, method=key, docs_say=f"{said} ({where})",
                                        code_says=code.status, evidence=code.evidence))
    return out
