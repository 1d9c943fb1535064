"""Markdown renderings of the support table and one model's report (for humans and agents that prefer text)."""

from __future__ import annotations

from omnitune.tools.capabilities.report import METHOD_KEYS, CapabilityReport, MethodSupport, SupportTable

MARK = {"supported": "yes", "unsupported": "-", "rejected": "REJECTS", "unknown": "?"}
# An allowed method whose effect is not certain (Cache-DiT left to the cache-dit library's adapters).
EFFECT = {"yes": "", "no": " (no effect)", "unknown": " (effect?)"}


def _cell(m: MethodSupport) -> str:
    mark = MARK.get(m.status, m.status)
    if m.status == "supported" and m.takes_effect:
        mark += EFFECT.get(m.takes_effect, "")
    return mark


def support_markdown(table: SupportTable) -> str:
    head = ["pipeline", "DiT", *METHOD_KEYS]
    lines = [f"# vLLM-Omni {table.vllm_omni_version}: what each pipeline supports",
             "", f"Read from {table.vllm_omni_path} ({table.located_via}). yes = supported, - = not supported, "
             "REJECTS = the model raises when asked, ? = unknown (see omnitune://support/{pipeline} for evidence). "
             "For Cache-DiT, yes = vLLM-Omni lets the server run with it; (effect?) = whether it caches anything is "
             "up to the cache-dit library's built-in adapters (benchmark and compare outputs).",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = [_cell(row.methods[k]) if k in row.methods else "?" for k in METHOD_KEYS]
        lines.append(f"| {row.pipeline_class} | {row.dit_class or row.error or '?'} | " + " | ".join(cells) + " |")
    lines += ["", f"Cache backends: {', '.join(table.cache_backends)}.",
              f"Quantization methods (vllm-omni's own; vLLM's fp8 etc. too): {', '.join(table.quantization_methods)}."]
    return "\n".join(lines) + "\n"


def report_markdown(report: CapabilityReport) -> str:
    lines = [f"# {report.pipeline_class} ({report.pipeline_impl}) in vLLM-Omni {report.vllm_omni_version}",
             "", f"DiT: {report.dit_class or 'unresolved'} ({report.dit_module or '-'})", "",
             "| method | status | evidence | notes |", "|---|---|---|---|"]
    for key, m in report.methods.items():
        lines.append(f"| {key} | {m.status} | {', '.join(m.evidence[:3])} | {m.notes} |")
        if m.takes_effect is not None:
            lines.append(f"| {key}: takes effect | {m.takes_effect} | {', '.join(m.effect_evidence[:3])} "
                         f"| {m.effect_notes} |")
    if report.constraints:
        lines += ["", "## Constraints"] + [f"- {c.description} ({', '.join(c.evidence)})" for c in report.constraints]
    return "\n".join(lines) + "\n"
