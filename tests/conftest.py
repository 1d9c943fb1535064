"""Shared fixtures: an isolated workspace, simulated GPUs, and an in-memory MCP client."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Vendored: the real 0.30.0 contract (captured from the package) and the fixture model folders (configs only).
REFERENCE = REPO / "tests" / "emulator" / "reference" / "vllm-omni-0.30.0"
FIXTURE_MODELS = REPO / "tests" / "fixtures" / "models"
FAKE_NVML_DIR = REPO / "tests" / "emulator" / "fake_nvml"

H200 = {"name": "NVIDIA H200", "memory_mib": 143771, "compute_capability": [9, 0]}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules marked ``slow(seconds=N)`` first, longest first (stable otherwise): tests/run.sh hands whole modules
    to xdist workers in this order (``--no-loadscope-reorder``: xdist would otherwise hand out the modules with the
    most tests first), so the long ones start at once instead of leaving one worker busy after the others are
    done. N: the module's wall time seen on the 2-core machine, a hint only."""
    def key(item: pytest.Item) -> float:
        slow = item.get_closest_marker("slow")
        return -float(slow.kwargs.get("seconds", 30)) if slow else 0.0
    items.sort(key=key)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's OMNITUNE_* settings or HF cache."""
    import os
    for key in list(os.environ):
        if key.startswith(("OMNITUNE_", "VLLM_EMU_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


@pytest.fixture
def settings(tmp_path: Path):
    from omnitune.tools.settings import Settings
    return Settings(workspace=tmp_path / "workspace")


def write_scenario(path: Path, **fields) -> Path:
    import json
    path.write_text(json.dumps(fields))
    return path


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The vLLM-Omni emulator: a `vllm` shim, its scenario and state dir, and the fake NVML in this process."""
    from tests.emulator.harness import make_emulator
    emu = make_emulator(tmp_path / "emu")
    monkeypatch.syspath_prepend(str(FAKE_NVML_DIR))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    importlib.import_module("pynvml")
    assert Path(sys.modules["pynvml"].__file__).parent == FAKE_NVML_DIR
    for key, value in emu.env.items():
        monkeypatch.setenv(key, value)
    yield emu
    sys.modules.pop("pynvml", None)


@pytest.fixture
def fake_gpus(emulator):
    """Simulated GPUs only: call with the scenario's fields, get the scenario path."""
    def make(**fields) -> Path:
        emulator.write(fields)
        return emulator.scenario_path
    return make
