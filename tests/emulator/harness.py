"""How tests start the emulator exactly as omnitune starts vLLM-Omni: through a `vllm` executable."""

from __future__ import annotations

import json
import os
import stat
import subprocess
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
        from tests.emulator.world import _merge
        base: dict = json.loads((SCENARIOS / f"{scenario}.json").read_text()) if isinstance(scenario, str) \
            else scenario or {}
        self.scenario = _merge(base, overrides)  # nested objects (cost, model ...) merge field by field
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


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    """A running emulated server started through the shim (for the emulator's own tests and benchmark)."""
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    healthy_s: float
    began: float = 0.0

    def wait_healthy(self, timeout: float = 20.0) -> Served:
        """Bounded wait for /health == 200 (sets ``healthy_s``, from spawn); raises with the log on exit or hang."""
        import time
        import urllib.error
        import urllib.request
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        self.healthy_s = time.perf_counter() - self.began
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"emulator not healthy (exit {self.proc.returncode}):\n{self.log.read_text()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> int:
        import signal
        import subprocess
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group: the leader and its workers
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        return self.proc.returncode


def start(emu: Emulator, model: str, *args: str, env: dict | None = None, wait: bool = True,
          timeout: float = 20.0) -> Served:
    """`vllm serve MODEL --omni --port P ...` in its own process group; by default waits for /health == 200."""
    import subprocess
    import time
    port = free_port()
    log = emu.root / f"serve-{port}.log"
    full_env = {**os.environ, **emu.env, **(env or {})}
    began = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen([str(emu.shim), "serve", model, "--omni", "--port", str(port), "--host", "127.0.0.1",
                                 *args], stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    served = Served(proc, port, log, 0.0, began)
    if wait:
        served.wait_healthy(timeout)
    return served


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01):
    """Poll ``predicate`` until it returns something truthy (that value) or fail after ``timeout`` seconds."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)
