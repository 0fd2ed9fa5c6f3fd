"""Rule evaluation cost per event as the rules file grows: 10, 100, 1,000, 10,000 rules.

Rules have a realistic shape: a few event names or a glob, an equality on an account
or course id (what a university writes per department or course), a numeric
comparison, and some ``if:`` expressions. Evaluation is indexed by event name and by
the first equality condition, so the cost should stay nearly flat.

    .venv/bin/python -m bench.rules            # full run
    .venv/bin/python -m bench.rules --quick    # seconds, for CI

Prints a markdown table and ``ratio (10000 rules / 10 rules) = X.XX (target <= 2)``.
"""

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from router.matching import MatchContext
from router.plugins import load_plugins
from router.rules import RuleSet, load_rules

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "examples" / "events"
TARGET = 2.0


def rule(i: int) -> dict[str, Any]:
    """The i-th rule of a realistic file."""
    kind = i % 4
    if kind == 0:
        return {
            "name": f"completions-{i}",
            "events": ["course_completed", "course_progress"],
            "match": {
                "body.course.id": str(1000 + i),
                "body.progress.requirement_count": {"gt": 0},
            },
            "notify": ["hook"],
        }
    if kind == 1:
        return {
            "name": f"sections-{i}",
            "events": ["course_section_*"],
            "match": {"body.course_id": str(2000 + i), "body.workflow_state": "active"},
            "notify": ["hook"],
        }
    if kind == 2:
        return {
            "name": f"syllabus-{i}",
            "events": ["syllabus_updated"],
            "match": {"body.course_id": str(3000 + i)},
            "if": "body.syllabus_body != body.old_syllabus_body",
            "notify": ["hook"],
        }
    return {
        "name": f"courses-{i}",
        "events": ["course_created", "course_updated"],
        "match": {"body.account_id": str(4000 + i), "body.name": {"regex": "(?i)algebra"}},
        "notify": ["hook"],
    }


def build(count: int, workdir: Path) -> RuleSet:
    rules = [rule(i) for i in range(count)]
    # A few catch-all rules every real file has.
    rules += [
        {"name": "audit", "events": ["*"], "notify": ["hook"]},
        {
            "name": "big-courses",
            "events": ["course_*"],
            "match": {"body.progress.requirement_count": {"gte": 100}},
            "notify": ["hook"],
        },
    ]
    path = workdir / f"rules-{count}.json"  # JSON is YAML
    path.write_text(
        json.dumps({"version": 1, "channels": {"hook": {"type": "webhook"}}, "rules": rules})
    )
    return load_rules(path, load_plugins().channel_types)


def events() -> list[dict[str, Any]]:
    """The example events, some of them aimed at rules in the middle of the file."""
    base = [orjson.loads(p.read_bytes()) for p in sorted(EVENTS.glob("*.json"))]
    aimed = []
    for n, event in enumerate(base):
        hit = copy.deepcopy(event)
        body = hit["body"]
        if "course" in body:
            body["course"]["id"] = str(1000 + 4 * n)
        if "course_id" in body:
            body["course_id"] = str(2001 + 4 * n)
        aimed.append(hit)
    return base + aimed


def cost_per_event(rules: RuleSet, sample: list[dict[str, Any]], seconds: float) -> float:
    contexts = [(e["metadata"]["event_name"], MatchContext(e)) for e in sample]
    for name, ctx in contexts:  # warm the per-name indexes
        rules.evaluate(name, ctx)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for name, ctx in contexts:
            rules.evaluate(name, ctx)
        done += len(contexts)
    return (time.perf_counter() - started) / done * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.2 s per size (CI smoke)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per size")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    seconds = 0.2 if args.quick else args.seconds
    sample = events()
    results: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in (10, 100, 1000, 10_000):
            started = time.perf_counter()
            rules = build(count, Path(tmp))
            load = time.perf_counter() - started
            results[count] = cost_per_event(rules, sample, seconds)
            print(f"  {count:>6} rules: loaded in {load:.2f}s", file=sys.stderr)
    print("| rules | µs per event | vs 10 rules |")
    print("| ---: | ---: | ---: |")
    for count, micros in results.items():
        print(f"| {count:,} | {micros:.1f} | {micros / results[10]:.2f} |")
    ratio = results[10_000] / results[10]
    print(f"\nratio (10000 rules / 10 rules) = {ratio:.2f} (target <= {TARGET:g})")
    if args.json:
        args.json.write_text(json.dumps({"us_per_event": results, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
