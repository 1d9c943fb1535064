"""Where a vllm-omni checkout's docs disagree with its code (only when a checkout with docs/ is located)."""

from __future__ import annotations


def docs_disagreements(analyzer, results) -> list:
    return []
