"""Scale-out benchmark: 1, 2 and 3 ``router serve`` replicas on one PostgreSQL schema,
and the SQLite default, in one run, with the same load generator.

Setups, each on a fresh store:

* ``sqlite``: one ``router serve`` on a SQLite file (WAL, ``synchronous=FULL``);
* ``postgresql x N`` (N = 1, 2, 3): N ``router serve`` replicas (distinct ``replica=``
  names) on a fresh schema of the PostgreSQL server ``--pg``.

Each gets the rule of ``bench/ingest.py`` (every event to a log-only webhook, so a
"delivery" is the durable ``logged`` record) and ``examples/events/course_completed.json``
with a distinct ``metadata.request_id`` per request. The load is the same for every
setup: ``--connections`` keep-alive connections in total (wrk, or bench/loadgen.py),
split evenly over the replicas, one generator process per replica, all at once.

Per setup: start the replicas, warm up 1 s, wait until the backlog is drained, then

* **accepted/s**: 202 answers per second during the ``--duration`` load;
* **delivered/s (end-to-end)**: the events accepted in the load, all routed and
  delivered, divided by the time from the start of the load until the last of them
  is delivered (the router answers first during a burst and catches up after it);
* **cores busy** and **per core**: the CPU time the replicas and their PostgreSQL
  backends (found by ``application_name``) used over that same time, and the events
  delivered end to end per CPU-second: what one fully busy core does.

Then every 202 is checked to be stored. A markdown table is printed at the end.

Nothing is pinned: the generator, the replicas and PostgreSQL share the machine's
cores. On a 2-core machine the replicas compete with each other, with PostgreSQL and
with the load generator for those 2 cores, so adding replicas cannot scale throughput
much there; the per-core column shows what a replica costs, which is what carries over
to a machine with more cores.

    .venv/bin/python -m bench.replicas                # 10 s of load per setup
    .venv/bin/python -m bench.replicas --quick        # 2 s per setup: a smoke run
    .venv/bin/python -m bench.replicas --pg postgresql://me@db:5432/bench --json out.json

Exits non-zero only when something broke (a server did not start, the generator
failed, errors or non-202 answers, a 202 not stored, the backlog never drained).
"""

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import asyncpg

from bench.ingest import (
    EVENT_FILE,
    RULES,
    WARMUP_SECONDS,
    BenchError,
    Generator,
    Server,
    cpu_seconds,
    fmt,
    free_port,
    get_json,
    pick_generator,
    router_argv,
    router_env,
    tail,
)

DEFAULT_PG = os.environ.get(
    "ROUTER_BENCH_POSTGRES",
    os.environ.get("ROUTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
)
DRAIN_TIMEOUT = 180.0

# -- CPU accounting ----------------------------------------------------------------------


async def pg_backends(dsn: str, application_name: str) -> list[int]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", application_name
        )
    finally:
        await conn.close()
    return [row[0] for row in rows]


class CpuMeter:
    """CPU used by some processes between ``start()`` and ``stop()``: the router
    replicas, and (on PostgreSQL) the server backends serving them."""

    def __init__(self, pids: list[int], dsn: str | None, application_name: str) -> None:
        self.pids, self.dsn, self.application_name = pids, dsn, application_name
        self.before: dict[int, float] = {}

    def _sample(self) -> dict[int, float]:
        pids = list(self.pids)
        if self.dsn is not None:
            pids += asyncio.run(pg_backends(self.dsn, self.application_name))
        return {pid: cpu_seconds(pid) for pid in pids}

    def start(self) -> None:
        self.before = self._sample()

    def stop(self) -> tuple[float, float]:
        """CPU-seconds used since ``start()``: (by the replicas, by their backends).

        A backend opened during the window started from 0; one closed during it is
        missed (pools keep their connections while busy)."""
        after = self._sample()
        used = {pid: max(0.0, cpu - self.before.get(pid, 0.0)) for pid, cpu in after.items()}
        routers = sum(used.get(pid, 0.0) for pid in self.pids)
        return routers, sum(used.values()) - routers


# -- stores ------------------------------------------------------------------------------


async def pg_admin(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def pg_counts(dsn: str, schema: str, since: float) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn, timeout=5, server_settings={"search_path": schema})
    try:
        return await _counts(conn.fetchval, conn.fetch, since)
    finally:
        await conn.close()


def sqlite_counts(path: Path, since: float) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:

        async def fetchval(sql: str, *args: Any) -> Any:
            return conn.execute(sql.replace("$1", "?"), args).fetchone()[0]

        async def fetch(sql: str, *args: Any) -> list[tuple[Any, ...]]:
            return conn.execute(sql.replace("$1", "?"), args).fetchall()

        return asyncio.run(_counts(fetchval, fetch, since))
    finally:
        conn.close()


async def _counts(fetchval: Any, fetch: Any, since: float) -> dict[str, Any]:
    return {
        "events": await fetchval("SELECT count(*) FROM events"),
        "event_states": dict(await fetch("SELECT state, count(*) FROM events GROUP BY state")),
        "delivery_states": dict(
            await fetch("SELECT state, count(*) FROM deliveries GROUP BY state")
        ),
        "delivered_since_load": await fetchval(
            "SELECT count(*) FROM deliveries WHERE state IN ('logged', 'delivered')"
            " AND updated_at >= $1",
            since,
        ),
        "last_delivered_at": await fetchval(
            "SELECT max(updated_at) FROM deliveries WHERE state IN ('logged', 'delivered')"
        ),
    }


# -- one setup -----------------------------------------------------------------------------


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if n < total % parts else 0) for n in range(parts)]


def run_load(
    generator: Generator,
    ports: list[int],
    *,
    tag: str,
    connections: int,
    duration: float,
) -> dict[str, Any]:
    """One generator per replica, at once; the answers added up."""
    shares = split(connections, len(ports))
    with ThreadPoolExecutor(len(ports)) as pool:
        runs = list(
            pool.map(
                lambda job: generator.run(
                    f"http://127.0.0.1:{job[0]}/events",
                    tag=f"{tag}-r{job[2]}",
                    connections=max(1, job[1]),
                    duration=duration,
                    cpus=None,
                ),
                [
                    (port, share, n)
                    for n, (port, share) in enumerate(zip(ports, shares, strict=True))
                ],
            )
        )
    elapsed = max(r["duration_s"] for r in runs)
    total = {key: sum(r[key] for r in runs) for key in ("sent", "answered", "ok", "errors")}
    total["unexpected_status"] = sum(r["unexpected_status"] for r in runs)
    total["unanswered"] = sum(r["unanswered"] for r in runs)
    total["duration_s"] = elapsed
    total["rps"] = sum(r["ok"] for r in runs) / elapsed if elapsed else 0.0
    p99s = [r["p99_ms"] for r in runs if r["p99_ms"] is not None]
    total["p99_ms"] = max(p99s) if p99s else None  # the worst replica's
    total["per_replica"] = runs
    return total


def wait_drained(port: int, timeout: float) -> float:
    """Poll /readyz (whose counts are the shared store's) until nothing is pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with suppress(OSError, ValueError):
            ready = get_json(f"http://127.0.0.1:{port}/readyz")
            if ready.get("events_pending") == 0 and ready.get("deliveries_pending") == 0:
                return time.time()
        time.sleep(0.25)  # (the end is read from the store: polling less often is fine)
    raise BenchError(f"the backlog did not drain within {timeout:g}s: {ready}")


def run_setup(
    label: str,
    replicas: int,
    db: str,
    *,
    sqlite_path: Path | None,
    pg: tuple[str, str] | None,  # (admin dsn, schema)
    application_name: str,
    generator: Generator,
    workdir: Path,
    rules: Path,
    connections: int,
    duration: float,
    run_id: str,
) -> dict[str, Any]:
    servers: list[Server] = []
    ports: list[int] = []
    problems: list[str] = []
    try:
        for n in range(replicas):
            url = db
            if pg is not None:
                url = f"{db}&replica={label}-{n + 1}"
            port = free_port()
            server = Server(
                f"{label}/{n + 1}",
                router_argv(rules, url, port),
                router_env("FULL"),
                workdir / f"{label}-{n + 1}.log",
            )
            servers.append(server)
            server.start(port, None)
            ports.append(port)
        print(f"  {label}: {replicas} up; warming up {WARMUP_SECONDS:g}s", flush=True)
        warm = run_load(
            generator,
            ports,
            tag=f"{run_id}-{label}-warm",
            connections=connections,
            duration=WARMUP_SECONDS,
        )
        wait_drained(ports[0], DRAIN_TIMEOUT)
        meter = CpuMeter(
            [s.proc.pid for s in servers if s.proc is not None],
            pg[0] if pg else None,
            application_name,
        )
        meter.start()
        print(f"  {label}: measuring {duration:g}s, then draining", flush=True)
        started = time.time()
        load = run_load(
            generator,
            ports,
            tag=f"{run_id}-{label}-run",
            connections=connections,
            duration=duration,
        )
        load_ended = time.time()
        wait_drained(ports[0], DRAIN_TIMEOUT)
        router_cpu, pg_cpu = meter.stop()
        cpu = router_cpu + pg_cpu
        counts = (
            asyncio.run(pg_counts(pg[0], pg[1], started))
            if pg
            else sqlite_counts(sqlite_path, started)  # type: ignore[arg-type]
        )
    finally:
        for server in servers:
            code = server.stop()
            if code not in (None, 0):
                problems.append(f"{server.name} exited with {code}:\n{tail(server.log)}")
    done = counts["last_delivered_at"] or load_ended
    e2e_seconds = max(done - started, load["duration_s"])
    delivered = counts["delivered_since_load"]
    accepted = warm["ok"] + load["ok"]
    unanswered = warm["unanswered"] + load["unanswered"]
    stored_ok = accepted <= counts["events"] <= accepted + unanswered
    if not stored_ok:
        problems.append(f"{label}: {counts['events']} events stored, {accepted} answered 202")
    for phase in (warm, load):
        if phase["errors"] or phase["unexpected_status"]:
            problems.append(
                f"{label}: {phase['errors']} errors, {phase['unexpected_status']} non-202"
            )
    return {
        "label": label,
        "replicas": replicas,
        "accepted_per_s": load["rps"],
        "p99_ms": load["p99_ms"],
        "accepted_in_load": load["ok"],
        "delivered_in_load": delivered,
        "delivered_per_s": delivered / e2e_seconds if e2e_seconds else 0.0,
        "drain_s": max(0.0, done - load_ended),
        "e2e_seconds": e2e_seconds,
        "cpu_seconds": cpu,
        "cpu_seconds_routers": router_cpu,
        "cpu_seconds_postgresql": pg_cpu,
        "cores_busy": cpu / e2e_seconds if e2e_seconds else 0.0,
        "delivered_per_cpu_s": delivered / cpu if cpu else 0.0,
        "errors": load["errors"] + load["unexpected_status"],
        "store": counts,
        "stored_ok": stored_ok,
        "load": load,
        "warmup": warm,
        "problems": problems,
    }


# -- main --------------------------------------------------------------------------------


def report_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| store | replicas | accepted/s | p99 ms | delivered/s (end-to-end) | drain after load s"
        " | cores busy (routers + PostgreSQL) | delivered per core-second | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['label'].split('-')[0]} | {r['replicas']} | {r['accepted_per_s']:.0f}"
            f" | {fmt(r['p99_ms'], 1)} | {r['delivered_per_s']:.0f} | {r['drain_s']:.1f}"
            f" | {r['cores_busy']:.2f} ({r['cpu_seconds_routers'] / r['e2e_seconds']:.2f}"
            f" + {r['cpu_seconds_postgresql'] / r['e2e_seconds']:.2f})"
            f" | {r['delivered_per_cpu_s']:.0f} | {r['errors']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.replicas",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per setup")
    parser.add_argument("--connections", type=int, default=32, help="in total, over replicas")
    parser.add_argument("--quick", action="store_true", help="2 s per setup (a smoke run)")
    parser.add_argument(
        "--pg", default=DEFAULT_PG, help=f"PostgreSQL server (default {DEFAULT_PG})"
    )
    parser.add_argument("--max-replicas", type=int, default=3, help="1..N replicas (default 3)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results here")
    parser.add_argument(
        "--generator", choices=["auto", "wrk", "loadgen"], default="auto", help="default: auto"
    )
    args = parser.parse_args(argv)
    duration = 2.0 if args.quick else args.duration
    if duration <= 0 or args.connections < 1 or args.max_replicas < 1:
        parser.error("--duration must be > 0, --connections and --max-replicas >= 1")

    try:
        settings = {
            name: asyncio.run(pg_admin(args.pg, f"SHOW {name}"))
            for name in ("server_version", "synchronous_commit", "fsync")
        }
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        print(f"error: PostgreSQL unreachable at {args.pg}: {exc} (set --pg)", file=sys.stderr)
        return 2
    run_id = f"{os.getpid()}-{int(time.time())}"
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="router-bench-replicas-") as tmp:
        workdir = Path(tmp)
        rules = workdir / "rules.yaml"
        rules.write_text(RULES)
        try:
            generator, generator_note = pick_generator(args.generator, workdir)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"load generator: {generator_note}; one per replica, sharing the connections")
        print(
            f"cpus: {len(os.sched_getaffinity(0))}, not pinned: the generator, the replicas"
            " and PostgreSQL share them"
        )
        print(
            f"load: {args.connections} connections in total, {duration:g}s per setup after a"
            f" {WARMUP_SECONDS:g}s warm-up; body {EVENT_FILE.name}, a distinct request_id each"
        )
        print(
            f"PostgreSQL {settings['server_version']} at {args.pg}: synchronous_commit="
            f"{settings['synchronous_commit']}, fsync={settings['fsync']}; SQLite: WAL,"
            " synchronous=FULL\n",
            flush=True,
        )
        setups: list[tuple[str, int]] = [("sqlite", 1)] + [
            (f"postgresql-x{n}", n) for n in range(1, args.max_replicas + 1)
        ]
        for label, replicas in setups:
            schema = None
            try:
                if label == "sqlite":
                    path = workdir / "router.db"
                    row = run_setup(
                        label,
                        1,
                        str(path),
                        sqlite_path=path,
                        pg=None,
                        application_name="",
                        generator=generator,
                        workdir=workdir,
                        rules=rules,
                        connections=args.connections,
                        duration=duration,
                        run_id=run_id,
                    )
                else:
                    schema = f"router_bench_{uuid.uuid4().hex[:10]}"
                    application_name = f"router-bench-{schema}"
                    sep = "&" if "?" in args.pg else "?"
                    db = f"{args.pg}{sep}schema={schema}&application_name={application_name}"
                    row = run_setup(
                        label,
                        replicas,
                        db,
                        sqlite_path=None,
                        pg=(args.pg, schema),
                        application_name=application_name,
                        generator=generator,
                        workdir=workdir,
                        rules=rules,
                        connections=args.connections,
                        duration=duration,
                        run_id=run_id,
                    )
            except (BenchError, subprocess.TimeoutExpired, OSError, sqlite3.Error) as exc:
                print(f"\nerror: {label}: {exc}", file=sys.stderr)
                return 1
            finally:
                if schema is not None:
                    with suppress(Exception):
                        asyncio.run(pg_admin(args.pg, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            rows.append(row)
            problems.extend(row["problems"])
            print(
                f"    accepted {row['accepted_in_load']} in {row['load']['duration_s']:.1f}s,"
                f" delivered {row['delivered_in_load']} by +{row['e2e_seconds']:.1f}s;"
                f" stored check {'OK' if row['stored_ok'] else 'MISMATCH'}",
                flush=True,
            )

    print()
    print(report_table(rows))
    print()
    cores = len(os.sched_getaffinity(0))
    print(
        f"On this {cores}-core machine the replicas, PostgreSQL and the load generator share"
        f" {cores} cores, so scaling out is bounded by the cores, not by the router: more"
        " replicas add CPU demand but no CPU. 'delivered per core-second' is events routed"
        " and delivered end to end per CPU-second of the replicas and their PostgreSQL"
        " backends, the cost that carries over to a bigger machine."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "generator": generator.name,
                    "connections": args.connections,
                    "duration_s": duration,
                    "postgresql": settings,
                    "cpus": cores,
                    "rows": rows,
                    "problems": problems,
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
