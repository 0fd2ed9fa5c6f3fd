"""End-to-end latency: ``POST /events`` on a running ``router serve`` to a webhook receiver.

``router serve`` (durable: SQLite WAL, ``synchronous=FULL``) runs with one rule that
sends every ``course_completed`` event to a local aiohttp receiver (a subprocess) as a
webhook whose body is the event itself. An open-loop generator in this process posts
at a FIXED offered rate (default 500 then 1,000 events/s), whatever the answers' pace:
each event carries its send time (``body.bench_sent``, wall clock) and a distinct
``metadata.request_id``. The receiver records, per request id, arrival time minus send
time: the latency from the POST to the delivered webhook (it includes the ingest
answer, so it bounds accepted->delivered from above). Every event answered 202 must
arrive (losses = 202'd ids the receiver never saw within the drain timeout). The router's
CPU time (all its threads, from ``/proc``) from the first POST of a rate until its last
delivery arrived tells how busy its core was and what an event cost: when the core is
near 100 %, the latency is a queue's, and the rate is past what the machine can do.

    .venv/bin/python -m bench.e2e                   # 20 s per rate
    .venv/bin/python -m bench.e2e --quick           # 3 s per rate
    .venv/bin/python -m bench.e2e --rates 1000 --duration 10 --json out.json

Target: p99 < 50 ms at 1,000 events/s, zero losses. Exits non-zero only when something
broke (a process did not start, a request failed), never because a target was missed.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench.bare_server import serve
from bench.ingest import (
    ROOT,
    BenchError,
    Server,
    cpu_plan,
    cpu_seconds,
    free_port,
    pinned,
    router_argv,
    router_env,
    tail,
)
from bench.loadgen import percentile

EVENT_FILE = ROOT / "examples" / "events" / "course_completed.json"
TARGET_P99_MS = 50.0
TARGET_RATE = 1000
WARMUP_SECONDS = 1.0
DRAIN_TIMEOUT = 15.0
REQUEST_TIMEOUT = 10.0

RULES = """\
version: 1
channels:
  bench-hook:
    type: webhook
    url: "{url}"
    body: event
    timeout: 10
rules:
  - name: bench-e2e
    events: [course_completed]
    notify: [bench-hook]
"""


# -- the receiver (its own process) ---------------------------------------------------


def serve_receiver(port: int) -> None:
    """Record arrival - ``body.bench_sent`` per ``metadata.request_id``; answer 204.

    ``GET /stats?prefix=P`` returns ``{"count", "ids": {id: latency_ms}}`` for ids that
    start with P; ``GET /count`` returns the number of requests."""
    latency: dict[str, float] = {}
    total = 0

    async def post(request: web.Request) -> web.Response:
        nonlocal total
        data = await request.read()
        arrived = time.time()
        total += 1
        with suppress(ValueError, KeyError, TypeError):
            event = orjson.loads(data)
            rid = event["metadata"]["request_id"]
            sent = event["body"].get("bench_sent")
            latency.setdefault(rid, (arrived - sent) * 1000 if sent else -1.0)
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        ids = {k: v for k, v in latency.items() if k.startswith(prefix)}
        return web.Response(body=orjson.dumps({"count": total, "ids": ids}))

    async def count(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"count": total, "distinct": len(latency)}))

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/hook", post)
    app.router.add_get("/stats", stats)
    app.router.add_get("/count", count)
    serve(app, port)


class Receiver:
    """The receiver subprocess, on a fixed port so it can be stopped and started again."""

    def __init__(self, port: int, cpus: set[int] | None, log: Path) -> None:
        self.port, self.cpus, self.log = port, cpus, log
        self.url = f"http://127.0.0.1:{port}"
        self.server = Server(
            "receiver",
            [sys.executable, "-m", "bench.e2e", "--serve-receiver", str(port)],
            dict(os.environ),
            log,
        )

    def start(self) -> None:
        # Server waits for /healthz; the receiver has none, so poll /count ourselves.
        with open(self.log, "ab") as log:
            self.server.proc = subprocess.Popen(
                self.server.argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=pinned(self.cpus),
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.server.proc.poll() is not None:
                raise BenchError(f"receiver exited while starting:\n{tail(self.log)}")
            try:
                self.get("/count")
                return
            except OSError:
                time.sleep(0.05)
        raise BenchError("receiver did not start within 20s")

    def get(self, path: str) -> Any:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as resp:  # loopback
            return orjson.loads(resp.read())

    def stop(self) -> None:
        self.server.stop()


def router_server(rules: Path, db: Path, port: int, log: Path, env: dict[str, str]) -> Server:
    return Server("router", router_argv(rules, str(db), port), env, log)


# -- open-loop generator ---------------------------------------------------------------


async def open_loop(
    url: str, tag: str, rate: float, duration: float, template: dict[str, Any]
) -> dict[str, Any]:
    """POST ``rate`` events/s for ``duration`` s on a fixed schedule; never waits for
    answers before sending the next one. Returns the ids answered 202 and the rest."""
    accepted: list[str] = []
    failures: dict[str, int] = {}
    late = 0
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    headers = {"Content-Type": "application/json"}
    head, middle, end = _split(template)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(rid: str) -> None:
            body = b"".join((head, rid.encode(), middle, repr(time.time()).encode(), end))
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 202:
                        accepted.append(rid)
                    else:
                        failures[f"HTTP {resp.status}"] = failures.get(f"HTTP {resp.status}", 0) + 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = type(exc).__name__
                failures[key] = failures.get(key, 0) + 1

        total = int(rate * duration)
        tasks = []
        started = time.monotonic()
        for i in range(total):
            due = started + i / rate
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.005:
                late += 1
            tasks.append(asyncio.create_task(one(f"{tag}-{i}")))
        send_seconds = time.monotonic() - started
        await asyncio.gather(*tasks)
    return {
        "offered_rate": rate,
        "sent": total,
        "send_seconds": send_seconds,
        "achieved_send_rate": total / send_seconds if send_seconds else 0.0,
        "late_sends": late,
        "accepted": accepted,
        "failures": failures,
    }


def _split(template: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """The event as ``head + id + middle + send time + tail`` (distinct
    ``metadata.request_id``, send time in ``body.bench_sent``)."""
    event = json.loads(json.dumps(template))
    event["metadata"]["request_id"] = "@@ID@@"
    event["body"]["bench_sent"] = "@@SENT@@"
    text = json.dumps(event, separators=(",", ":"))
    head, rest = text.split("@@ID@@")
    middle, tail_ = rest.split('"@@SENT@@"')
    return head.encode(), middle.encode(), tail_.encode()


# -- one rate ------------------------------------------------------------------------


async def run_rate(
    router_url: str, router_pid: int, receiver: Receiver, tag: str, rate: float, duration: float
) -> dict[str, Any]:
    template = orjson.loads(EVENT_FILE.read_bytes())
    cpu_before, started = cpu_seconds(router_pid), time.monotonic()
    load = await open_loop(f"{router_url}/events", tag, rate, duration, template)
    accepted = set(load.pop("accepted"))
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        stats = await asyncio.to_thread(receiver.get, f"/stats?prefix={tag}-")
        arrived = stats["ids"]
        missing = accepted - arrived.keys()
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    # From the first POST until the last delivery arrived (or the drain gave up).
    cpu, elapsed = cpu_seconds(router_pid) - cpu_before, time.monotonic() - started
    latencies = sorted(v for k, v in arrived.items() if k in accepted)
    return {
        **load,
        "router_cpu_seconds": cpu,
        "router_busy": cpu / elapsed if elapsed > 0 else 0.0,
        "router_cpu_us_per_event": cpu / len(accepted) * 1e6 if accepted else None,
        "accepted_202": len(accepted),
        "delivered": len(accepted) - len(missing),
        "lost": len(missing),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else None,
    }


async def run_all(
    rates: list[float], duration: float, quick: bool, workdir: Path
) -> dict[str, Any]:
    server_cpus, generator_cpus, plan = cpu_plan(True)
    if generator_cpus is not None:
        os.sched_setaffinity(0, generator_cpus)
    receiver = Receiver(free_port(), generator_cpus, workdir / "receiver.log")
    rules = workdir / "rules.yaml"
    rules.write_text(RULES.format(url=f"{receiver.url}/hook"))
    port = free_port()
    router = router_server(
        rules, workdir / "router.db", port, workdir / "router.log", router_env("FULL")
    )
    results: dict[str, Any] = {"cpus": plan, "duration_s": duration, "rates": {}}
    receiver.start()
    try:
        router.start(port, server_cpus)
        assert router.proc is not None
        url, pid = f"http://127.0.0.1:{port}", router.proc.pid
        warmup = 0.5 if quick else WARMUP_SECONDS
        await run_rate(url, pid, receiver, "warm", min(rates), warmup)
        for rate in rates:
            print(f"  e2e: {rate:g} events/s for {duration:g}s", flush=True)
            results["rates"][str(int(rate))] = await run_rate(
                url, pid, receiver, f"r{int(rate)}", rate, duration
            )
    finally:
        code = router.stop()
        receiver.stop()
    if code not in (0, -15):
        raise BenchError(f"router exited with {code}:\n{tail(router.log)}")
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        "| offered/s | achieved send/s | 202 | delivered | lost | p50 ms | p99 ms | max ms"
        " | router core busy | router CPU µs/event |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rate, r in results["rates"].items():
        p = [("-" if r[k] is None else f"{r[k]:.1f}") for k in ("p50_ms", "p99_ms", "max_ms")]
        per_event = r["router_cpu_us_per_event"]
        lines.append(
            f"| {rate} | {r['achieved_send_rate']:.0f} | {r['accepted_202']} | {r['delivered']}"
            f" | {r['lost']} | {p[0]} | {p[1]} | {p[2]} | {r['router_busy']:.0%}"
            f" | {'-' if per_event is None else f'{per_event:,.0f}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.e2e",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="3 s per rate")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    parser.add_argument("--rates", default="500,1000", help="offered events/s, comma-separated")
    parser.add_argument("--json", type=Path, metavar="PATH")
    parser.add_argument("--serve-receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_receiver:
        serve_receiver(args.serve_receiver)
        return 0
    duration = 3.0 if args.quick else args.duration
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    with tempfile.TemporaryDirectory(prefix="router-e2e-") as tmp:
        try:
            results = asyncio.run(run_all(rates, duration, args.quick, Path(tmp)))
        except (BenchError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    broken = [r for r in results["rates"].values() if r["failures"]]
    for r in broken:
        print(f"error: {r['offered_rate']:g}/s: {r['failures']}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
