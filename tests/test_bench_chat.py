"""Smoke run of ``python -m bench.chat``, so that it cannot rot: every chat channel and
the webhook reference deliver every notification. (No figure is asserted.)"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_chat_benchmark_smoke() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.chat", "--n", "60", "--no-pin"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][2:]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == [
        "webhook",
        "teams",
        "discord",
        "google_chat",
        "apprise",
    ]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1] == cells[2] == "60", row  # delivered, and the receiver got them
