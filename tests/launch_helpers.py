"""Shared by the lifecycle, benchmark and tune tests: settings pointing at the emulator, process counting."""

from __future__ import annotations

from pathlib import Path

import psutil

from omnitune.tools.settings import Settings
from tests.conftest import FIXTURE_MODELS, H200

ZIMAGE = str(FIXTURE_MODELS / "tiny-zimage")
QWEN = str(FIXTURE_MODELS / "tiny-qwenimage")
WAN = str(FIXTURE_MODELS / "tiny-wan")


def emulator_settings(emulator, tmp_path: Path, **overrides) -> Settings:
    return Settings(workspace=tmp_path / "workspace", vllm=str(emulator.shim),
                    model_roots=[FIXTURE_MODELS, tmp_path], **overrides)


def world(gpus: int = 1, **fields) -> dict:
    """A scenario with ``gpus`` H200s and quick simulated timings."""
    base = {"gpus": [H200] * gpus, "cost": {"startup_s": 0.1, "step_s_per_megapixel": 0.002}}
    for key, value in fields.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def emulator_processes(emulator) -> list[psutil.Process]:
    """Live processes started from this test's emulator shim or its workers (found, never killed, by cmdline)."""
    found = []
    shim = str(emulator.shim)
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = p.info["cmdline"] or []
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if shim in cmd or any(shim in c for c in cmd):
                found.append(p)
                found += [c for c in p.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            continue
    return found
