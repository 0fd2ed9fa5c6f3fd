"""Chat channel benchmark: each chat channel's notifications/s against the webhook
channel's, in one run, to the same receiver.

For each channel type (``webhook``, ``teams``, ``discord``, ``google_chat``,
``apprise``) the router routes N ``course_completed`` events into N pending deliveries
on a fresh SQLite store and times its dispatcher delivering them, exactly as
``bench.delivery`` measures the webhook channel (``bench.delivery.run_router``): the
clock runs from the dispatcher's start until every outcome is durable. The receiver
(``bench.delivery``'s, a subprocess on its own core when there are two) answers 200 at
once on every path: the services' own latency and limits are not what is measured, the
router's cost per notification on each channel is. Every channel runs with
``rate_limit: none`` and the same ``concurrency``.

    .venv/bin/python -m bench.chat              # N = 2000 per channel
    .venv/bin/python -m bench.chat --quick      # N = 200: a smoke run

Exits non-zero only when something broke (a notification failed or went missing).
"""

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

import aiohttp

from bench.delivery import Broken, Receiver, _loop_factory, cpu_plan, run_router

RULES = """\
version: 1
channels:
  bench-hook:
    type: {type}
    {target}
    concurrency: {{concurrency}}
    rate_limit: none
    timeout: 10
rules:
  - name: bench
    events: [course_completed]
    notify: [bench-hook]
    template: course_completed
"""

#: Each channel type and how it names the receiver (``{url}`` is its http:// base).
TARGETS = {
    "webhook": 'url: "{{url}}/webhook"',
    "teams": 'url: "{{url}}/teams"',
    "discord": 'url: "{{url}}/discord"',
    "google_chat": 'url: "{{url}}/google_chat?key=bench&token=bench"',
    "apprise": 'urls: ["json://127.0.0.1:{port}/apprise"]',
}


def rules_for(channel_type: str, port: int) -> str:
    """The rules template ``run_router`` formats with ``url`` and ``concurrency``."""
    target = TARGETS[channel_type].format(port=port)
    return RULES.format(type=channel_type, target=target)


async def run(args: argparse.Namespace, receiver: Receiver, plan: str) -> int:
    rows: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await receiver.wait_ready(session)
        for channel_type in args.channels:
            template = rules_for(channel_type, receiver.port)
            rows[channel_type] = await run_router(
                args.n, args.concurrency, receiver.url, args.timeout, template
            )
        counts = await receiver.counts(session)
    print(f"N = {args.n} per channel, concurrency {args.concurrency}, {plan}")
    print()
    print(
        "| channel | delivered | receiver got | seconds | CPU µs/notification"
        " | notifications/s | vs webhook |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = args.n / rows["webhook"]["seconds"] if "webhook" in rows else None
    missing = []
    for channel_type, row in rows.items():
        got = counts.get(f"/{channel_type}", 0)
        if got != args.n:
            missing.append(channel_type)
        rate = args.n / row["seconds"]
        ratio = f"{rate / base:.2f}" if base else "—"
        cpu = row["cpu_seconds"] / args.n * 1e6
        print(
            f"| {channel_type} | {row['ok']} | {got} | {row['seconds']:.3f} | {cpu:,.0f}"
            f" | {rate:,.0f} | {ratio} |"
        )
    if missing:
        print(f"receiver counts differ from {args.n} for: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="notifications per channel (2000)")
    parser.add_argument("--quick", action="store_true", help="N = 200: a smoke run")
    parser.add_argument("--concurrency", type=int, default=16, help="sends in flight (16)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per channel")
    parser.add_argument(
        "--channels",
        type=lambda text: text.split(","),
        default=list(TARGETS),
        help="comma-separated channel types (all); webhook is the reference",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cpus")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 200
    unknown = set(args.channels) - set(TARGETS)
    if unknown or args.n < 1 or args.concurrency < 1:
        parser.error(f"unknown channels {sorted(unknown)}" if unknown else "must be positive")
    # Loopback only: keep requests (inside Apprise) away from any configured proxy.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    logging.basicConfig(level=logging.WARNING)
    receiver_cpus, sender_cpus, plan = cpu_plan(not args.no_pin)
    receiver = Receiver(receiver_cpus)
    receiver.spawn()
    try:
        if sender_cpus:
            os.sched_setaffinity(0, sender_cpus)  # keep the router off the receiver's core
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(run(args, receiver, plan))
    except Broken as exc:
        print(f"broken: {exc}", file=sys.stderr)
        return 1
    finally:
        receiver.stop()


if __name__ == "__main__":
    sys.exit(main())
