"""Smoke test of bench/sqs.py, so that it cannot rot: both ingest paths deliver every
event through a real router, moto server and receiver. Figures belong to bench/."""

import json
from pathlib import Path

import pytest

from bench import sqs


@pytest.mark.timeout(240)
def test_sqs_benchmark_runs_quick(tmp_path: Path) -> None:
    out = tmp_path / "sqs.json"
    assert sqs.main(["--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    for phase in ("sqs", "http"):
        assert data[phase]["arrived"] == data[phase]["events"] == 200, data
        assert data[phase]["per_s"] > 0
    assert data["ratio"] > 0
