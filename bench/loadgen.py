"""A small asyncio HTTP load generator, the fallback of ``bench/ingest.py`` when ``wrk``
is not installed.

N concurrent keep-alive connections each POST in a closed loop for a fixed duration;
every request gets a distinct body (a per-request id spliced into one JSON field) and
its latency is recorded. After the deadline no new request starts; those in flight
finish (each bounded by ``--timeout``). Prints one JSON object on stdout.

    python -m bench.loadgen --url http://127.0.0.1:8080/events \\
        --body examples/events/course_completed.json --connections 32 --duration 10
"""

import argparse
import asyncio
import itertools
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

MARKER = "@@BENCH_REQUEST_ID@@"
DEFAULT_FIELD = "metadata.request_id"


def body_parts(path: Path, field: str = DEFAULT_FIELD) -> tuple[bytes, bytes]:
    """Split a JSON document around ``field`` so each request can splice in its own id:
    ``prefix + id + suffix`` is the document with that field's value replaced."""
    document = json.loads(path.read_text())
    node = document
    *parents, leaf = field.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = MARKER
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    prefix, suffix = text.split(MARKER)
    return prefix.encode(), suffix.encode()


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = min(len(sorted_values), max(1, math.ceil(pct / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


async def run(
    url: str,
    prefix: bytes,
    suffix: bytes,
    *,
    tag: str,
    connections: int,
    duration: float,
    timeout: float,
    expect: int,
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    numbers = itertools.count()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            while time.perf_counter() < deadline:
                body = prefix + f"{tag}-{next(numbers)}".encode() + suffix
                began = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                except Exception as exc:  # counted, reported, and the run goes on
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - began)
                statuses[status] += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    answered = sum(statuses.values())
    sent = next(numbers)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return {
        "generator": "loadgen.py",
        "duration_s": elapsed,
        "sent": sent,
        "answered": answered,
        "ok": statuses.get(expect, 0),
        "unexpected_status": answered - statuses.get(expect, 0),
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "unanswered": sent - answered,
        "rps": answered / elapsed if elapsed else 0.0,
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True, help="JSON file to POST")
    parser.add_argument("--field", default=DEFAULT_FIELD, help="dotted field varied per request")
    parser.add_argument("--tag", default="bench", help="prefix of the per-request ids")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request limit (s)")
    parser.add_argument("--expect", type=int, default=202, help="the status that counts as ok")
    args = parser.parse_args(argv)
    prefix, suffix = body_parts(args.body, args.field)
    result = asyncio.run(
        run(
            args.url,
            prefix,
            suffix,
            tag=args.tag,
            connections=args.connections,
            duration=args.duration,
            timeout=args.timeout,
            expect=args.expect,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
