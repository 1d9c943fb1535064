"""examples/agent_session.py, the newcomer's first run, works end to end against the emulator."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_example_session_writes_a_report_with_the_table_and_the_winning_command(tmp_path):
    report_path = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "agent_session.py"), "--report", str(report_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = report_path.read_text()
    assert report == proc.stdout
    rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0].strip("| ") for r in rows][0] == "baseline (eager)" and len(rows) == 5
    speedups = [float(r.split(" | ")[2].rstrip("x")) for r in rows]
    assert speedups[0] == 1.0 and speedups[1] > 1.0 and speedups[3] > speedups[2] > speedups[1]
    winner = re.search(r"Winner: \*\*(.+?)\*\*, ([\d.]+)x faster", report)
    assert winner and float(winner.group(2)) > 1.5
    command = report.split("```bash\n")[1].split("\n```")[0]
    assert command.startswith("vllm serve <fixtures>/tiny-qwenimage --omni")
