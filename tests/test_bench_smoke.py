"""Smoke tests of the benchmark suite, so that it cannot rot: the in-process benchmarks
(rule evaluation, templates and parsing) report sane figures, and ``python -m bench
--quick`` runs every scenario end to end (servers, load generator, receivers) in well
under a minute. Targets are not asserted here: figures belong to ``bench/``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import micro, rules
from bench.__main__ import main as bench_main
from bench.__main__ import markdown, run_scenarios


def test_rule_evaluation_smoke(tmp_path: Path) -> None:
    sample = rules.events()
    small = rules.cost_per_event(rules.build(10, tmp_path), sample, 0.02)
    larger = rules.cost_per_event(rules.build(1000, tmp_path), sample, 0.02)
    assert 0 < small < 10_000
    assert 0 < larger < 10_000


def test_micro_covers_every_example_and_channel_type() -> None:
    result = micro.measure(0.002)
    names = {json.loads(p.read_text())["metadata"]["event_name"] for p in micro.EVENTS.glob("*")}
    assert set(result["render_us"]) == names == set(result["parse_us"])
    for per_type in result["render_us"].values():
        assert set(per_type) == set(micro.CHANNEL_TYPES)
        assert all(0 < us < 1_000_000 for us in per_type.values())
    assert all(0 < us < 1_000_000 for us in result["parse_us"].values())
    summary = micro.summary(result)
    assert summary["parse_mean_us"] > 0


def test_runner_table_and_json(tmp_path: Path) -> None:
    rows, _details, broken = run_scenarios(["micro"], quick=True)
    assert not broken
    assert len(rows) == 1 + len(micro.CHANNEL_TYPES)
    table = markdown(rows)
    assert table.splitlines()[0].startswith("| scenario | our figure |")
    out = tmp_path / "bench.json"
    assert bench_main(["--quick", "--only", "micro", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["broken"] == [] and len(data["rows"]) == len(rows)


@pytest.mark.timeout(300)
def test_the_whole_suite_runs_quick(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["mode"] == "quick" and data["broken"] == []
    numbered = {row["scenario"].split(".")[0].rstrip("abc") for row in data["rows"]}
    assert numbered == {"1", "2", "3", "4", "5", "6", "7", "8"}, numbered
    [floor] = [row for row in data["rows"] if row["scenario"].startswith("1. durable floor")]
    assert 0 < floor["ratio"] < 2, floor
    assert all(row["ours"] not in ("", "—") for row in data["rows"]), data["rows"]
    # The CPU each costs, so that a missed target can be told from a saturated core.
    for rate in data["details"]["e2e"]["rates"].values():
        assert 0 < rate["router_busy"] <= 2.5 and rate["router_cpu_us_per_event"] > 0, rate
    cpu = data["details"]["delivery"]["cpu_us_per_notification"]
    assert set(cpu) == {"router", "apprise", "bare_client"} and min(cpu.values()) > 0, cpu
