"""Shared store: PostgreSQL through an asyncpg connection pool, for several replicas.

Every router replica pointed at the same database (and schema) shares one inbox, one
delivery queue and one set of throttles, digests and snapshots. What SQLite gets
from owning its file, this store gets from the database:

* **Leases live in the rows** (``lease_until``, ``leased_by``). A claim is one
  ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) ... RETURNING``
  statement: two replicas never lock the same row, and a row whose lease is still
  running is not claimable. A crashed replica's leases simply expire and the rows
  are taken over. ``record_routing``, ``record_digest`` and ``finish_delivery``
  clear the lease; their ``WHERE state = ...`` guards make a late repeat from a
  replica whose lease ran out a no-op instead of a second set of jobs.
* **Dedupe** is an upsert on ``seen_events(id)``: ``INSERT ... ON CONFLICT DO
  UPDATE ... WHERE accepted_at < now - window RETURNING id``. The unique index makes
  a concurrent accept of the same id wait for the first one's transaction, then see
  its row: exactly one of them returns the id (pending), the other is a duplicate.
* **Throttles** are locked (inserted if missing) in key order at the start of
  routing a batch, then decided in that transaction by ``router.store.policies``;
  **digest groups** are locked (opened if missing) with ``INSERT ... ON CONFLICT
  (rule, group_key) WHERE state = 'open'``, then the policy decides their size and
  due time and they are written in the same transaction. A claimed
  digest is sealed (``state = 'flushing'``) so that an event routed meanwhile by
  another replica opens a new group instead of joining one whose message is being
  rendered without it.
* Rows are always locked in one global order (events by seq, throttles by key,
  digests by (rule, group), snapshots by entity), so replicas do not deadlock.

Writes are committed before their coroutine returns (durable with the server's
``synchronous_commit``, ``on`` by default).

The URL is a libpq-style ``postgresql://user:password@host:port/database`` with
these extra query parameters, understood here and not sent to the server:

* ``schema=NAME``: keep the tables in this schema (created if missing) by putting it
  first on the connections' ``search_path``; without it the server's
  ``search_path`` decides (usually ``public``).
* ``replica=NAME``: a stable name for this replica. Leases are tagged with it, and
  ``open()`` releases the leases still tagged with it (left by this replica's
  previous, crashed process) instead of waiting for them to expire. Every live
  replica must have a different name. Without it, a random name is used.
* ``pool_min`` / ``pool_max``: connection pool size (default 1 and 10).

Any other query parameter is passed to asyncpg (``sslmode=...``, or a server setting
such as ``application_name=...``; by default it is ``router <replica>``, so that
``pg_stat_activity`` shows which replica holds a session).

An addition to the ``Store`` protocol: ``subscribe(callback)`` listens (LISTEN) for
the NOTIFY that every replica sends after accepting events and after creating or
requeueing deliveries, so that other replicas' idle workers can wake at once instead of
at their next poll. Polling still works without it.
"""

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

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
    log_schema_change,
)

log = logging.getLogger(__name__)

__all__ = ["MIGRATIONS", "PostgresStore", "WakeCallback", "parse_url"]

# A notification's payload: which kind of work may be waiting.
WakeCallback = Callable[[str], None]
EVENTS = "events"  # events were accepted: routing workers should claim
DELIVERIES = "deliveries"  # deliveries were created or requeued: dispatchers should claim

# The first key of the advisory lock taken while migrating (the second is the schema).
MIGRATION_LOCK = 0x726F7574  # "rout"

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_OWN_PARAMS = ("schema", "replica", "pool_min", "pool_max")

MIGRATIONS: list[str] = [
    # v1: the inbox and the delivery queue. The event body lives apart from its state
    # so that leasing or marking an event routed rewrites a small row, not the payload.
    # seen_events is the dedupe index: one row per event id, the time it was last
    # accepted as new.
    """
    CREATE TABLE events (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'routed', 'duplicate')),
        lease_until DOUBLE PRECISION,
        leased_by TEXT
    );
    CREATE INDEX events_pending ON events (seq) WHERE state = 'pending';
    CREATE TABLE event_payloads (
        seq BIGINT PRIMARY KEY REFERENCES events (seq),
        payload BYTEA NOT NULL
    );
    CREATE TABLE seen_events (
        id TEXT PRIMARY KEY,
        accepted_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE deliveries (
        id BIGSERIAL PRIMARY KEY,
        key TEXT NOT NULL,
        event_seq BIGINT NOT NULL REFERENCES events (seq),
        rule TEXT NOT NULL,
        channel TEXT NOT NULL,
        message BYTEA NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'logged', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        last_error TEXT,
        lease_until DOUBLE PRECISION,
        leased_by TEXT
    );
    CREATE INDEX deliveries_due ON deliveries (channel, next_attempt_at)
        WHERE state = 'pending';
    CREATE INDEX deliveries_dead ON deliveries (updated_at) WHERE state = 'dead';
    CREATE INDEX deliveries_finished ON deliveries (updated_at)
        WHERE state IN ('delivered', 'logged');
    CREATE INDEX deliveries_by_event ON deliveries (event_seq);
    CREATE INDEX events_received ON events (received_at) WHERE state <> 'pending';
    """,
    # v2: noise control and "what changed": state that must survive restarts.
    # A digest is 'open' (joinable), 'flushing' (claimed: sealed, being rendered)
    # or 'sent'; only one open group per (rule, group_key).
    """
    CREATE TABLE snapshots (
        entity TEXT PRIMARY KEY,
        body BYTEA NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE throttles (
        key TEXT PRIMARY KEY,
        until DOUBLE PRECISION NOT NULL,
        suppressed BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE digests (
        id BIGSERIAL PRIMARY KEY,
        rule TEXT NOT NULL,
        group_key TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'flushing', 'sent')),
        opened_at DOUBLE PRECISION NOT NULL,
        due_at DOUBLE PRECISION NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        max_size INTEGER NOT NULL,
        lease_until DOUBLE PRECISION,
        leased_by TEXT
    );
    CREATE UNIQUE INDEX digests_open ON digests (rule, group_key) WHERE state = 'open';
    CREATE INDEX digests_due ON digests (due_at) WHERE state IN ('open', 'flushing');
    CREATE TABLE digest_events (
        digest_id BIGINT NOT NULL REFERENCES digests (id),
        event_seq BIGINT NOT NULL REFERENCES events (seq),
        PRIMARY KEY (digest_id, event_seq)
    );
    CREATE INDEX digest_events_by_event ON digest_events (event_seq);
    CREATE INDEX digests_sent ON digests (opened_at) WHERE state = 'sent';
    CREATE INDEX throttles_until ON throttles (until);
    """,
    # v3: silences and quiet hours: three more delivery states (silenced, muted, held),
    # the silence that matched a delivery, and the silences themselves.
    """
    ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
    ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check CHECK (state IN
        ('pending', 'delivered', 'logged', 'dead', 'silenced', 'muted', 'held'));
    ALTER TABLE deliveries ADD COLUMN silence_id TEXT;
    CREATE INDEX deliveries_held ON deliveries (next_attempt_at) WHERE state = 'held';
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        matchers TEXT NOT NULL,
        starts_at DOUBLE PRECISION NOT NULL,
        ends_at DOUBLE PRECISION NOT NULL,
        author TEXT NOT NULL,
        comment TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX silences_by_end ON silences (ends_at);
    """,
]


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """Split a store URL into the DSN for asyncpg and this store's own parameters
    (``schema``, ``replica``, ``pool_min``, ``pool_max``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {parts.scheme}://...")
    own: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        (own.__setitem__(key, value) if key in _OWN_PARAMS else rest.append((key, value)))
    schema = own.get("schema")
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"schema={schema!r}: use letters, digits and underscores (at most 63, not"
            " starting with a digit)"
        )
    for key in ("pool_min", "pool_max"):
        if key in own and not own[key].isdigit():
            raise ValueError(f"{key}={own[key]!r} is not a number")
    return urlunsplit(parts._replace(query=urlencode(rest))), own


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# Not leased, or the lease has run out ($1 is always ``now``).
_LEASE_FREE = "(lease_until IS NULL OR lease_until <= $1)"


# accept_events in one statement (one round trip, one implicit transaction):
# the first occurrence of each id in the batch upserts its seen_events row (in id
# order, so concurrent batches lock in the same order); the ids that row returned
# are new, everything else is a duplicate; events and payloads are inserted with
# sequence numbers in batch order; replicas are notified if anything is new.
_ACCEPT = """
WITH input AS (
    SELECT t.ord, t.id, t.name, t.payload,
           t.ord = min(t.ord) OVER (PARTITION BY t.id) AS first
    FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY AS t(id, name, payload, ord)
),
won AS (
    INSERT INTO seen_events AS s (id, accepted_at)
    SELECT id, $4 FROM input WHERE first ORDER BY id
    ON CONFLICT (id) DO UPDATE SET accepted_at = excluded.accepted_at
    WHERE s.accepted_at < excluded.accepted_at - $5
    RETURNING s.id
),
batch AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('events', 'seq')) AS seq, i.ord, i.id, i.name,
           i.payload, (i.first AND i.id IN (SELECT id FROM won)) AS fresh
    FROM input i ORDER BY i.ord
),
inserted AS (
    INSERT INTO events (seq, id, name, received_at, state)
    SELECT seq, id, name, $4, CASE WHEN fresh THEN 'pending' ELSE 'duplicate' END
    FROM batch ORDER BY ord
),
payloads AS (
    INSERT INTO event_payloads (seq, payload) SELECT seq, payload FROM batch WHERE fresh
),
notified AS MATERIALIZED (
    SELECT pg_notify($6, $7) FROM (SELECT 1 FROM batch WHERE fresh LIMIT 1) AS any_new
)
SELECT array_agg(fresh ORDER BY ord), (SELECT count(*) FROM notified) FROM batch
"""

_CLAIM_EVENTS = f"""
WITH picked AS (
    SELECT seq FROM events WHERE state = 'pending' AND {_LEASE_FREE}
    ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE events e SET lease_until = $3, leased_by = $4
FROM picked, event_payloads p
WHERE e.seq = picked.seq AND p.seq = e.seq
RETURNING e.seq, e.id, e.name, p.payload, e.received_at
"""

# The digest claim seals the groups; their events are read by a later statement
# (see claim_due_digests).
_CLAIM_DIGESTS = """
WITH picked AS (
    SELECT id FROM digests
    WHERE (state = 'open' AND due_at <= $1)
       OR (state = 'flushing' AND (lease_until IS NULL OR lease_until <= $1))
    ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE digests d SET state = 'flushing', lease_until = $3, leased_by = $4
FROM picked WHERE d.id = picked.id
RETURNING d.id, d.rule, d.group_key, d.due_at
"""

_DIGEST_EVENTS = """
SELECT d.digest_id, e.seq, e.id, e.name, p.payload, e.received_at
FROM digest_events d JOIN events e ON e.seq = d.event_seq JOIN event_payloads p ON p.seq = e.seq
WHERE d.digest_id = ANY($1::bigint[]) ORDER BY d.digest_id, e.seq
"""

_CLAIM_DELIVERIES = f"""
WITH picked AS (
    SELECT id FROM deliveries
    WHERE state = 'pending' AND channel = $5 AND next_attempt_at <= $1 AND {_LEASE_FREE}
    ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE deliveries d SET lease_until = $3, leased_by = $4
    FROM picked WHERE d.id = picked.id
    RETURNING d.id, d.key, d.event_seq, d.rule, d.channel, d.message, d.attempts,
              d.created_at, d.next_attempt_at
)
SELECT c.id, c.key, e.id AS event_id, e.name, c.rule, c.channel, c.message,
       p.payload, c.attempts, c.created_at, e.received_at
FROM claimed c JOIN events e ON e.seq = c.event_seq JOIN event_payloads p ON p.seq = c.event_seq
ORDER BY c.next_attempt_at, c.id
"""

_INSERT_DELIVERIES = """
INSERT INTO deliveries (key, event_seq, rule, channel, message, state, created_at,
                        updated_at, next_attempt_at, last_error, silence_id)
SELECT t.key, t.event_seq, t.rule, t.channel, t.message, t.state, $7, $7, t.due, t.error,
       t.silence
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bytea[], $6::text[],
            $8::text[], $9::float8[], $10::text[])
     WITH ORDINALITY AS t(key, event_seq, rule, channel, message, error, state, due, silence,
                          ord)
ORDER BY t.ord
"""


def _insert_args(jobs: list[tuple[int, NewDelivery]], now: float) -> list[Any]:
    """The arguments of ``_INSERT_DELIVERIES`` for ``(event seq, delivery)`` pairs."""
    return [
        [d.key for _, d in jobs],
        [seq for seq, _ in jobs],
        [d.rule for _, d in jobs],
        [d.channel for _, d in jobs],
        [d.message for _, d in jobs],
        [d.error for _, d in jobs],
        now,
        [policies.stored_state(d) for _, d in jobs],
        [policies.next_attempt(d, now) for _, d in jobs],
        [d.silence for _, d in jobs],
    ]


# Lock every throttle key of a batch (creating missing ones as "window closed") in
# key order, and read where their windows end.
_LOCK_THROTTLES = """
INSERT INTO throttles AS t (key, until)
SELECT k, '-Infinity'::float8 FROM unnest($1::text[]) AS k ORDER BY k
ON CONFLICT (key) DO UPDATE SET until = t.until
RETURNING t.key, t.until
"""

_UPDATE_THROTTLES = """
UPDATE throttles t SET until = u.until, suppressed = t.suppressed + u.n
FROM unnest($1::text[], $2::float8[], $3::bigint[]) AS u(key, until, n)
WHERE t.key = u.key
"""

# Lock the open group of each (rule, group) of a batch, in that order, opening the
# missing ones (empty, due when their first event says), and read their size and due
# time: the policy decides how joining changes them (_WRITE_DIGESTS).
_LOCK_DIGESTS = """
INSERT INTO digests AS d (rule, group_key, state, opened_at, due_at, size, max_size)
SELECT t.rule, t.group_key, 'open', $4, t.due_at, 0, 0
FROM unnest($1::text[], $2::text[], $3::float8[]) AS t(rule, group_key, due_at)
ORDER BY t.rule, t.group_key
ON CONFLICT (rule, group_key) WHERE state = 'open' DO UPDATE SET size = d.size
RETURNING d.id, d.rule, d.group_key, d.size, d.due_at
"""

_WRITE_DIGESTS = """
WITH updated AS (
    UPDATE digests d SET size = u.size, due_at = u.due_at, max_size = u.max_size
    FROM unnest($1::bigint[], $2::int[], $3::float8[], $4::int[]) AS u(id, size, due_at, max_size)
    WHERE d.id = u.id
)
INSERT INTO digest_events (digest_id, event_seq)
SELECT * FROM unnest($5::bigint[], $6::bigint[]) AS e(digest_id, event_seq)
ORDER BY 1, 2
ON CONFLICT DO NOTHING
"""

# The columns of a DeliveryRecord, in order (deliveries d joined with events e).
_RECORD = (
    "d.id, d.key, e.id, d.rule, d.channel, d.state, d.attempts, d.created_at,"
    " d.updated_at, d.next_attempt_at, d.last_error, e.name, d.silence_id"
)
_SILENCE = "id, matchers, starts_at, ends_at, author, comment, created_at"

_UPSERT_SNAPSHOTS = """
INSERT INTO snapshots (entity, body, updated_at)
SELECT entity, body, $3 FROM unnest($1::text[], $2::bytea[]) AS t(entity, body) ORDER BY entity
ON CONFLICT (entity) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at
"""


# The states policies.delivery_expired accepts, as a literal list: the planner then
# uses the partial index deliveries_finished.
_FINISHED = ", ".join(f"'{state}'" for state in policies.FINISHED_STATES)


class PostgresStore:
    """The shared store: a PostgreSQL schema used by any number of router replicas."""

    def __init__(self, url: str) -> None:
        self.dsn, params = parse_url(url)
        self.schema: str | None = params.get("schema")
        self.replica_fixed = "replica" in params
        self.replica = params.get("replica") or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self.pool_min = int(params.get("pool_min", 1))
        self.pool_max = max(self.pool_min, int(params.get("pool_max", 10)))
        self.channel = ""  # the NOTIFY channel of this schema, known once open
        self._pool: asyncpg.Pool | None = None
        self._callbacks: list[WakeCallback] = []
        self._listener: asyncpg.Connection | None = None
        self._listening: asyncio.Task[None] | None = None
        self._closing = False

    # -- plumbing -------------------------------------------------------------------

    def _server_settings(self) -> dict[str, str]:
        settings = {"search_path": _quote(self.schema)} if self.schema else {}
        if "application_name=" not in self.dsn:
            # Operators (and tests) tell the replicas' sessions apart in pg_stat_activity.
            settings["application_name"] = f"router {self.replica}"[:63]
        return settings

    async def open(self) -> None:
        self._closing = False
        # Create the schema (if named) and migrate before the pool's connections
        # exist: the schema must exist for their search_path to find it.
        conn = await asyncpg.connect(self.dsn, server_settings=self._server_settings())
        try:
            self.channel = await self._migrate(conn)
        finally:
            await conn.close()
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self.pool_min,
            max_size=self.pool_max,
            server_settings=self._server_settings(),
        )
        if self.replica_fixed:
            await self._release_own_leases()

    async def _migrate(self, conn: asyncpg.Connection) -> str:
        """Apply the missing migrations under an advisory lock held to the end of the
        transaction: replicas starting together wait, then find nothing to do."""
        async with conn.transaction():
            if self.schema:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))", MIGRATION_LOCK, self.schema
                )
                # (Only when missing: creating needs a privilege that using does not.)
                if not await conn.fetchval(
                    "SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema
                ):
                    await conn.execute(f"CREATE SCHEMA {_quote(self.schema)}")
            schema = await conn.fetchval("SELECT current_schema()")
            if schema is None:
                raise RuntimeError(
                    "no schema to create the router's tables in: the search_path names none"
                    " that exists; add ?schema=NAME to the store URL"
                )
            if not self.schema:
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2))", MIGRATION_LOCK, schema
                )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"schema {schema!r} has version {version}, newer than this router knows"
                    f" ({len(MIGRATIONS)}): upgrade the router"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                await conn.execute(script)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
        log_schema_change(log, schema, version, len(MIGRATIONS))
        return f"router:{schema}"[:63]

    async def _release_own_leases(self) -> None:
        """With a fixed replica name, leases still tagged with it were left by this
        replica's previous process: release them now instead of when they expire."""
        async with self._acquire() as conn, conn.transaction():
            released = 0
            for table in ("events", "deliveries", "digests"):
                status = await conn.execute(
                    f"UPDATE {table} SET lease_until = NULL, leased_by = NULL WHERE leased_by = $1",
                    self.replica,
                )
                released += _rowcount(status)
        if released:
            log.info("released leases of a previous run", extra={"leases": released})

    async def close(self) -> None:
        self._closing = True
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=5)
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    def _acquire(self) -> Any:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool.acquire()

    # -- wake-ups (an addition to the Store protocol) ----------------------------------

    async def subscribe(self, callback: WakeCallback) -> Callable[[], Awaitable[None]]:
        """Call ``callback(kind)`` whenever another replica (or CLI) on this schema
        NOTIFYs: ``"events"`` after accepting new events (routing workers should
        claim), ``"deliveries"`` after creating or requeueing deliveries (dispatchers
        should claim). A replica's own notices are not passed on: it has woken its
        own workers already. The callback runs in the event loop and must not block.

        Notifications are a hint, never the only trigger: if the listening connection
        is lost, it is re-opened in the background and every callback then hears both
        kinds once (something may have been missed). Returns ``unsubscribe()``.
        """
        if self._pool is None:
            raise RuntimeError("store is not open")
        self._callbacks.append(callback)
        if self._listener is None and self._listening is None:
            await self._listen()

        async def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.dsn, server_settings=self._server_settings())
        await conn.add_listener(self.channel, self._notified)
        conn.add_termination_listener(self._listener_lost)
        self._listener = conn

    def _notice(self, kind: str) -> str:
        """A NOTIFY payload: the kind and the replica that sends it."""
        return f"{kind} {self.replica}"

    async def _notify(self, conn: Any, kind: str) -> None:
        await conn.execute("SELECT pg_notify($1, $2)", self.channel, self._notice(kind))

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        kind, _, sender = payload.partition(" ")
        if sender != self.replica:  # this replica woke its own workers already
            self._wake(kind)

    def _wake(self, *kinds: str) -> None:
        for callback in list(self._callbacks):
            for kind in kinds:
                try:
                    callback(kind)
                except Exception:
                    log.exception("store wake-up callback failed")

    def _listener_lost(self, conn: Any) -> None:
        self._listener = None
        if not self._closing and self._listening is None:
            self._listening = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        delay = 0.5
        try:
            while not self._closing:
                try:
                    await self._listen()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("store: LISTEN connection failed: %s; retrying", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                self._wake(EVENTS, DELIVERIES)
                return
        finally:
            self._listening = None

    # -- events -----------------------------------------------------------------------

    async def accept_events(
        self, events: list[tuple[str, str, bytes]], *, dedupe_window: float, now: float
    ) -> list[Accepted]:
        if not events:
            return []
        ids = [event[0] for event in events]
        async with self._acquire() as conn:
            fresh, _ = await conn.fetchrow(
                _ACCEPT,
                ids,
                [event[1] for event in events],
                [event[2] for event in events],
                now,
                dedupe_window,
                self.channel,
                self._notice(EVENTS),
            )
        return [Accepted(id=i, duplicate=not new) for i, new in zip(ids, fresh, strict=True)]

    async def claim_events(self, limit: int, *, lease: float, now: float) -> list[InboxEvent]:
        async with self._acquire() as conn:
            rows = await conn.fetch(_CLAIM_EVENTS, now, limit, now + lease, self.replica)
        return sorted((InboxEvent(*row) for row in rows), key=lambda event: event.seq)

    async def load_snapshots(self, keys: list[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        async with self._acquire() as conn:
            rows = await conn.fetch(
                "SELECT entity, body FROM snapshots WHERE entity = ANY($1::text[])",
                list(set(keys)),
            )
        return {entity: body for entity, body in rows}

    async def record_routing(self, routed: list[RoutedEvent], *, now: float) -> list[str]:
        if not routed:
            return []
        async with self._acquire() as conn, conn.transaction():
            marked = {
                row[0]
                for row in await conn.fetch(
                    "UPDATE events SET state = 'routed', lease_until = NULL, leased_by = NULL"
                    " WHERE seq = ANY($1::bigint[]) AND state = 'pending' RETURNING seq",
                    sorted({item.event.seq for item in routed}),
                )
            }
            # A repeat (routed already, e.g. by a replica that took over an expired
            # lease) must not double the jobs.
            todo = []
            for item in routed:  # (an event listed twice is recorded once)
                if item.event.seq in marked:
                    marked.discard(item.event.seq)
                    todo.append(item)
            if not todo:
                return []
            batch = [(item.event.seq, item.deliveries) for item in todo]
            verdicts = await _decide_throttles(conn, batch, now)
            jobs = verdicts.kept
            if jobs:
                await conn.execute(_INSERT_DELIVERIES, *_insert_args(jobs, now))
            entries = [(item.event.seq, entry) for item in todo for entry in item.digests]
            if entries:
                await _join_digests(conn, entries, now)
            snapshots = {
                item.snapshot[0]: item.snapshot[1] for item in todo if item.snapshot is not None
            }
            if snapshots:
                entities = sorted(snapshots)
                await conn.execute(
                    _UPSERT_SNAPSHOTS, entities, [snapshots[e] for e in entities], now
                )
            if any(policies.stored_state(d) == "pending" for _, d in jobs):
                await self._notify(conn, DELIVERIES)
        return verdicts.suppressed

    async def claim_due_digests(self, limit: int, *, lease: float, now: float) -> list[DueDigest]:
        async with self._acquire() as conn:
            groups = await conn.fetch(_CLAIM_DIGESTS, now, limit, now + lease, self.replica)
            if not groups:
                return []
            # Read the events only now, in a new snapshot: the claim sealed the groups,
            # so every event that joined them is committed and visible, and no more can.
            rows = await conn.fetch(_DIGEST_EVENTS, [group["id"] for group in groups])
        events: dict[int, list[InboxEvent]] = {}
        for digest_id, *event in rows:
            events.setdefault(digest_id, []).append(InboxEvent(*event))
        groups = sorted(groups, key=lambda group: (group["due_at"], group["id"]))
        return [
            DueDigest(digest_id, rule, group_key, events.get(digest_id, []))
            for digest_id, rule, group_key, _ in groups
        ]

    async def record_digest(
        self, digest_id: int, deliveries: list[NewDelivery], *, now: float
    ) -> None:
        async with self._acquire() as conn, conn.transaction():
            first = await conn.fetchrow(
                "UPDATE digests SET state = 'sent', lease_until = NULL, leased_by = NULL"
                " WHERE id = $1 AND state <> 'sent'"
                " RETURNING (SELECT min(event_seq) FROM digest_events WHERE digest_id = $1)",
                digest_id,
            )
            if first is None or first[0] is None or not deliveries:
                return  # sent already (by a replica that took over), or empty
            await conn.execute(
                _INSERT_DELIVERIES, *_insert_args([(first[0], d) for d in deliveries], now)
            )
            await self._notify(conn, DELIVERIES)

    # -- deliveries ---------------------------------------------------------------------

    async def claim_deliveries(
        self, channel: str, limit: int, *, lease: float, now: float
    ) -> list[DeliveryJob]:
        async with self._acquire() as conn:
            rows = await conn.fetch(
                _CLAIM_DELIVERIES, now, limit, now + lease, self.replica, channel
            )
        return [DeliveryJob(*row) for row in rows]

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
        # Only a pending delivery takes a result: a replica whose lease ran out must
        # not turn a delivery another replica finished back into a pending one.
        async with self._acquire() as conn:
            await conn.execute(
                "UPDATE deliveries SET state = $2, attempts = $3, updated_at = $4,"
                " next_attempt_at = $5, last_error = $6, lease_until = NULL, leased_by = NULL"
                " WHERE id = $1 AND state = 'pending'",
                delivery_id,
                state,
                attempts,
                now,
                next_attempt_at or now,
                error,
            )

    async def hold_delivery(self, delivery_id: int, *, until: float, now: float) -> None:
        async with self._acquire() as conn:
            await conn.execute(
                "UPDATE deliveries SET next_attempt_at = $2, updated_at = $3,"
                " lease_until = NULL, leased_by = NULL WHERE id = $1 AND state = 'pending'",
                delivery_id,
                until,
                now,
            )

    async def release_retries(self, channel: str, *, now: float) -> int:
        # Not the rows another replica holds: it records their outcome itself.
        async with self._acquire() as conn:
            return _rowcount(
                await conn.execute(
                    "UPDATE deliveries SET next_attempt_at = $1 WHERE channel = $2"
                    f" AND state = 'pending' AND next_attempt_at > $1 AND {_LEASE_FREE}",
                    now,
                    channel,
                )
            )

    async def next_due(self, channels: list[str]) -> float | None:
        """When the earliest pending delivery of these channels can be claimed: its
        next attempt, or the end of its lease if a replica holds it."""
        if not channels:
            return None
        async with self._acquire() as conn:
            return await conn.fetchval(
                "SELECT min(greatest(next_attempt_at, coalesce(lease_until, next_attempt_at)))"
                " FROM deliveries WHERE state = 'pending' AND channel = ANY($1::text[])",
                channels,
            )

    async def list_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        limit: int = 100,
        channel: str | None = None,
        rule: str | None = None,
        since: float | None = None,
    ) -> list[DeliveryRecord]:
        where, args = _where(
            policies.DeliveryFilter(state=state, channel=channel, rule=rule, since=since)
        )
        async with self._acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_RECORD} FROM deliveries d JOIN events e ON e.seq = d.event_seq"
                f" WHERE {where} ORDER BY d.id DESC LIMIT ${len(args) + 1}",
                *args,
                limit,
            )
        return [DeliveryRecord(*row) for row in rows]

    async def get_delivery(self, delivery_id: int) -> DeliveryDetail | None:
        async with self._acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_RECORD}, d.message, p.payload FROM deliveries d"
                " JOIN events e ON e.seq = d.event_seq"
                " LEFT JOIN event_payloads p ON p.seq = d.event_seq WHERE d.id = $1",
                delivery_id,
            )
        if row is None:
            return None
        return DeliveryDetail(DeliveryRecord(*row[:-2]), row[-2], row[-1])

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
        where, args = _where(
            policies.DeliveryFilter(
                state=state, ids=delivery_ids, channel=channel, rule=rule, since=since
            ),
            first=2,
        )
        async with self._acquire() as conn, conn.transaction():
            status = await conn.execute(
                "UPDATE deliveries d SET state = 'pending', attempts = 0, silence_id = NULL,"
                " next_attempt_at = $1,"
                f" updated_at = $1, lease_until = NULL, leased_by = NULL WHERE {where}",
                now,
                *args,
            )
            count = _rowcount(status)
            if count:
                await self._notify(conn, DELIVERIES)
        return count

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
        where, args = _where(
            policies.DeliveryFilter(
                state=state, ids=delivery_ids, channel=channel, rule=rule, since=since
            )
        )
        async with self._acquire() as conn:
            return _rowcount(await conn.execute(f"DELETE FROM deliveries d WHERE {where}", *args))

    async def release_held(self, *, now: float) -> int:
        async with self._acquire() as conn, conn.transaction():
            count = _rowcount(
                await conn.execute(
                    "UPDATE deliveries SET state = 'pending', updated_at = $1"
                    " WHERE state = 'held' AND next_attempt_at <= $1",
                    now,
                )
            )
            if count:
                await self._notify(conn, DELIVERIES)
        return count

    # -- silences -------------------------------------------------------------------------

    async def add_silence(self, silence: Silence) -> None:
        async with self._acquire() as conn:
            await conn.execute(
                f"INSERT INTO silences ({_SILENCE}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                silence.id,
                json.dumps(silence.matchers, sort_keys=True),
                silence.starts_at,
                silence.ends_at,
                silence.author,
                silence.comment,
                silence.created_at,
            )

    async def list_silences(self, *, active_at: float | None = None) -> list[Silence]:
        async with self._acquire() as conn:
            if active_at is None:
                rows = await conn.fetch(
                    f"SELECT {_SILENCE} FROM silences ORDER BY created_at DESC, id"
                )
            else:
                rows = await conn.fetch(
                    f"SELECT {_SILENCE} FROM silences WHERE ends_at > $1 AND starts_at <= $1"
                    " ORDER BY created_at DESC, id",
                    active_at,
                )
        return [_silence(row) for row in rows]

    async def expire_silence(self, silence_id: str, *, now: float) -> Silence | None:
        async with self._acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE silences SET ends_at = $2 WHERE id = $1 AND ends_at > $2",
                silence_id,
                now,
            )
            row = await conn.fetchrow(f"SELECT {_SILENCE} FROM silences WHERE id = $1", silence_id)
        return None if row is None else _silence(row)

    async def stored_events(self, *, since: float, limit: int) -> list[InboxEvent]:
        async with self._acquire() as conn, conn.transaction(readonly=True):
            rows = await conn.fetch(
                "SELECT e.seq, e.id, e.name, p.payload, e.received_at FROM events e"
                " JOIN event_payloads p ON p.seq = e.seq"
                " WHERE e.received_at >= $1 AND e.state <> 'duplicate' ORDER BY e.seq LIMIT $2",
                since,
                limit,
            )
        return [InboxEvent(*row) for row in rows]

    async def counts(self) -> StoreCounts:
        async with self._acquire() as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM events WHERE state = 'pending'),"
                " (SELECT count(*) FROM deliveries WHERE state = 'pending'),"
                " (SELECT count(*) FROM deliveries WHERE state = 'dead')"
            )
        return StoreCounts(events_pending=row[0], deliveries_pending=row[1], dead=row[2])

    async def oldest_pending(self) -> float | None:
        async with self._acquire() as conn:
            return await conn.fetchval(
                "SELECT min(created_at) FROM deliveries WHERE state = 'pending'"
            )

    async def size_bytes(self) -> int:
        """The size of this store's tables, with their indexes and TOAST, in bytes."""
        async with self._acquire() as conn:
            return await conn.fetchval(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            )

    async def recent_events(self, limit: int = 20) -> list[EventRecord]:
        async with self._acquire() as conn:
            events = await conn.fetch(
                "SELECT seq, id, name, state, received_at FROM events ORDER BY seq DESC LIMIT $1",
                limit,
            )
            seqs = [row[0] for row in events]
            found: dict[int, list[DeliveryRecord]] = {seq: [] for seq in seqs}
            if seqs:
                rows = await conn.fetch(
                    f"SELECT d.event_seq, {_RECORD} FROM deliveries d"
                    " JOIN events e ON e.seq = d.event_seq"
                    " WHERE d.event_seq = ANY($1::bigint[]) ORDER BY d.id",
                    seqs,
                )
                for row in rows:
                    found[row[0]].append(DeliveryRecord(*row[1:]))
        return [EventRecord(*row, deliveries=found[row[0]]) for row in events]

    async def prune(self, *, before: float, limit: int = 1000) -> Pruned:
        """Retention, one bounded pass (see the protocol). Each kind is deleted in its
        own short transaction, oldest first, so replicas pruning at the same time only
        wait briefly for each other, and a row a replica is working on (pending,
        leased, dead, in an open or flushing digest) is never a candidate."""
        # The candidates are selected (and locked) in SQL, not read and filtered: rows
        # another replica holds are skipped, and a pass never stalls behind old rows it
        # must keep. The conditions are the policies' (router.store.policies):
        # delivery_expired, digest_expired, event_expired, throttle_expired.
        async with self._acquire() as conn:
            deliveries = _rowcount(
                await conn.execute(
                    "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries"
                    f" WHERE state IN ({_FINISHED}) AND updated_at < $1"
                    " ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    before,
                    limit,
                )
            )
            async with conn.transaction():
                digests = await conn.fetch(
                    "SELECT id FROM digests WHERE state = 'sent' AND opened_at < $1"
                    " ORDER BY opened_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                    before,
                    limit,
                )
                ids = [row[0] for row in digests]
                if ids:
                    await conn.execute(
                        "DELETE FROM digest_events WHERE digest_id = ANY($1::bigint[])", ids
                    )
                    await conn.execute("DELETE FROM digests WHERE id = ANY($1::bigint[])", ids)
            async with conn.transaction():
                # Lock first (rows a routing transaction holds are skipped), then check
                # for references: a delivery or a digest pointing at the event keeps it.
                seqs = await conn.fetch(
                    "SELECT e.seq, e.id FROM events e"
                    " WHERE e.state <> 'pending' AND e.received_at < $1"
                    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq)"
                    " AND NOT EXISTS (SELECT 1 FROM digest_events g WHERE g.event_seq = e.seq)"
                    " ORDER BY e.received_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                    before,
                    limit,
                )
                events = [row[0] for row in seqs]
                if events:
                    await conn.execute(
                        "DELETE FROM event_payloads WHERE seq = ANY($1::bigint[])", events
                    )
                    await conn.execute("DELETE FROM events WHERE seq = ANY($1::bigint[])", events)
                    # Their ids leave the dedupe index too, as they do with SQLite
                    # (unless accepted again as new since the cutoff).
                    await conn.execute(
                        "DELETE FROM seen_events WHERE id = ANY($1::text[]) AND accepted_at < $2",
                        sorted({row[1] for row in seqs}),
                        before,
                    )
            throttles = _rowcount(
                await conn.execute(
                    "DELETE FROM throttles WHERE key IN (SELECT key FROM throttles"
                    " WHERE until < $1 ORDER BY until LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    before,
                    limit,
                )
            )
        return Pruned(deliveries, len(events), len(ids), throttles)


def _where(selected: policies.DeliveryFilter, *, first: int = 1) -> tuple[str, list[Any]]:
    """The WHERE clause of a delivery filter over deliveries ``d``, with its arguments
    numbered from ``$first``."""
    clauses, args = ["true"], []
    for column, operator, value in selected.terms():
        number = first + len(args)
        if operator == "in":
            clauses.append(f"d.{column} = ANY(${number}::bigint[])")
        else:
            clauses.append(f"d.{column} {operator} ${number}")
        args.append(value)
    return " AND ".join(clauses), args


async def _decide_throttles(
    conn: asyncpg.Connection, batch: list[tuple[int, list[NewDelivery]]], now: float
) -> policies.ThrottleVerdicts:
    """Lock the batch's throttle keys for the rest of the transaction (in key order,
    creating missing ones as "no window"), let the policy decide, and write its
    verdicts."""
    keys = policies.throttle_keys(batch)
    windows: dict[str, float | None] = {}
    if keys:
        windows = {key: end for key, end in await conn.fetch(_LOCK_THROTTLES, keys)}
    verdicts = policies.decide_throttles(batch, windows, now)
    written = verdicts.written()
    if written:
        await conn.execute(
            _UPDATE_THROTTLES,
            written,
            [verdicts.windows.get(key, windows[key]) for key in written],
            [verdicts.counted[key] for key in written],
        )
    return verdicts


async def _join_digests(
    conn: asyncpg.Connection, entries: list[tuple[int, DigestEntry]], now: float
) -> None:
    """Add events to the open group of their (rule, group key), opening it if needed."""
    joins = policies.digest_joins(entries)
    groups = await conn.fetch(
        _LOCK_DIGESTS,
        [rule for rule, _ in joins],
        [group for _, group in joins],
        [joining[0][1].due_at for joining in joins.values()],
        now,
    )
    ids, sizes, due, maxima, members, seqs = [], [], [], [], [], []
    for digest_id, rule, group_key, size, due_at in groups:
        joining = joins[(rule, group_key)]
        after = policies.join_digest(
            policies.DigestGroup(size=size, due_at=due_at), [e for _, e in joining], now
        )
        ids.append(digest_id)
        sizes.append(after.size)
        due.append(after.due_at)
        maxima.append(joining[-1][1].max)
        members.extend([digest_id] * len(joining))
        seqs.extend(seq for seq, _ in joining)
    await conn.execute(_WRITE_DIGESTS, ids, sizes, due, maxima, members, seqs)


def _silence(row: Any) -> Silence:
    return Silence(row[0], json.loads(row[1]), *row[2:])


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
