"""Embedded store: one SQLite file in WAL mode, written by one thread with group commit.

Every operation is a function of a connection, queued to the writer thread. The
thread takes whatever is queued, runs the operations in one transaction, commits
once, and only then resolves the callers' futures: many concurrent requests share one
fsync, and nobody hears "done" before it is durable. If one operation fails, the
transaction rolls back and each operation is run again in a transaction of its own,
so only the failing caller hears of it.
"""

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import router.store.policies as policies
from router.store.base import (
    Accepted,
    DeliveryDetail,
    DeliveryJob,
    DeliveryRecord,
    DeliveryState,
    DigestEntry,
    DueDigest,
    EventRecord,
    InboxEvent,
    NewDelivery,
    Pruned,
    RoutedEvent,
    Silence,
    StoreCounts,
    StoreOpenError,
    log_schema_change,
)
from router.store.recent_ids import RecentIds

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]

MAX_BATCH = 512

_STATE_CHECKS = {
    "events": ("pending", "routed", "duplicate"),
    "deliveries": ("pending", "delivered", "logged", "dead"),
}


def _state_checks_as_comparisons(conn: sqlite3.Connection) -> None:
    """SQLite checks ``state IN ('a', 'b', 'c')`` (three values or more) by building a
    temporary b-tree of the list on every insert and update of the row: measured,
    about 30 k instructions per insert of an event, 6 % of all the router spends on
    ingesting it. Written as comparisons, the same constraint costs next to nothing.
    A CHECK does not change how rows are stored, so the table definitions are edited
    in place, the way SQLite's documentation gives for such changes (lang_altertable.html,
    "Making Other Kinds Of Table Schema Changes"). A build that forbids editing the
    schema (``SQLITE_DBCONFIG_DEFENSIVE``) keeps the old definitions: slower, equally
    correct."""
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute("SAVEPOINT state_checks")  # all tables or none
    try:
        conn.execute("PRAGMA writable_schema=ON")
        for table, states in _STATE_CHECKS.items():
            listed = ", ".join(f"'{state}'" for state in states)
            compared = " OR ".join(f"state = '{state}'" for state in states)
            conn.execute(
                "UPDATE sqlite_master SET sql = replace(sql, ?, ?)"
                " WHERE type = 'table' AND name = ?",
                (f"CHECK (state IN ({listed}))", f"CHECK ({compared})", table),
            )
        conn.execute(f"PRAGMA schema_version={version + 1}")
    except sqlite3.DatabaseError as exc:
        conn.execute("ROLLBACK TO state_checks")
        log.info("store: state checks left as they are (%s)", exc)
    finally:
        conn.execute("PRAGMA writable_schema=OFF")
        conn.execute("RELEASE state_checks")


def _more_delivery_states(conn: sqlite3.Connection) -> None:
    """Let deliveries be silenced, muted or held. SQLite cannot alter a CHECK, so the
    table's definition is edited in place as ``_state_checks_as_comparisons`` does
    (allowed: the new constraint admits every row the old one did). Either form of the
    old check (the list, or the comparisons) is replaced."""
    old_states = _STATE_CHECKS["deliveries"]
    new_states = policies.DELIVERY_STATES
    listed = ", ".join(f"'{state}'" for state in old_states)
    compared = " OR ".join(f"state = '{state}'" for state in old_states)
    wanted = "CHECK (" + " OR ".join(f"state = '{state}'" for state in new_states) + ")"
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute("PRAGMA writable_schema=ON")
    try:
        for old in (f"CHECK (state IN ({listed}))", f"CHECK ({compared})"):
            conn.execute(
                "UPDATE sqlite_master SET sql = replace(sql, ?, ?)"
                " WHERE type = 'table' AND name = 'deliveries'",
                (old, wanted),
            )
        conn.execute(f"PRAGMA schema_version={version + 1}")
    finally:
        conn.execute("PRAGMA writable_schema=OFF")
    (sql,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'"
    ).fetchone()
    if wanted not in sql:
        raise sqlite3.DatabaseError(
            "cannot add the delivery states silenced, muted and held to this store"
            " (its schema cannot be edited): copy its data to a new store"
        )


MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # The event body lives apart from its state so that marking an event routed
    # rewrites a small row, not the whole payload.
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        received_at REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'routed', 'duplicate'))
    );
    CREATE INDEX events_by_id ON events (id, received_at);
    CREATE INDEX events_pending ON events (seq) WHERE state = 'pending';
    CREATE TABLE event_payloads (
        seq INTEGER PRIMARY KEY REFERENCES events (seq),
        payload BLOB NOT NULL
    );
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        event_seq INTEGER NOT NULL REFERENCES events (seq),
        rule TEXT NOT NULL,
        channel TEXT NOT NULL,
        message BLOB NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'logged', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error TEXT
    );
    CREATE INDEX deliveries_due ON deliveries (channel, next_attempt_at) WHERE state = 'pending';
    CREATE INDEX deliveries_dead ON deliveries (updated_at) WHERE state = 'dead';
    """,
    # Noise control and "what changed": state that must survive restarts.
    """
    CREATE TABLE snapshots (
        entity TEXT PRIMARY KEY,
        body BLOB NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE throttles (
        key TEXT PRIMARY KEY,
        until REAL NOT NULL,
        suppressed INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE digests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        rule TEXT NOT NULL,
        group_key TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'sent')),
        opened_at REAL NOT NULL,
        due_at REAL NOT NULL,
        size INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX digests_open ON digests (rule, group_key) WHERE state = 'open';
    CREATE INDEX digests_due ON digests (due_at) WHERE state = 'open';
    CREATE TABLE digest_events (
        digest_id INTEGER NOT NULL REFERENCES digests (id),
        event_seq INTEGER NOT NULL REFERENCES events (seq),
        PRIMARY KEY (digest_id, event_seq)
    );
    """,
    # Retention deletes events: their child rows are found by index, not by a scan
    # (SQLite's foreign-key check on delete needs these too).
    """
    CREATE INDEX deliveries_by_event ON deliveries (event_seq);
    CREATE INDEX digest_events_by_event ON digest_events (event_seq);
    """,
    # The duplicate check moved into memory (RecentIds): this index only cost inserts.
    "DROP INDEX events_by_id",
    _state_checks_as_comparisons,
    # A claimed digest group is sealed: an event routed while its message is being
    # rendered opens a new group instead of joining one sent without it (as on
    # PostgreSQL). A column, not a new state: SQLite cannot change a CHECK in place.
    """
    ALTER TABLE digests ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0;
    DROP INDEX digests_open;
    CREATE UNIQUE INDEX digests_open ON digests (rule, group_key)
        WHERE state = 'open' AND sealed = 0
    """,
    # Silences and quiet hours: three more delivery states, the silence that matched.
    _more_delivery_states,
    """
    ALTER TABLE deliveries ADD COLUMN silence_id TEXT;
    CREATE INDEX deliveries_held ON deliveries (next_attempt_at) WHERE state = 'held';
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        matchers TEXT NOT NULL,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        author TEXT NOT NULL,
        comment TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX silences_by_end ON silences (ends_at)
    """,
]

_STATE_INDEX = {
    "dead": "INDEXED BY deliveries_dead",
    "pending": "INDEXED BY deliveries_due",
}

# The columns of a DeliveryRecord, in order (deliveries d joined with events e).
_RECORD = (
    "d.id, d.key, e.id, d.rule, d.channel, d.state, d.attempts, d.created_at,"
    " d.updated_at, d.next_attempt_at, d.last_error, e.name, d.silence_id"
)
_SILENCE = "id, matchers, starts_at, ends_at, author, comment, created_at"


@contextlib.contextmanager
def served(path: str) -> Iterator[None]:
    """Held by ``router serve`` for as long as it serves ``path``: a second server on
    the same file would route and deliver the same events again, since leases live
    in memory. Operator commands do not take it. The lock (``<path>.lock``, holding
    the server's pid) is the kernel's: a killed server releases it by itself."""
    try:
        lock_file = open(f"{path}.lock", "a+")
    except OSError as exc:  # a directory that does not exist, no permission, ...
        raise StoreOpenError(f"{type(exc).__name__}: {exc.strerror}") from None
    with lock_file as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip()
            raise StoreOpenError(
                f"another router serves this file already{f' (pid {pid})' if pid else ''};"
                " one process serves a SQLite file (replicas share PostgreSQL)"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


class SqliteStore:
    """The default store: a SQLite file. One process owns the file at a time.

    Because of that, leases live in memory (touched only by the writer thread): a
    claim is a read, not a write, and a crash releases every lease by itself. (A
    claimed digest group is also sealed in its row, so that events routed meanwhile
    open a new group; a crash leaves it sealed and due, and it is claimed again.)
    """

    def __init__(self, path: str, *, synchronous: str = "FULL") -> None:
        self.path = path
        self.synchronous = synchronous
        self._queue: queue.SimpleQueue[tuple[Operation, asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0  # transactions committed; with group commit, fewer than writes
        self._event_leases: dict[int, float] = {}
        self._delivery_leases: dict[int, float] = {}
        self._digest_leases: dict[int, float] = {}
        self._recent_ids: RecentIds | None = None  # loaded by the first accept

    # -- plumbing -------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="router-sqlite", daemon=True
        )
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            conn.close()
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this router knows"
                f" ({len(MIGRATIONS)}): upgrade the router"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            if callable(script):
                script(conn)
            else:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        log_schema_change(log, self.path, version, len(MIGRATIONS))
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
        except Exception as exc:  # the caller of open() gets the error
            loop.call_soon_threadsafe(_settle_exception, ready, exc)
            return
        loop.call_soon_threadsafe(_settle_result, ready, None)
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            results = self._commit_batch(conn, batch)
            loop.call_soon_threadsafe(_settle_all, results)
        conn.close()

    def _commit_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[Operation, asyncio.Future[Any]]]
    ) -> list[tuple[asyncio.Future[Any], bool, Any]]:
        """Run a batch in one transaction. If any operation fails, roll back and run
        each one in a transaction of its own, so one bad write spoils nothing else."""
        leases = (
            dict(self._event_leases),
            dict(self._delivery_leases),
            dict(self._digest_leases),
        )
        if self._recent_ids is not None:
            self._recent_ids.begin()
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [(future, True, operation(conn)) for operation, future in batch]
            conn.execute("COMMIT")
            self.commits += 1
            return results
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._event_leases, self._delivery_leases, self._digest_leases = leases
            if self._recent_ids is not None:
                self._recent_ids.rollback()
            if len(batch) == 1:
                if isinstance(exc, sqlite3.OperationalError):
                    log.error("store write failed: %s", exc)
                return [(batch[0][1], False, exc)]
        return [result for item in batch for result in self._commit_batch(conn, [item])]

    async def _call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None or self._loop is None:
            raise RuntimeError("store is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((operation, future))
        return await future

    # -- events -----------------------------------------------------------------------

    async def accept_events(
        self, events: list[tuple[str, str, bytes]], *, dedupe_window: float, now: float
    ) -> list[Accepted]:
        def op(conn: sqlite3.Connection) -> list[Accepted]:
            recent = self._recent(conn, dedupe_window, now)
            answers = []
            for event_id, name, payload in events:
                duplicate = recent.seen_since(event_id, now - dedupe_window)
                cursor = conn.execute(
                    "INSERT INTO events (id, name, received_at, state) VALUES (?,?,?,?)",
                    (event_id, name, now, "duplicate" if duplicate else "pending"),
                )
                if not duplicate:
                    recent.add(event_id, now)
                    conn.execute(
                        "INSERT INTO event_payloads (seq, payload) VALUES (?,?)",
                        (cursor.lastrowid, payload),
                    )
                answers.append(Accepted(id=event_id, duplicate=duplicate))
            return answers

        return await self._call(op)

    def _recent(self, conn: sqlite3.Connection, window: float, now: float) -> RecentIds:
        """The duplicate check, read from the events table by the first accept."""
        recent = self._recent_ids
        if recent is None:
            rows = conn.execute(
                "SELECT id, received_at FROM events"
                " WHERE received_at >= ? AND state != 'duplicate' ORDER BY seq",
                (now - window,),
            )
            recent = self._recent_ids = RecentIds(rows, window=window, now=now)
        recent.window = max(recent.window, window)
        return recent

    async def claim_events(self, limit: int, *, lease: float, now: float) -> list[InboxEvent]:
        def op(conn: sqlite3.Connection) -> list[InboxEvent]:
            leased = self._event_leases = _live(self._event_leases, now)
            rows = conn.execute(
                "SELECT e.seq, e.id, e.name, p.payload, e.received_at FROM events e"
                " JOIN event_payloads p ON p.seq = e.seq"
                " WHERE e.state = 'pending' ORDER BY e.seq LIMIT ?",
                (limit + len(leased),),
            ).fetchall()
            events = [InboxEvent(*row) for row in rows if row[0] not in leased][:limit]
            leased.update((event.seq, now + lease) for event in events)
            return events

        return await self._call(op)

    async def load_snapshots(self, keys: list[str]) -> dict[str, bytes]:
        def op(conn: sqlite3.Connection) -> dict[str, bytes]:
            found = {}
            for key in set(keys):
                row = conn.execute("SELECT body FROM snapshots WHERE entity = ?", (key,)).fetchone()
                if row is not None:
                    found[key] = row[0]
            return found

        return await self._call(op)

    async def record_routing(self, routed: list[RoutedEvent], *, now: float) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            todo = []
            for item in routed:
                marked = conn.execute(
                    "UPDATE events SET state = 'routed' WHERE seq = ? AND state = 'pending'",
                    (item.event.seq,),
                )
                self._event_leases.pop(item.event.seq, None)
                if marked.rowcount:  # routed already: a repeat must not double the jobs
                    todo.append(item)
            batch = [(item.event.seq, item.deliveries) for item in todo]
            verdicts = policies.decide_throttles(
                batch, _throttle_windows(conn, policies.throttle_keys(batch)), now
            )
            _write_throttles(conn, verdicts)
            _insert_deliveries(conn, verdicts.kept, now)
            _join_digests(
                conn, [(item.event.seq, entry) for item in todo for entry in item.digests], now
            )
            for item in todo:
                if item.snapshot is not None:
                    conn.execute(
                        "INSERT INTO snapshots (entity, body, updated_at) VALUES (?,?,?)"
                        " ON CONFLICT (entity) DO UPDATE SET body = excluded.body,"
                        " updated_at = excluded.updated_at",
                        (*item.snapshot, now),
                    )
            return verdicts.suppressed

        return await self._call(op)

    async def claim_due_digests(self, limit: int, *, lease: float, now: float) -> list[DueDigest]:
        def op(conn: sqlite3.Connection) -> list[DueDigest]:
            leased = self._digest_leases = _live(self._digest_leases, now)
            rows = conn.execute(
                "SELECT id, rule, group_key FROM digests WHERE state = 'open' AND due_at <= ?"
                " ORDER BY due_at LIMIT ?",
                (now, limit + len(leased)),
            ).fetchall()
            due = []
            for digest_id, rule, group in [r for r in rows if r[0] not in leased][:limit]:
                events = conn.execute(
                    "SELECT e.seq, e.id, e.name, p.payload, e.received_at FROM digest_events d"
                    " JOIN events e ON e.seq = d.event_seq JOIN event_payloads p ON p.seq = e.seq"
                    " WHERE d.digest_id = ? ORDER BY e.seq",
                    (digest_id,),
                ).fetchall()
                due.append(DueDigest(digest_id, rule, group, [InboxEvent(*e) for e in events]))
                leased[digest_id] = now + lease
            conn.executemany(
                "UPDATE digests SET sealed = 1 WHERE id = ? AND sealed = 0",
                [(digest.id,) for digest in due],
            )
            return due

        return await self._call(op)

    async def record_digest(
        self, digest_id: int, deliveries: list[NewDelivery], *, now: float
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            self._digest_leases.pop(digest_id, None)
            closed = conn.execute(
                "UPDATE digests SET state = 'sent' WHERE id = ? AND state = 'open'", (digest_id,)
            )
            first = conn.execute(
                "SELECT min(event_seq) FROM digest_events WHERE digest_id = ?", (digest_id,)
            ).fetchone()[0]
            if closed.rowcount and first is not None:
                _insert_deliveries(conn, [(first, d) for d in deliveries], now)

        await self._call(op)

    # -- deliveries ---------------------------------------------------------------------

    async def claim_deliveries(
        self, channel: str, limit: int, *, lease: float, now: float
    ) -> list[DeliveryJob]:
        def op(conn: sqlite3.Connection) -> list[DeliveryJob]:
            leased = self._delivery_leases = _live(self._delivery_leases, now)
            # Due ids first (from the index alone), then the rows of the unleased ones:
            # the messages and events of jobs in flight are not read again.
            due = conn.execute(
                "SELECT id FROM deliveries"
                " WHERE state = 'pending' AND channel = ? AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (channel, now, limit + len(leased)),
            ).fetchall()
            ids = [row[0] for row in due if row[0] not in leased][:limit]
            if not ids:
                return []
            # One row per id, looked up by rowid: an IN list and ORDER BY here would each
            # build a temporary b-tree per claim (SQLite 3.40): up to a third of its cost.
            rows = conn.execute(
                "SELECT d.id, d.key, e.id, e.name, d.rule, d.channel, d.message, p.payload,"
                " d.attempts, d.created_at, e.received_at"
                " FROM json_each(?) j CROSS JOIN deliveries d ON d.id = j.value"
                " JOIN events e ON e.seq = d.event_seq"
                " JOIN event_payloads p ON p.seq = d.event_seq",
                (json.dumps(ids),),
            ).fetchall()
            due_order = {delivery_id: index for index, delivery_id in enumerate(ids)}
            rows.sort(key=lambda row: due_order[row[0]])  # oldest due first, as claimed
            jobs = [DeliveryJob(*row) for row in rows]
            leased.update((job.id, now + lease) for job in jobs)
            return jobs

        return await self._call(op)

    async def finish_delivery(
        self,
        delivery_id: int,
        state: DeliveryState,
        *,
        attempts: int,
        now: float,
        next_attempt_at: float | None = None,
        error: str | None = None,
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, updated_at = ?,"
                " next_attempt_at = ?, last_error = ? WHERE id = ?",
                (state, attempts, now, next_attempt_at or now, error, delivery_id),
            )
            self._delivery_leases.pop(delivery_id, None)

        await self._call(op)

    async def hold_delivery(self, delivery_id: int, *, until: float, now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE deliveries SET next_attempt_at = ?, updated_at = ?"
                " WHERE id = ? AND state = 'pending'",
                (until, now, delivery_id),
            )
            self._delivery_leases.pop(delivery_id, None)

        await self._call(op)

    async def release_retries(self, channel: str, *, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE deliveries SET next_attempt_at = ?"
                " WHERE channel = ? AND state = 'pending' AND next_attempt_at > ?",
                (now, channel, now),
            ).rowcount

        return await self._call(op)

    async def next_due(self, channels: list[str]) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            due = [
                conn.execute(
                    "SELECT min(next_attempt_at) FROM deliveries"
                    " WHERE state = 'pending' AND channel = ?",
                    (channel,),
                ).fetchone()[0]
                for channel in channels
            ]
            return min((when for when in due if when is not None), default=None)

        return await self._call(op)

    async def list_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        limit: int = 100,
        channel: str | None = None,
        rule: str | None = None,
        since: float | None = None,
    ) -> list[DeliveryRecord]:
        def op(conn: sqlite3.Connection) -> list[DeliveryRecord]:
            where, args = _where(
                policies.DeliveryFilter(state=state, channel=channel, rule=rule, since=since)
            )
            # Dead and pending rows are few among many: read them through their partial
            # index (the planner would rather scan the whole table to skip a sort).
            index = _STATE_INDEX.get(state or "", "")
            rows = conn.execute(
                f"SELECT {_RECORD} FROM deliveries d {index}"
                f" JOIN events e ON e.seq = d.event_seq WHERE {where} ORDER BY d.id DESC LIMIT ?",
                [*args, limit],
            ).fetchall()
            return [DeliveryRecord(*row) for row in rows]

        return await self._call(op)

    async def get_delivery(self, delivery_id: int) -> DeliveryDetail | None:
        def op(conn: sqlite3.Connection) -> DeliveryDetail | None:
            row = conn.execute(
                f"SELECT {_RECORD}, d.message, p.payload FROM deliveries d"
                " JOIN events e ON e.seq = d.event_seq"
                " LEFT JOIN event_payloads p ON p.seq = d.event_seq WHERE d.id = ?",
                (delivery_id,),
            ).fetchone()
            if row is None:
                return None
            return DeliveryDetail(DeliveryRecord(*row[:-2]), row[-2], row[-1])

        return await self._call(op)

    async def replay(
        self,
        delivery_ids: list[int] | None,
        *,
        now: float,
        channel: str | None = None,
        rule: str | None = None,
        since: float | None = None,
        state: DeliveryState = "dead",
    ) -> int:
        if state not in policies.REPLAYABLE_STATES:
            raise ValueError(f"cannot replay {state} deliveries")

        def op(conn: sqlite3.Connection) -> int:
            where, args = _where(
                policies.DeliveryFilter(
                    state=state, ids=delivery_ids, channel=channel, rule=rule, since=since
                )
            )
            return conn.execute(
                "UPDATE deliveries AS d SET state = 'pending', attempts = 0, silence_id = NULL,"
                f" next_attempt_at = ?, updated_at = ? WHERE {where}",
                [now, now, *args],
            ).rowcount

        return await self._call(op)

    async def purge(
        self,
        delivery_ids: list[int] | None,
        *,
        channel: str | None = None,
        rule: str | None = None,
        since: float | None = None,
        state: DeliveryState = "dead",
    ) -> int:
        if state not in policies.REPLAYABLE_STATES:
            raise ValueError(f"cannot purge {state} deliveries")

        def op(conn: sqlite3.Connection) -> int:
            where, args = _where(
                policies.DeliveryFilter(
                    state=state, ids=delivery_ids, channel=channel, rule=rule, since=since
                )
            )
            return conn.execute(f"DELETE FROM deliveries AS d WHERE {where}", args).rowcount

        return await self._call(op)

    async def release_held(self, *, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE deliveries SET state = 'pending', updated_at = ?"
                " WHERE state = 'held' AND next_attempt_at <= ?",
                (now, now),
            ).rowcount

        return await self._call(op)

    # -- silences -----------------------------------------------------------------------

    async def add_silence(self, silence: Silence) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO silences ({_SILENCE}) VALUES (?,?,?,?,?,?,?)",
                (
                    silence.id,
                    json.dumps(silence.matchers, sort_keys=True),
                    silence.starts_at,
                    silence.ends_at,
                    silence.author,
                    silence.comment,
                    silence.created_at,
                ),
            )

        await self._call(op)

    async def list_silences(self, *, active_at: float | None = None) -> list[Silence]:
        def op(conn: sqlite3.Connection) -> list[Silence]:
            if active_at is None:
                rows = conn.execute(f"SELECT {_SILENCE} FROM silences ORDER BY created_at DESC, id")
            else:
                rows = conn.execute(
                    f"SELECT {_SILENCE} FROM silences WHERE ends_at > ? AND starts_at <= ?"
                    " ORDER BY created_at DESC, id",
                    (active_at, active_at),
                )
            return [_silence(row) for row in rows]

        return await self._call(op)

    async def expire_silence(self, silence_id: str, *, now: float) -> Silence | None:
        def op(conn: sqlite3.Connection) -> Silence | None:
            conn.execute(
                "UPDATE silences SET ends_at = ? WHERE id = ? AND ends_at > ?",
                (now, silence_id, now),
            )
            row = conn.execute(
                f"SELECT {_SILENCE} FROM silences WHERE id = ?", (silence_id,)
            ).fetchone()
            return None if row is None else _silence(row)

        return await self._call(op)

    async def stored_events(self, *, since: float, limit: int) -> list[InboxEvent]:
        def op(conn: sqlite3.Connection) -> list[InboxEvent]:
            rows = conn.execute(
                "SELECT e.seq, e.id, e.name, p.payload, e.received_at FROM events e"
                " JOIN event_payloads p ON p.seq = e.seq"
                " WHERE e.received_at >= ? AND e.state != 'duplicate' ORDER BY e.seq LIMIT ?",
                (since, limit),
            ).fetchall()
            return [InboxEvent(*row) for row in rows]

        return await self._call(op)

    async def subscribe(
        self, callback: Callable[[str], None]
    ) -> Callable[[], Awaitable[None]] | None:
        return None  # one process owns the file: its workers are woken directly

    async def counts(self) -> StoreCounts:
        def op(conn: sqlite3.Connection) -> StoreCounts:
            # Each count is answered by a partial index, not a table scan.
            (events,) = conn.execute(
                "SELECT count(*) FROM events WHERE state = 'pending'"
            ).fetchone()
            (pending,) = conn.execute(
                "SELECT count(*) FROM deliveries WHERE state = 'pending'"
            ).fetchone()
            (dead,) = conn.execute(
                "SELECT count(*) FROM deliveries WHERE state = 'dead'"
            ).fetchone()
            return StoreCounts(events_pending=events, deliveries_pending=pending, dead=dead)

        return await self._call(op)

    async def oldest_pending(self) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            return conn.execute(
                "SELECT min(created_at) FROM deliveries WHERE state = 'pending'"
            ).fetchone()[0]

        return await self._call(op)

    async def size_bytes(self) -> int:
        total = 0
        for path in (self.path, f"{self.path}-wal"):
            try:
                total += os.stat(path).st_size
            except OSError:
                pass
        return total

    async def recent_events(self, limit: int = 20) -> list[EventRecord]:
        def op(conn: sqlite3.Connection) -> list[EventRecord]:
            events = conn.execute(
                "SELECT seq, id, name, state, received_at FROM events ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            seqs = [row[0] for row in events]
            found: dict[int, list[DeliveryRecord]] = {seq: [] for seq in seqs}
            if seqs:
                rows = conn.execute(
                    f"SELECT d.event_seq, {_RECORD} FROM deliveries d"
                    " JOIN events e ON e.seq = d.event_seq"
                    f" WHERE d.event_seq IN ({','.join('?' * len(seqs))}) ORDER BY d.id",
                    seqs,
                ).fetchall()
                for row in rows:
                    found[row[0]].append(DeliveryRecord(*row[1:]))
            return [EventRecord(*row, deliveries=found[row[0]]) for row in events]

        return await self._call(op)

    async def prune(self, *, before: float, limit: int = 1000) -> Pruned:
        def op(conn: sqlite3.Connection) -> Pruned:
            # Rows are scanned oldest first and the scan stops at the cutoff, so a pass
            # reads what it deletes plus the old rows it must keep (pending, dead).
            deliveries = []
            cursor = conn.execute(
                "SELECT id, state, created_at, updated_at FROM deliveries ORDER BY id"
            )
            for delivery_id, state, created_at, updated_at in cursor:
                if created_at >= before or len(deliveries) >= limit:
                    break  # updated_at >= created_at: nothing later is old enough
                if policies.delivery_expired(state, updated_at, before):
                    deliveries.append(delivery_id)
            cursor.close()
            _delete(conn, "DELETE FROM deliveries WHERE id IN", deliveries)

            digests = _first(
                conn.execute(
                    "SELECT id, state, opened_at FROM digests WHERE opened_at < ? ORDER BY id",
                    (before,),
                ),
                lambda row: policies.digest_expired(row[1], row[2], before),
                limit,
            )
            _delete(conn, "DELETE FROM digest_events WHERE digest_id IN", digests)
            _delete(conn, "DELETE FROM digests WHERE id IN", digests)

            events, ids = [], set()
            cursor = conn.execute("SELECT seq, id, state, received_at FROM events ORDER BY seq")
            for seq, event_id, state, received_at in cursor:
                if received_at >= before or len(events) >= limit:
                    break
                # (Only an old, routed event is looked up for references.)
                if policies.event_expired(
                    state, received_at, state != "pending" and _referenced(conn, seq), before
                ):
                    events.append(seq)
                    ids.add(event_id)
            cursor.close()
            _delete(conn, "DELETE FROM event_payloads WHERE seq IN", events)
            _delete(conn, "DELETE FROM events WHERE seq IN", events)
            if self._recent_ids is not None:  # their ids leave the duplicate check too
                for event_id in ids:
                    self._recent_ids.forget(event_id, before)

            throttles = _first(
                conn.execute("SELECT rowid, until FROM throttles WHERE until < ?", (before,)),
                lambda row: policies.throttle_expired(row[1], before),
                limit,
            )
            _delete(conn, "DELETE FROM throttles WHERE rowid IN", throttles)
            return Pruned(len(deliveries), len(events), len(digests), len(throttles))

        return await self._call(op)


def _silence(row: tuple[Any, ...]) -> Silence:
    return Silence(row[0], json.loads(row[1]), *row[2:])


def _first(
    rows: sqlite3.Cursor, expired: Callable[[tuple[Any, ...]], bool], limit: int
) -> list[Any]:
    """The keys (first column) of the first ``limit`` rows that ``expired`` says go."""
    found = []
    for row in rows:
        if len(found) >= limit:
            break
        if expired(row):
            found.append(row[0])
    rows.close()
    return found


def _where(selected: policies.DeliveryFilter) -> tuple[str, list[Any]]:
    """The WHERE clause of a delivery filter over deliveries ``d``. The state is
    written as a literal (the filter checked it), so that SQLite can use the partial
    indexes."""
    clauses, args = ["1"], []
    for column, operator, value in selected.terms():
        if column == "state":
            clauses.append(f"d.state = '{value}'")
        elif operator == "in":
            clauses.append(f"d.{column} IN ({','.join('?' * len(value))})")
            args.extend(value)
        else:
            clauses.append(f"d.{column} {operator} ?")
            args.append(value)
    return " AND ".join(clauses), args


def _referenced(conn: sqlite3.Connection, seq: int) -> bool:
    """Whether a delivery or a digest group still points at this event."""
    return bool(
        conn.execute("SELECT 1 FROM deliveries WHERE event_seq = ? LIMIT 1", (seq,)).fetchone()
        or conn.execute(
            "SELECT 1 FROM digest_events WHERE event_seq = ? LIMIT 1", (seq,)
        ).fetchone()
    )


def _delete(conn: sqlite3.Connection, sql: str, keys: list[int]) -> None:
    """``sql (?, ?, ...)`` over ``keys``, in chunks below SQLite's parameter limit."""
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        conn.execute(f"{sql} ({','.join('?' * len(chunk))})", chunk)


def _insert_deliveries(
    conn: sqlite3.Connection, jobs: list[tuple[int, NewDelivery]], now: float
) -> None:
    """Create delivery jobs, ``(event seq, delivery)``; one with an error is born dead."""
    conn.executemany(
        "INSERT INTO deliveries (key, event_seq, rule, channel, message, state, created_at,"
        " updated_at, next_attempt_at, last_error, silence_id)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [
            (
                d.key,
                event_seq,
                d.rule,
                d.channel,
                d.message,
                policies.stored_state(d),
                now,
                now,
                policies.next_attempt(d, now),
                d.error,
                d.silence,
            )
            for event_seq, d in jobs
        ],
    )


def _throttle_windows(conn: sqlite3.Connection, keys: list[str]) -> dict[str, float | None]:
    """Where the windows of these throttle keys end (None: the key has none yet)."""
    windows: dict[str, float | None] = dict.fromkeys(keys)
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows = conn.execute(
            f"SELECT key, until FROM throttles WHERE key IN ({','.join('?' * len(chunk))})",
            chunk,
        )
        windows.update(rows)
    return windows


def _write_throttles(conn: sqlite3.Connection, verdicts: policies.ThrottleVerdicts) -> None:
    """Open the windows the verdicts opened and add what each key suppressed."""
    conn.executemany(
        "INSERT INTO throttles (key, until) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET until = excluded.until",
        list(verdicts.windows.items()),
    )
    conn.executemany(
        "UPDATE throttles SET suppressed = suppressed + ? WHERE key = ?",
        [(count, key) for key, count in verdicts.counted.items()],
    )


def _join_digests(
    conn: sqlite3.Connection, entries: list[tuple[int, DigestEntry]], now: float
) -> None:
    """Add events to the open group of their (rule, group key), opening it if needed."""
    for (rule, group_key), joining in policies.digest_joins(entries).items():
        row = conn.execute(
            "SELECT id, size, due_at FROM digests"
            " WHERE rule = ? AND group_key = ? AND state = 'open' AND sealed = 0",
            (rule, group_key),
        ).fetchone()
        current = None if row is None else policies.DigestGroup(size=row[1], due_at=row[2])
        after = policies.join_digest(current, [entry for _, entry in joining], now)
        if row is None:
            digest_id = conn.execute(
                "INSERT INTO digests (rule, group_key, state, opened_at, due_at, size)"
                " VALUES (?, ?, 'open', ?, ?, ?)",
                (rule, group_key, now, after.due_at, after.size),
            ).lastrowid
        else:
            digest_id = row[0]
            conn.execute(
                "UPDATE digests SET size = ?, due_at = ? WHERE id = ?",
                (after.size, after.due_at, digest_id),
            )
        conn.executemany(
            "INSERT OR IGNORE INTO digest_events (digest_id, event_seq) VALUES (?, ?)",
            [(digest_id, seq) for seq, _ in joining],
        )


def _live(leases: dict[int, float], now: float) -> dict[int, float]:
    """The leases that have not expired."""
    return {key: until for key, until in leases.items() if until > now}


def _settle_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _settle_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _settle_all(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if ok:
            _settle_result(future, value)
        else:
            _settle_exception(future, value)
