"""The floor for ``bench/ingest.py``: the least a durable ``POST /events`` can do on this
stack, so that the router's own overhead can be told from the cost of durability.

Per request it does what the router cannot skip, and nothing else: read the body, parse
it with orjson, serialise it canonically (sorted keys) and hash it for the event id,
insert the event and its payload into SQLite (WAL, ``synchronous=FULL``, the router's
two tables) from one writer thread that commits whatever is queued as one transaction,
and answer 202 with the id once the commit is on disk. No validation, no duplicate
check, no authentication, no metrics, no routing or delivery: it is not a router, only
a lower bound for one.
"""

import argparse
import asyncio
import hashlib
import queue
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from aiohttp import web

from bench.bare_server import serve

SCHEMA = (
    "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,"
    " name TEXT NOT NULL, received_at REAL NOT NULL, state TEXT NOT NULL)",
    "CREATE INDEX events_pending ON events (seq) WHERE state = 'pending'",
    "CREATE TABLE event_payloads (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)",
)

Job = tuple[str, str, bytes, asyncio.Future[None]]


class Writer:
    """One thread, one connection: group commit of whatever is queued."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.path, self.loop = path, loop
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="floor-sqlite", daemon=True).start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for statement in SCHEMA:
            conn.execute(statement)
        while True:
            batch = [self.jobs.get()]
            while True:
                try:
                    batch.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            conn.execute("BEGIN IMMEDIATE")
            now = time.time()
            for event_id, name, payload, _ in batch:
                cursor = conn.execute(
                    "INSERT INTO events (id, name, received_at, state) VALUES (?,?,?,?)",
                    (event_id, name, now, "pending"),
                )
                conn.execute(
                    "INSERT INTO event_payloads (seq, payload) VALUES (?,?)",
                    (cursor.lastrowid, payload),
                )
            conn.execute("COMMIT")
            self.loop.call_soon_threadsafe(_settle, batch)


def _settle(batch: list[Job]) -> None:
    for *_, future in batch:
        if not future.done():
            future.set_result(None)


WRITER = web.AppKey("writer", Writer)


async def events(request: web.Request) -> web.Response:
    event = orjson.loads(await request.read())
    canonical = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    event_id = hashlib.sha256(canonical).hexdigest()[:32]
    future = asyncio.get_running_loop().create_future()
    request.app[WRITER].jobs.put((event_id, event["metadata"]["event_name"], canonical, future))
    await future
    body = orjson.dumps({"accepted": [{"id": event_id, "duplicate": False}]})
    return web.Response(body=body, status=202, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path, help="SQLite file (default: a fresh temp file)")
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp(prefix="bench-floor-")) / "floor.db"
    sys.setswitchinterval(0.002)  # as `router serve` sets it (see bench/NOTES.md)

    async def start_writer(app: web.Application) -> None:
        app[WRITER] = Writer(db, asyncio.get_running_loop())

    app = web.Application()
    app.on_startup.append(start_writer)
    app.router.add_post("/events", events)
    app.router.add_get("/healthz", healthz)
    serve(app, args.port)


if __name__ == "__main__":
    main()
