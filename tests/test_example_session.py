"""examples/agent_session.py, the newcomer's first run, works end to end against the emulator: every call
returns within 45 s with its default wait, and the pictures README shows come out as PNGs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow(seconds=55)  # scheduled first: see tests/conftest.py

REPO = Path(__file__).resolve().parents[1]


def test_the_example_session_writes_a_report_with_the_table_and_the_winning_command(tmp_path):
    report_path = tmp_path / "report.md"
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "agent_session.py"), "--report", str(report_path),
                           "--pictures", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = [(m.group(2), float(m.group(1))) for m in re.finditer(r"^\[ *([\d.]+) s\] (\w+) -> ok$", proc.stderr, re.M)]
    assert {"benchmark", "compare_outputs", "tune_start", "job_wait", "show_picture"} <= {name for name, _ in calls}
    assert max(seconds for _, seconds in calls) < 45, sorted(calls, key=lambda c: -c[1])[:3]
    for name in ("contact-sheet", "pareto"):
        with Image.open(tmp_path / f"example-{name}.png") as img:
            img.load()  # decodes: a broken PNG raises
            assert img.format == "PNG" and 600 <= max(img.size) <= 1200
    report = report_path.read_text()
    assert report == proc.stdout
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in report.splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert [r[0] for r in rows] == ["baseline (eager)", "torch.compile", "compile + FP8",
                                    "compile + FP8 + CFG parallel (2 GPUs)", "... + TeaCache 0.2"]
    assert rows[0][2] == "1.00x" and rows[0][5] == "baseline" and rows[1][5] == "identical"  # compile: same pixels
    assert rows[2][5] == rows[3][5] == "lossless-equivalent" and float(rows[2][4]) < float(rows[1][4])  # FP8: less
    # The winner is the fastest row whose quality holds (a decision of the session, whatever the loaded clock says).
    good = [r for r in rows if r[5] in ("baseline", "identical", "lossless-equivalent", "acceptable")]
    fastest = min(good, key=lambda r: float(r[1]))
    winner = re.search(r"Winner: \*\*(.+?)\*\*, ([\d.]+)x faster", report)
    assert winner and winner.group(1) == fastest[0] and f"{winner.group(2)}x" == fastest[2]
    command = report.split("```bash\n")[1].split("\n```")[0]
    assert command.startswith("vllm serve <fixtures>/tiny-qwenimage --omni")
    assert ("--enforce-eager" in command) == (fastest[0] == "baseline (eager)")
    tuned = re.search(r"Automatic tune \(`tune_start`, (\d+) launches\): winner \*\*(.+?)\*\*, ([\d.]+)x", report)
    assert tuned and 1 < int(tuned.group(1)) <= 12
    assert "vllm serve <fixtures>/tiny-qwenimage --omni" in report.split("```bash\n")[2]
