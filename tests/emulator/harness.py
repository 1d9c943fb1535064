"""How tests start the emulator exactly as omnitune starts vLLM-Omni: through a `vllm` executable."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCENARIOS = HERE / "scenarios"
FAKE_NVML = HERE / "fake_nvml"


def make_vllm_shim(directory: Path) -> Path:
    """An executable named `vllm` running the emulator with this interpreter (it needs numpy, Pillow, PyAV)."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "vllm"
    shim.write_text(f"#!{sys.executable}\n"
                    "import sys\n"
                    f"sys.path.insert(0, {str(REPO)!r})\n"
                    "from tests.emulator.server import main\n"
                    "main()\n")
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return shim


@dataclass
class Emulator:
    root: Path
    shim: Path
    scenario_path: Path
    state_dir: Path
    scenario: dict = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """Variables both the emulator and omnitune (through the fake NVML) read."""
        return {"VLLM_EMU_SCENARIO": str(self.scenario_path), "VLLM_EMU_STATE_DIR": str(self.state_dir)}

    def write(self, scenario: dict | str | None = None, **overrides) -> dict:
        """Set the world: a dict, or the name of a file in scenarios/, plus top-level overrides."""
        if isinstance(scenario, str):
            scenario = json.loads((SCENARIOS / f"{scenario}.json").read_text())
        self.scenario = {**(scenario or {}), **overrides}
        self.scenario_path.write_text(json.dumps(self.scenario))
        return self.scenario

    def live_pids(self) -> list[int]:
        """Emulated servers whose state files say they hold GPU memory and that are still alive."""
        pids = []
        for f in self.state_dir.glob("*.json"):
            pid = int(json.loads(f.read_text())["pid"])
            try:
                os.kill(pid, 0)
                pids.append(pid)
            except OSError:
                pass
        return pids


def make_emulator(root: Path) -> Emulator:
    state = root / "emu-state"
    state.mkdir(parents=True, exist_ok=True)
    emu = Emulator(root=root, shim=make_vllm_shim(root / "bin"), scenario_path=root / "scenario.json", state_dir=state)
    emu.write({})
    return emu
