"""Per-message costs of the shipped templates and of event validation, in microseconds.

For every example event in ``examples/events/`` and every channel type (webhook, slack,
email), the template the router would pick (``Templates.resolve`` with no rule template)
is rendered through ``Templates.render`` with the same context the dispatcher builds
(``template_context``); and each event's JSON body goes through ``parse_body``, the
ingest path's validation (JSON parse, envelope check, canonical JSON, identity hash).

    .venv/bin/python -m bench.micro            # 0.3 s per measurement
    .venv/bin/python -m bench.micro --quick    # 0.03 s per measurement

No target: figures only.
"""

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from router.events import parse_body
from router.templates import Templates, template_context

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "examples" / "events"
TEMPLATES = ROOT / "templates"
CHANNEL_TYPES = ("webhook", "slack", "email")


def per_call_us(call: Callable[[], Any], seconds: float) -> float:
    """Mean µs per call over about ``seconds`` (after one warm-up call)."""
    call()
    done, started = 0, time.perf_counter()
    batch = 10
    while True:
        for _ in range(batch):
            call()
        done += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / done * 1e6


def measure(seconds: float) -> dict[str, Any]:
    """{"render": {event: {type: µs}}, "parse": {event: µs}, "templates": {...}} ."""
    templates = Templates(TEMPLATES)
    render: dict[str, dict[str, float]] = {}
    chosen: dict[str, dict[str, str]] = {}
    parse: dict[str, float] = {}
    for path in sorted(EVENTS.glob("*.json")):
        raw = path.read_bytes()
        event = orjson.loads(raw)
        name = event["metadata"]["event_name"]
        parse[name] = per_call_us(
            lambda raw=raw: parse_body(raw, ndjson=False, max_items=1000), seconds
        )
        render[name], chosen[name] = {}, {}
        for channel_type in CHANNEL_TYPES:
            template = templates.resolve(None, name, channel_type)
            context = template_context(
                event, event_id="bench", rule="bench", channel=f"bench-{channel_type}"
            )
            chosen[name][channel_type] = template
            render[name][channel_type] = per_call_us(
                lambda t=template, c=context: templates.render(t, c), seconds
            )
    return {"render_us": render, "parse_us": parse, "templates": chosen}


def summary(result: dict[str, Any]) -> dict[str, float]:
    """Means and maxima over the events."""
    out: dict[str, float] = {}
    for channel_type in CHANNEL_TYPES:
        values = [r[channel_type] for r in result["render_us"].values()]
        out[f"render_{channel_type}_mean_us"] = sum(values) / len(values)
        out[f"render_{channel_type}_max_us"] = max(values)
    parse = list(result["parse_us"].values())
    out["parse_mean_us"] = sum(parse) / len(parse)
    out["parse_max_us"] = max(parse)
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        "| event | parse_body µs | " + " | ".join(f"render {t} µs" for t in CHANNEL_TYPES) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in CHANNEL_TYPES) + " |",
    ]
    for name, per_type in result["render_us"].items():
        cells = " | ".join(f"{per_type[t]:.1f}" for t in CHANNEL_TYPES)
        lines.append(f"| {name} | {result['parse_us'][name]:.1f} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.03 s per measurement")
    parser.add_argument("--seconds", type=float, default=0.3, help="time per measurement")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    result = measure(0.03 if args.quick else args.seconds)
    result["summary"] = summary(result)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
