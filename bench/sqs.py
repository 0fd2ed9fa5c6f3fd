"""The SQS source's end-to-end rate beside ``POST /events``, in one run.

One ``router serve`` (durable SQLite) with an ``sqs`` source on a moto server (moto's
server mode on 127.0.0.1) and one rule that sends every ``course_completed`` event to
the e2e receiver subprocess as a webhook. Phase 1 sends N events as SQS messages (in
batches of ten, several senders at once); phase 2 POSTs N other events to
``/events`` (one per request, several clients at once). Each event carries its send
time (``body.bench_sent``); the receiver records its arrival. The rate of a phase is N
divided by the time from its first send to its last arrival: events/s from send to
delivery. Every event must arrive (losses are reported).

moto is an emulator, not SQS: its figures tell how the source's receive, commit and
delete loop compares with HTTP ingest on the same machine, not what AWS would do.

    .venv/bin/python -m bench.sqs            # 2,000 events per phase
    .venv/bin/python -m bench.sqs --quick    # 200 events per phase (smoke)
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.e2e import EVENT_FILE, Receiver, router_server
from bench.ingest import BenchError, free_port, router_env, tail
from tests.sqs_server import CREDENTIALS, MotoServer, send_all, sqs_client

RULES = """\
version: 1
sources:
  bench-sqs: {source}
channels:
  bench-hook:
    type: webhook
    url: "{url}"
    body: event
    timeout: 10
rules:
  - name: bench-sqs
    events: [course_completed]
    notify: [bench-hook]
"""
SENDERS = 4
DRAIN_TIMEOUT = 120.0


def events(tag: str, count: int) -> list[bytes]:
    template = orjson.loads(EVENT_FILE.read_bytes())
    out = []
    for n in range(count):
        template["metadata"]["request_id"] = f"{tag}-{n}"
        template["body"]["bench_sent"] = time.time()
        out.append(orjson.dumps(template))
    return out


async def arrivals(receiver: Receiver, tag: str, count: int) -> int:
    """Wait (bounded) until ``count`` events of ``tag`` arrived; return how many did."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        stats = await asyncio.to_thread(receiver.get, f"/stats?prefix={tag}-")
        arrived = len(stats["ids"])
        if arrived >= count or time.monotonic() > deadline:
            return arrived
        await asyncio.sleep(0.05)


async def phase_sqs(client: Any, queue: str, receiver: Receiver, count: int) -> dict[str, Any]:
    started = time.monotonic()
    bodies = [body.decode() for body in events("sqs", count)]
    share = (len(bodies) + SENDERS - 1) // SENDERS
    await asyncio.gather(
        *(send_all(client, queue, bodies[i * share : (i + 1) * share]) for i in range(SENDERS))
    )
    sent = time.monotonic() - started
    arrived = await arrivals(receiver, "sqs", count)
    elapsed = time.monotonic() - started
    return {
        "events": count,
        "arrived": arrived,
        "lost": count - arrived,
        "send_s": sent,
        "elapsed_s": elapsed,
        "per_s": arrived / elapsed,
    }


async def phase_http(url: str, receiver: Receiver, count: int) -> dict[str, Any]:
    started = time.monotonic()
    bodies = events("http", count)
    pending = iter(bodies)
    refused = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal refused
        for body in pending:
            async with session.post(
                f"{url}/events", data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                await resp.read()
                refused += resp.status != 202

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(SENDERS * 4)))
    sent = time.monotonic() - started
    arrived = await arrivals(receiver, "http", count)
    elapsed = time.monotonic() - started
    return {
        "events": count,
        "arrived": arrived,
        "lost": count - arrived,
        "refused": refused,
        "send_s": sent,
        "elapsed_s": elapsed,
        "per_s": arrived / elapsed,
    }


async def run(count: int, workdir: Path) -> dict[str, Any]:
    moto = MotoServer(workdir / "moto.log")
    moto.start()
    receiver = Receiver(free_port(), None, workdir / "receiver.log")
    receiver.start()
    router = None
    try:
        async with sqs_client(moto.url) as client:
            queue = (await client.create_queue(QueueName="canvas-live-events-bench"))["QueueUrl"]
            source = {
                "type": "sqs",
                "queue_url": queue,
                "endpoint_url": moto.url,
                "region": "us-east-1",
                "receivers": 4,
                "wait_time_seconds": 1,
            }
            rules = workdir / "rules.yaml"
            rules.write_text(RULES.format(source=json.dumps(source), url=f"{receiver.url}/hook"))
            port = free_port()
            router = router_server(
                rules,
                workdir / "router.db",
                port,
                workdir / "router.log",
                {**router_env("FULL"), **CREDENTIALS},
            )
            router.start(port, None)
            result = {
                "sqs": await phase_sqs(client, queue, receiver, count),
                "http": await phase_http(f"http://127.0.0.1:{port}", receiver, count),
            }
    finally:
        code = router.stop() if router is not None else 0
        receiver.stop()
        moto.stop()
    if code not in (0, -15):
        raise BenchError(f"router exited with {code}:\n{tail(router.log)}")
    result["ratio"] = result["sqs"]["per_s"] / result["http"]["per_s"]
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        "| ingest path | events | arrived | events/s (send -> delivery) |",
        "|---|---:|---:|---:|",
    ]
    for name in ("sqs", "http"):
        r = result[name]
        lines.append(f"| {name} | {r['events']} | {r['arrived']} | {r['per_s']:,.0f} |")
    lines.append(f"\nratio (sqs/http) = {result['ratio']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sqs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=2000, help="events per phase")
    parser.add_argument("--quick", action="store_true", help="200 events per phase (smoke)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    args = parser.parse_args(argv)
    count = 200 if args.quick else args.events
    with tempfile.TemporaryDirectory(prefix="bench-sqs-") as tmp:
        try:
            result = asyncio.run(run(count, Path(tmp)))
        except BenchError as exc:
            print(f"bench.sqs broke: {exc}", file=sys.stderr)
            return 1
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["sqs"]["lost"] == 0 and result["http"]["lost"] == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
