"""README's first command (set up and start) works as written on a fresh copy of the repository.

The second (`bash tests/run.sh`) is what CI runs, so it is exercised by every CI run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow(seconds=45)  # scheduled first: see tests/conftest.py

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_readme_gives_the_two_commands():
    commands = readme_commands()
    assert commands[0] == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/omnitune"
    assert commands[1] == "bash tests/run.sh"
    assert "bash tests/run.sh" in (REPO / ".ci" / "run").read_text()


def test_the_setup_and_start_command_works_on_a_fresh_copy(tmp_path):
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    copy = tmp_path / "omnitune"
    for name in files:
        src, dst = REPO / name, copy / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():  # omnitune/server -> ../server: the one installed name
            dst.symlink_to(src.readlink())
        elif src.is_file():
            dst.write_bytes(src.read_bytes())
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "OMNITUNE_WORKSPACE": str(tmp_path / "ws")}
    import os
    env.update({k: v for k, v in os.environ.items() if k.startswith(("PIP_", "PYENV")) or k == "PATH"})
    # a newcomer's pip has a wheel cache too: the real one (HOME is the scratch folder here), not a cold download
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    # pip's byte-compiling of every installed file (scipy, av, ...) is half its CPU here and tests nothing of ours
    env.setdefault("PIP_COMPILE", "false")
    try:  # stdin closed: the stdio server starts, sees end of input and exits cleanly
        proc = subprocess.run(["bash", "-c", readme_commands()[0]], cwd=copy, env=env, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (copy / ".venv" / "bin" / "omnitune").is_file()
        assert (tmp_path / "ws" / "omnitune.db").is_file()  # it started and opened its workspace
    finally:  # 12,000 files: rm's unlinks cost a tenth of pytest's own clean-up of them at a later session's start
        subprocess.run(["rm", "-rf", "--", str(copy / ".venv")], timeout=120, check=False)
