"""Delivery benchmark: the router's dispatcher against Apprise, same receiver, one run.

Both senders deliver the same N notifications (the title and text the router rendered
from ``templates/course_completed.j2``) to the same local aiohttp receiver, which runs
in a subprocess pinned to its own core and answers 200 at once:

* ``router``: N events are accepted into a fresh SQLite store (WAL, ``synchronous=FULL``)
  and routed, so N webhook deliveries are pending. The clock starts when the dispatcher
  starts and stops when the ``delivery_finished`` hook has seen N ``delivered``
  outcomes; every outcome is durable in the store before the hook hears of it. The
  store is then checked: N rows ``delivered``, and the receiver counted N requests.
* ``apprise``: ``Apprise.async_notify`` to ``json://127.0.0.1:PORT/apprise`` N times,
  at most ``--concurrency`` at once (the same limit as the router's channel), timed
  from the first call until all N returned; every one must succeed.
* ``aiohttp client alone``: the floor, not a contender: N POSTs of the router's
  payload from one aiohttp session, same concurrency, no store and no retries. The
  output says how many times Apprise's rate it reaches, and what share of it the
  router keeps.

Each sender's CPU time (this process, all threads: the router's store thread, Apprise's
workers) over its timed run is reported per notification: all three share one core,
so that is what a notification costs, and where the router's time goes beyond the POST.

    .venv/bin/python -m bench.delivery               # N = 2000
    .venv/bin/python -m bench.delivery --quick       # N = 300, CI smoke
    .venv/bin/python -m bench.delivery --n 5000 --concurrency 32

Loopback only; everything is bounded in time (``--timeout`` per sender); the receiver
subprocess is always stopped. Exits non-zero only when something broke (the receiver
did not start, a notification failed or went missing), never because the target ratio
was missed.
"""

import argparse
import asyncio
import logging
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from bench.bare_server import serve
from bench.ingest import free_port

ROOT = Path(__file__).resolve().parent.parent
EVENT_FILE = ROOT / "examples" / "events" / "course_completed.json"
TARGET_RATIO = 10.0
START_TIMEOUT = 20.0
STOP_GRACE = 5.0

RULES = """\
version: 1
channels:
  bench-hook:
    type: webhook
    url: "{url}/router"
    concurrency: {concurrency}
    timeout: 10
rules:
  - name: bench
    events: [course_completed]
    notify: [bench-hook]
    template: course_completed
"""


class Broken(Exception):
    """Something failed: the figures cannot be trusted."""


# -- the receiver (runs in its own process) -------------------------------------------


def serve_receiver(port: int) -> None:
    """Answer 200 to every POST, counting requests per path; GET /counts reports them."""
    counts: Counter[str] = Counter()

    async def post(request: web.Request) -> web.Response:
        await request.read()
        counts[request.path] += 1
        return web.Response(text="ok")

    async def get_counts(request: web.Request) -> web.Response:
        return web.json_response(dict(counts))

    app = web.Application()
    app.router.add_post("/{name}", post)
    app.router.add_get("/counts", get_counts)
    serve(app, port)


class Receiver:
    """The receiver subprocess: started, polled and stopped by this driver only."""

    def __init__(self, cpus: set[int] | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        cpus = self.cpus
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.delivery", "--serve-receiver", str(self.port)],
            cwd=ROOT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )

    async def wait_ready(self, session: aiohttp.ClientSession) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Broken(f"receiver exited with status {self.proc.returncode}")
            try:
                await self.counts(session)
                return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        raise Broken(f"receiver did not answer within {START_TIMEOUT:g}s")

    async def counts(self, session: aiohttp.ClientSession) -> dict[str, int]:
        async with session.get(f"{self.url}/counts") as resp:
            return await resp.json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_GRACE)


# -- helpers ------------------------------------------------------------------------


def process_cpu() -> float:
    """CPU seconds this process used so far, all threads (the router's store thread,
    Apprise's worker threads): user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """(receiver cpus, sender cpus, description)."""
    available = sorted(os.sched_getaffinity(0))
    if not pin or len(available) < 2:
        return None, None, f"not pinned ({len(available)} cpu(s) shared)"
    receiver, sender = {available[-1]}, {available[0]}
    return receiver, sender, f"receiver on cpu {available[-1]}, senders on cpu {available[0]}"


def bench_events(n: int) -> list[dict[str, Any]]:
    """N distinct copies of the Canvas course_completed example (distinct request ids,
    so none is dropped as a duplicate)."""
    template = orjson.loads(EVENT_FILE.read_bytes())
    events = []
    for i in range(n):
        event = orjson.loads(orjson.dumps(template))
        event["metadata"]["request_id"] = f"bench-delivery-{i}"
        events.append(event)
    return events


# -- router -------------------------------------------------------------------------


async def run_router(
    n: int, concurrency: int, url: str, timeout: float, rules_template: str = RULES
) -> dict[str, Any]:
    """Route N events into pending deliveries, then time the dispatcher delivering them.

    ``rules_template`` (formatted with the receiver's ``url`` and ``concurrency``) names
    one channel, ``bench-hook`` by default; ``bench.chat`` passes its chat channels."""
    from router.dispatch import Dispatcher, RetryPolicy, close_channels, open_channels
    from router.events import canonical_json, event_identity
    from router.hookspecs import hookimpl
    from router.plugins import load_plugins
    from router.routing import RoutingWorker, build_router
    from router.settings import Settings
    from router.store import open_store

    finished = asyncio.Event()
    statuses: Counter[str] = Counter()

    class Watch:
        """Counts outcomes through the plugin contract's ``delivery_finished`` hook."""

        __name__ = "bench-watch"

        @hookimpl
        def delivery_finished(self, outcome: Any) -> None:
            statuses[outcome.status] += 1
            if statuses["delivered"] + statuses["dead"] >= n:
                finished.set()

    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        workdir = Path(tmp)
        rules = workdir / "rules.yaml"
        rules.write_text(rules_template.format(url=url, concurrency=concurrency))
        db = workdir / "router.db"
        settings = Settings(rules=rules, templates=ROOT / "templates", db=str(db))
        plugins = load_plugins(extra=[Watch()], blocked=["email", "slack"])
        if plugins.problems:
            raise Broken(f"plugins: {'; '.join(map(str, plugins.problems))}")
        router = build_router(settings, plugins)
        store = open_store(str(db), synchronous="FULL")
        await store.open()
        try:
            batch = []
            for event in bench_events(n):
                canonical = canonical_json(event)
                batch.append((event_identity(canonical), "course_completed", canonical))
            for start in range(0, n, 500):
                await store.accept_events(
                    batch[start : start + 500], dedupe_window=0.0, now=time.time()
                )
            routing = RoutingWorker(store, lambda: router, lambda: None)
            while await routing.route_once():
                pass
            pending = (await store.counts()).deliveries_pending
            if pending != n:
                raise Broken(f"router: {pending} deliveries pending after routing, expected {n}")

            policy = RetryPolicy(max_attempts=3, base=0.1, cap=1.0)
            dispatcher = Dispatcher(store, plugins, policy, lambda: router.rules.redactor())
            dispatcher.channels = await open_channels(router.rules.channels)
            started, cpu_before = time.perf_counter(), process_cpu()
            task = asyncio.create_task(dispatcher.run(), name="bench-dispatcher")
            try:
                await asyncio.wait_for(finished.wait(), timeout)
            except TimeoutError:
                raise Broken(
                    f"router: {dict(statuses)} after {timeout:g}s, expected {n} delivered"
                ) from None
            elapsed, cpu = time.perf_counter() - started, process_cpu() - cpu_before
            await dispatcher.drain(STOP_GRACE)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await close_channels(dispatcher.channels)
        finally:
            await store.close()
        with sqlite3.connect(db) as conn:
            states = dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state"))
            [message] = conn.execute("SELECT message FROM deliveries LIMIT 1").fetchone()
            [mode] = conn.execute("PRAGMA journal_mode").fetchone()
    if states != {"delivered": n}:
        raise Broken(f"router: store holds {states}, expected {n} delivered")
    rendered = orjson.loads(message)
    envelope = {"id": "bench", "title": rendered["title"], "text": rendered["text"]}
    return {
        "body": orjson.dumps(envelope | {"event": bench_events(1)[0]}),
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "ok": states["delivered"],
        "retries": statuses["retry"],
        "title": rendered["title"],
        "text": rendered["text"],
        "journal": mode,
    }


# -- apprise ------------------------------------------------------------------------


async def run_apprise(
    n: int, concurrency: int, url: str, title: str, text: str, timeout: float
) -> dict[str, Any]:
    """N ``async_notify`` calls to a ``json://`` URL, at most ``concurrency`` at once."""
    import apprise

    logging.getLogger("apprise").setLevel(logging.ERROR)
    notifier = apprise.Apprise()
    target = url.replace("http://", "json://", 1) + "/apprise"
    if not notifier.add(target):
        raise Broken(f"apprise refused {target}")
    slots = asyncio.Semaphore(concurrency)

    async def one() -> bool:
        async with slots:
            return bool(await notifier.async_notify(title=title, body=text))

    started, cpu_before = time.perf_counter(), process_cpu()
    try:
        results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), timeout)
    except TimeoutError:
        raise Broken(f"apprise: not done after {timeout:g}s") from None
    elapsed, cpu = time.perf_counter() - started, process_cpu() - cpu_before
    ok = sum(results)
    if ok != n:
        raise Broken(f"apprise: {n - ok} of {n} notifications failed")
    return {"seconds": elapsed, "cpu_seconds": cpu, "ok": ok, "version": apprise.__version__}


# -- the floor: a bare aiohttp client ---------------------------------------------------


async def run_bare(n: int, concurrency: int, url: str, body: bytes) -> dict[str, Any]:
    """N POSTs of the router's payload from one aiohttp session, at most ``concurrency``
    at once: no store, no retries, no template. What any sender here pays at least."""
    slots = asyncio.Semaphore(concurrency)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:

        async def one() -> bool:
            async with slots, session.post(f"{url}/bare", data=body, headers=headers) as resp:
                return resp.status == 200

        started, cpu_before = time.perf_counter(), process_cpu()
        results = await asyncio.gather(*(one() for _ in range(n)))
        elapsed, cpu = time.perf_counter() - started, process_cpu() - cpu_before
    if not all(results):
        raise Broken(f"bare client: {results.count(False)} of {n} requests failed")
    return {"seconds": elapsed, "cpu_seconds": cpu, "ok": n}


# -- driver -------------------------------------------------------------------------


def table(rows: dict[str, dict[str, Any]], n: int) -> str:
    lines = [
        "| sender | notifications | receiver got | seconds | CPU µs/notification"
        " | notifications/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in rows.items():
        rate, cpu = n / row["seconds"], row["cpu_seconds"] / n * 1e6
        lines.append(
            f"| {name} | {row['ok']} | {row['received']} | {row['seconds']:.3f} | {cpu:,.0f}"
            f" | {rate:,.0f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace, receiver: Receiver, plan: str) -> int:
    rows: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await receiver.wait_ready(session)
        router = await run_router(args.n, args.concurrency, receiver.url, args.timeout)
        rows["router (dispatcher, SQLite FULL)"] = router
        apprise_row = await run_apprise(
            args.n, args.concurrency, receiver.url, router["title"], router["text"], args.timeout
        )
        rows["apprise (async_notify, json://)"] = apprise_row
        bare = await run_bare(args.n, args.concurrency, receiver.url, router["body"])
        rows["aiohttp client alone (no store, no retries)"] = bare
        counts = await receiver.counts(session)
    router["received"] = counts.get("/router", 0)
    apprise_row["received"] = counts.get("/apprise", 0)
    bare["received"] = counts.get("/bare", 0)
    print(
        f"N = {args.n}, concurrency {args.concurrency}, {plan}; router store: SQLite"
        f" journal_mode={router['journal']}, synchronous=FULL; apprise {apprise_row['version']}"
    )
    print()
    print(table(rows, args.n))
    print()
    ratio = (args.n / router["seconds"]) / (args.n / apprise_row["seconds"])
    floor = apprise_row["seconds"] / bare["seconds"]
    share = bare["seconds"] / router["seconds"]
    print(f"the aiohttp client alone = {floor:.2f} x apprise; the router = {share:.2f} x it")
    print(f"ratio (router/apprise) = {ratio:.2f} (target >= {TARGET_RATIO:g})")
    missing = [name for name, row in rows.items() if row["received"] != args.n]
    if missing:
        print(f"receiver counts differ from {args.n} for: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _loop_factory() -> Any:
    """uvloop when installed, as ``router serve`` uses: both senders share this loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000, help="notifications per sender (2000)")
    parser.add_argument("--quick", action="store_true", help="N = 300: a CI smoke run")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="sends in flight per sender (16)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed per sender (120)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cpus")
    parser.add_argument("--serve-receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_receiver:
        serve_receiver(args.serve_receiver)
        return 0
    if args.quick:
        args.n = 300
    if args.n < 1 or args.concurrency < 1:
        parser.error("--n and --concurrency must be positive")
    # Loopback only: keep requests (inside Apprise) away from any configured proxy.
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    logging.basicConfig(level=logging.WARNING)
    receiver_cpus, sender_cpus, plan = cpu_plan(not args.no_pin)
    receiver = Receiver(receiver_cpus)
    receiver.spawn()
    try:
        if sender_cpus:
            os.sched_setaffinity(0, sender_cpus)  # keep the senders off the receiver's core
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(run(args, receiver, plan))
    except Broken as exc:
        print(f"broken: {exc}", file=sys.stderr)
        return 1
    finally:
        receiver.stop()


if __name__ == "__main__":
    sys.exit(main())
