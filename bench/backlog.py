"""Backlog: the webhook receiver is down while N events arrive, then comes back.

``router serve`` (durable: SQLite WAL, ``synchronous=FULL``; short retry backoff so
the drain is not dominated by waiting: ``ROUTER_BACKOFF_BASE=0.2``,
``ROUTER_BACKOFF_CAP=2``, ``ROUTER_MAX_ATTEMPTS=1000``) routes every event to one
webhook. Phases, one router process throughout:

1. reference: receiver up, ``--reference`` events posted as fast as ``--connections``
   keep-alive connections allow (closed loop); ingest rate = events / seconds;
2. backlog: receiver stopped (connection refused, deliveries retry), N events posted
   the same way; the router's RSS (``VmRSS`` of its process and children, from
   ``/proc``) is sampled every 50 ms; ingest rate as above;
3. drain: receiver started again; drain rate = backlog events / seconds until the
   receiver has seen every one of them;
4. reference again: receiver up, backlog drained, ``--reference`` more events.

The reference rate is the mean of phases 1 and 4. The machine's speed wanders over
the minutes between them (single 20,000-event references have ranged from 5,000 to
8,100/s on one machine): a reference on one side only would credit or blame the backlog
for that drift, one on each side cancels a linear drift.

    .venv/bin/python -m bench.backlog             # N = 200,000
    .venv/bin/python -m bench.backlog --quick     # N = 5,000

Targets: max RSS < 200 MB; ingest rate during the backlog no more than 20 % below the
reference. Exits non-zero only when something broke, never because a target was missed.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.e2e import Receiver, _split, router_server
from bench.ingest import BenchError, cpu_plan, free_port, router_env, tail

ROOT = Path(__file__).resolve().parent.parent
EVENT_FILE = ROOT / "examples" / "events" / "course_completed.json"
TARGET_RSS_MB = 200.0
TARGET_DROP = 0.20
REQUEST_TIMEOUT = 30.0

RULES = """\
version: 1
channels:
  bench-hook:
    type: webhook
    url: "{url}"
    body: event
    timeout: 5
rules:
  - name: bench-backlog
    events: [course_completed]
    notify: [bench-hook]
"""


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` and its direct children, in kB (0 when gone)."""
    total = 0
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kb = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


async def post_n(url: str, tag: str, n: int, connections: int) -> dict[str, Any]:
    """Closed loop: ``connections`` workers post until ``n`` events are sent."""
    head, middle, end = _split(orjson.loads(EVENT_FILE.read_bytes()))
    headers = {"Content-Type": "application/json"}
    counter = iter(range(n))
    ok, other = 0, 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal ok, other
            for i in counter:
                rid = f"{tag}-{i}".encode()
                body = b"".join((head, rid, middle, repr(time.time()).encode(), end))
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 202:
                        ok += 1
                    else:
                        other += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return {"sent": n, "ok": ok, "other": other, "seconds": elapsed, "rate": ok / elapsed}


async def run(n: int, reference: int, connections: int, drain_timeout: float, workdir: Path):
    server_cpus, generator_cpus, plan = cpu_plan(True)
    if generator_cpus is not None:
        os.sched_setaffinity(0, generator_cpus)
    receiver = Receiver(free_port(), generator_cpus, workdir / "receiver.log")
    rules = workdir / "rules.yaml"
    rules.write_text(RULES.format(url=f"{receiver.url}/hook"))
    env = router_env("FULL")
    env.update(ROUTER_BACKOFF_BASE="0.2", ROUTER_BACKOFF_CAP="2", ROUTER_MAX_ATTEMPTS="1000")
    port = free_port()
    router = router_server(rules, workdir / "router.db", port, workdir / "router.log", env)
    url = f"http://127.0.0.1:{port}/events"
    out: dict[str, Any] = {"cpus": plan, "n": n, "reference_n": reference}
    receiver.start()
    sampler: RssSampler | None = None
    try:
        router.start(port, server_cpus)
        assert router.proc is not None
        pid = router.proc.pid
        await post_n(url, "warm", min(500, reference), connections)
        print(f"  backlog: reference, receiver up, {reference} events", flush=True)
        out["reference"] = await post_n(url, "ref", reference, connections)
        out["rss_before_mb"] = rss_kb(pid) / 1024
        # Let the reference deliveries finish so the backlog starts empty.
        deadline = time.monotonic() + drain_timeout
        while receiver.get("/count")["distinct"] < reference + min(500, reference):
            if time.monotonic() > deadline:
                raise BenchError("reference deliveries did not finish")
            await asyncio.sleep(0.1)
        receiver.stop()
        print(f"  backlog: receiver down, {n} events", flush=True)
        sampler = RssSampler(pid)
        sampler.start()
        out["backlog"] = await post_n(url, "bl", n, connections)
        out["rss_after_ingest_mb"] = rss_kb(pid) / 1024
        print("  backlog: receiver up, draining", flush=True)
        started = time.perf_counter()
        receiver.start()
        deadline = time.monotonic() + drain_timeout
        seen = 0
        while True:
            seen = len(receiver.get("/stats?prefix=bl-")["ids"])
            if seen >= out["backlog"]["ok"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        drain = time.perf_counter() - started
        sampler.stop()
        out["drain"] = {
            "delivered": seen,
            "expected": out["backlog"]["ok"],
            "seconds": drain,
            "rate": seen / drain if drain else 0.0,
            "complete": seen >= out["backlog"]["ok"],
        }
        out["max_rss_mb"] = sampler.peak_kb / 1024
        out["rss_samples"] = sampler.samples
        print(f"  backlog: reference again, receiver up, {reference} events", flush=True)
        out["reference_after"] = await post_n(url, "ref-after", reference, connections)
    finally:
        if sampler is not None:
            sampler.stop()
        code = router.stop()
        receiver.stop()
    if code not in (0, -15):
        raise BenchError(f"router exited with {code}:\n{tail(router.log)}")
    ref = (out["reference"]["rate"] + out["reference_after"]["rate"]) / 2
    out["reference_rate"] = ref
    out["ingest_drop"] = 1 - out["backlog"]["rate"] / ref if ref else 0.0
    return out


def table(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            "| figure | value |",
            "| --- | ---: |",
            f"| ingest rate, receiver up ({r['reference']['ok']} events before,"
            f" {r['reference_after']['ok']} after) | {r['reference']['rate']:,.0f}/s and"
            f" {r['reference_after']['rate']:,.0f}/s: mean {r['reference_rate']:,.0f}/s |",
            f"| ingest rate, receiver down ({r['backlog']['ok']} events) |"
            f" {r['backlog']['rate']:,.0f}/s |",
            f"| ingest drop during backlog | {r['ingest_drop'] * 100:.1f} % |",
            f"| max router RSS during backlog | {r['max_rss_mb']:.1f} MB |",
            f"| drain after recovery | {r['drain']['delivered']} in"
            f" {r['drain']['seconds']:.1f}s = {r['drain']['rate']:,.0f}/s |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.backlog",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="N = 5,000, reference 2,000")
    parser.add_argument("--n", type=int, default=200_000, help="events while the receiver is down")
    parser.add_argument("--reference", type=int, default=20_000, help="events with receiver up")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.reference, args.drain_timeout = 5_000, 2_000, 60.0
    with tempfile.TemporaryDirectory(prefix="router-backlog-") as tmp:
        try:
            result = asyncio.run(
                run(args.n, args.reference, args.connections, args.drain_timeout, Path(tmp))
            )
        except (BenchError, OSError, aiohttp.ClientError, TimeoutError) as exc:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    problems = []
    phases = ("reference", "backlog", "reference_after")
    if any(result[phase]["other"] for phase in phases):
        problems.append("non-202 answers")
    if not result["drain"]["complete"]:
        problems.append("backlog did not drain within the timeout")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
