"""tests/install_real_vllm.sh installs once: the marker follows a working install only, a partial one is redone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "install_real_vllm.sh"

# A stand-in `python3`: `-m venv DIR` makes a venv whose pip and vllm only record their calls.
FAKE_PYTHON = """#!/usr/bin/env bash
set -e
[ "$1" = "-m" ] && [ "$2" = "venv" ] || exit 9
mkdir -p "$3/bin"
cat > "$3/bin/pip" <<'P'
#!/usr/bin/env bash
echo "pip $*" >> "$CALLS"
[ -z "$FAIL_PIP" ]
P
cat > "$3/bin/vllm" <<'V'
#!/usr/bin/env bash
echo "vllm $*" >> "$CALLS"
[ -z "$FAIL_HELP" ]
V
chmod +x "$3/bin/pip" "$3/bin/vllm"
"""


def run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    full = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHON": str(fake), "CALLS": str(tmp_path / "calls"),
            "OMNITUNE_REAL_VLLM_VENV": str(tmp_path / "venv"), **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=60)


def calls(tmp_path: Path) -> list[str]:
    f = tmp_path / "calls"
    return f.read_text().splitlines() if f.exists() else []


def test_installs_once_then_reuses(tmp_path):
    first = run(tmp_path)
    assert first.returncode == 0, first.stderr
    assert calls(tmp_path) == ["pip install -q --disable-pip-version-check torch===2.13.0 torchvision==0.28.0 "
                               "vllm==0.30.0 vllm-omni==0.30.0", "vllm serve --omni --help"]
    assert (tmp_path / "venv" / ".omnitune-real-vllm-ok").is_file()
    second = run(tmp_path)
    assert second.returncode == 0 and len(calls(tmp_path)) == 2  # nothing installed the second time


def test_a_failed_check_leaves_no_marker_and_the_next_run_reinstalls(tmp_path):
    broken = run(tmp_path, FAIL_HELP="1")
    assert broken.returncode != 0 and not (tmp_path / "venv" / ".omnitune-real-vllm-ok").exists()
    again = run(tmp_path)
    assert again.returncode == 0 and [c.split()[0] for c in calls(tmp_path)] == ["pip", "vllm", "pip", "vllm"]


def test_a_failed_pip_install_leaves_no_marker(tmp_path):
    assert run(tmp_path, FAIL_PIP="1").returncode != 0
    assert not (tmp_path / "venv" / ".omnitune-real-vllm-ok").exists()
    assert calls(tmp_path) == [calls(tmp_path)[0]] and calls(tmp_path)[0].startswith("pip install")
