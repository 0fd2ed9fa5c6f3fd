"""The PostgreSQL store on a real server: the behaviours of the SQLite store's tests
(migrations, dedupe, claims and leases, routing with throttles, digests and snapshots,
replay, counts) plus what only a shared database needs (leases in rows, NOTIFY).

Every test gets a schema of its own (``?schema=`` in the store URL), dropped after it,
so tests never see each other's rows and can run again and again. The server is
``ROUTER_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``); the
tests are skipped, saying so, only when it cannot be reached.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from router.store import DigestEntry, InboxEvent, NewDelivery, RoutedEvent, open_store
from router.store.postgres import MIGRATIONS, PostgresStore, parse_url
from router.store.sqlite import SqliteStore
from tests.conftest import PG_DSN, pg_admin_connection, pg_url

# The test server and how a missing one is handled live in conftest (shared with the
# service fixture, which runs every service test on PostgreSQL too).
admin_connection = pg_admin_connection
store_url = pg_url


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema name (the store creates it); dropped after the test."""
    conn = await admin_connection()
    name = f"router_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


@pytest.fixture
async def store(pg_schema: str) -> AsyncIterator[PostgresStore]:
    store = open_store(store_url(pg_schema))
    assert isinstance(store, PostgresStore)
    await store.open()
    yield store
    await store.close()


async def fetch(schema: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def accept(store: PostgresStore, *ids: str, now: float, window: float = 60) -> list[bool]:
    """Accept events with these ids; return which were duplicates."""
    answers = await store.accept_events(
        [(i, "e", b'{"id": "%s"}' % i.encode()) for i in ids], dedupe_window=window, now=now
    )
    return [answer.duplicate for answer in answers]


# -- URLs -----------------------------------------------------------------------------


def test_open_store_picks_postgres_for_its_urls(tmp_path: object) -> None:
    assert isinstance(open_store("postgresql://u@h/db?schema=s"), PostgresStore)
    assert isinstance(open_store("postgres://u@h/db"), PostgresStore)
    assert isinstance(open_store(f"{tmp_path}/router.db"), SqliteStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/router.db"), SqliteStore)


def test_store_parameters_are_taken_out_of_the_url() -> None:
    dsn, own = parse_url(
        "postgresql://u:p@h:5433/db?schema=Router_1&sslmode=disable&replica=a&pool_max=3"
    )
    assert dsn == "postgresql://u:p@h:5433/db?sslmode=disable"
    assert own == {"schema": "Router_1", "replica": "a", "pool_max": "3"}
    store = PostgresStore("postgresql://h/db?replica=web-1&pool_min=2&pool_max=1")
    assert (store.replica, store.pool_min, store.pool_max, store.schema) == ("web-1", 2, 2, None)
    for bad in ("x;drop", "1abc", "a" * 64, ""):
        with pytest.raises(ValueError, match="schema="):
            parse_url(f"postgresql://h/db?schema={bad}")
    with pytest.raises(ValueError, match="pool_max"):
        parse_url("postgresql://h/db?pool_max=many")


# -- schema ---------------------------------------------------------------------------


async def test_schema_version_and_tables_live_in_the_named_schema(
    store: PostgresStore, pg_schema: str
) -> None:
    [row] = await fetch(pg_schema, "SELECT max(version) AS v, count(*) AS n FROM schema_version")
    assert (row["v"], row["n"]) == (len(MIGRATIONS), len(MIGRATIONS))
    tables = {
        r["table_name"]
        for r in await fetch(
            pg_schema,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            pg_schema,
        )
    }
    assert tables >= {
        "events",
        "event_payloads",
        "seen_events",
        "deliveries",
        "snapshots",
        "throttles",
        "digests",
        "digest_events",
        "schema_version",
    }
    assert store.channel == f"router:{pg_schema}"


async def test_sessions_name_their_replica_unless_the_url_does(pg_schema: str) -> None:
    async def session_names(url: str) -> set[str]:
        store = open_store(url)
        await store.open()
        try:
            rows = await fetch(
                pg_schema,
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()",
            )
            return {row["application_name"] for row in rows}
        finally:
            await store.close()

    assert "router r7" in await session_names(store_url(pg_schema, replica="r7"))
    named = await session_names(store_url(pg_schema, replica="r7", application_name="ops"))
    assert "ops" in named and "router r7" not in named


async def test_reopening_is_idempotent_and_newer_schema_is_refused(pg_schema: str) -> None:
    for _ in range(2):
        store = open_store(store_url(pg_schema))
        await store.open()
        await store.close()
    rows = await fetch(pg_schema, "SELECT version FROM schema_version ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    await fetch(pg_schema, "INSERT INTO schema_version VALUES ($1)", len(MIGRATIONS) + 1)
    with pytest.raises(RuntimeError, match="newer than this router knows"):
        await open_store(store_url(pg_schema)).open()


async def test_replicas_starting_together_migrate_once(pg_schema: str) -> None:
    stores = [PostgresStore(store_url(pg_schema)) for _ in range(5)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    rows = await fetch(pg_schema, "SELECT version FROM schema_version ORDER BY version")
    assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))


async def test_a_closed_store_refuses_work(pg_schema: str) -> None:
    store = PostgresStore(store_url(pg_schema))
    with pytest.raises(RuntimeError, match="not open"):
        await store.counts()


# -- events ---------------------------------------------------------------------------


async def test_concurrent_accepts_are_all_stored(store: PostgresStore) -> None:
    now = time.time()
    answers = await asyncio.gather(*(accept(store, f"id{i}", now=now) for i in range(200)))
    assert answers == [[False]] * 200
    assert (await store.counts()).events_pending == 200


async def test_duplicates_within_window_and_in_one_batch(store: PostgresStore) -> None:
    now = time.time()
    assert await accept(store, "x", "y", "x", "x", now=now) == [False, False, True, True]
    assert await accept(store, "x", now=now + 30) == [True]
    # The window runs from the last acceptance as new, not from the last duplicate.
    assert await accept(store, "x", now=now + 61) == [False]
    assert await accept(store, "x", now=now + 62) == [True]
    assert await store.accept_events([], dedupe_window=60, now=now) == []
    assert (await store.counts()).events_pending == 3


async def test_duplicates_are_not_routed(store: PostgresStore) -> None:
    now = time.time()
    await accept(store, "a", "a", "b", now=now)
    claimed = await store.claim_events(10, lease=30, now=now)
    assert [e.id for e in claimed] == ["a", "b"]  # oldest first, the duplicate not at all
    assert claimed[0].seq < claimed[1].seq


async def test_payload_bytes_and_times_round_trip(store: PostgresStore) -> None:
    now = 1_700_000_000.123456
    payload = bytes(range(256))
    await store.accept_events([("bin", "course_completed", payload)], dedupe_window=60, now=now)
    [event] = await store.claim_events(1, lease=30, now=now)
    assert event == InboxEvent(event.seq, "bin", "course_completed", payload, now)


async def test_routing_and_claims_with_leases(store: PostgresStore) -> None:
    now = time.time()
    await store.accept_events([("ev", "e", b'{"metadata": {}}')], dedupe_window=60, now=now)
    [event] = await store.claim_events(10, lease=30, now=now)
    assert await store.claim_events(10, lease=30, now=now) == []  # leased
    jobs = [
        NewDelivery("ev:r:a", "r", "a", b"{}"),
        NewDelivery("ev:r:b", "r", "b", b"{}", error="template broke"),
    ]
    await store.record_routing([RoutedEvent(event, jobs)], now=now)
    await store.record_routing([RoutedEvent(event, jobs)], now=now)  # a repeat adds nothing
    counts = await store.counts()
    assert (counts.events_pending, counts.deliveries_pending, counts.dead) == (0, 1, 1)
    [job] = await store.claim_deliveries("a", 5, lease=30, now=now)
    assert (job.key, job.event, job.attempts) == ("ev:r:a", b'{"metadata": {}}', 0)
    assert (job.event_id, job.event_name, job.rule, job.channel) == ("ev", "e", "r", "a")
    assert await store.claim_deliveries("a", 5, lease=30, now=now) == []
    assert await store.next_due(["a"]) == pytest.approx(now + 30)  # when the lease ends
    await store.finish_delivery(job.id, "pending", attempts=1, now=now, next_attempt_at=now + 5)
    assert await store.next_due(["a", "b"]) == pytest.approx(now + 5)
    assert await store.next_due(["b"]) is None
    assert await store.next_due([]) is None
    assert await store.claim_deliveries("a", 5, lease=30, now=now + 1) == []
    [again] = await store.claim_deliveries("a", 5, lease=30, now=now + 5)
    assert again.attempts == 1
    await store.finish_delivery(again.id, "delivered", attempts=2, now=now + 6)
    assert (await store.counts()).deliveries_pending == 0
    assert await store.claim_deliveries("a", 5, lease=30, now=now + 100) == []


async def test_expired_leases_are_taken_over_and_a_named_replica_releases_its_own(
    pg_schema: str,
) -> None:
    now = time.time()
    first = PostgresStore(store_url(pg_schema, replica="web-1"))
    await first.open()
    await accept(first, "ev", now=now)
    assert len(await first.claim_events(10, lease=3600, now=now)) == 1
    await first.close()  # as if the process died holding the lease
    other = PostgresStore(store_url(pg_schema))  # a replica with another (random) name
    await other.open()
    assert await other.claim_events(10, lease=3600, now=now) == []  # web-1's lease holds
    again = PostgresStore(store_url(pg_schema, replica="web-1"))
    await again.open()  # web-1 restarted: its old leases are released at once
    assert len(await again.claim_events(10, lease=5, now=now)) == 1
    assert await other.claim_events(10, lease=5, now=now + 4) == []
    assert len(await other.claim_events(10, lease=5, now=now + 5)) == 1  # lease ran out
    await again.close()
    await other.close()


# -- routing: throttles, digests, snapshots ---------------------------------------------


def routed(event: InboxEvent, *deliveries: NewDelivery, **kwargs: object) -> RoutedEvent:
    return RoutedEvent(event, list(deliveries), **kwargs)  # type: ignore[arg-type]


async def test_throttles_suppress_within_the_window_and_count(
    store: PostgresStore, pg_schema: str
) -> None:
    now = time.time()
    await accept(store, "a", "b", "c", "d", now=now)
    a, b, c, d = await store.claim_events(10, lease=30, now=now)

    def job(event: InboxEvent, channel: str = "x") -> NewDelivery:
        key = f"{event.id}:r:{channel}"
        return NewDelivery(key, "r", channel, b"{}", throttle=("r:k", now + 10))

    # One event may notify several channels under one key: all of them go out.
    suppressed = await store.record_routing(
        [routed(a, job(a, "x"), job(a, "y")), routed(b, job(b))], now=now
    )
    assert suppressed == ["r"]
    assert [j.key for j in await store.claim_deliveries("x", 9, lease=30, now=now)] == ["a:r:x"]
    assert (await store.counts()).deliveries_pending == 2
    assert await store.record_routing([routed(c, job(c))], now=now + 9) == ["r"]
    assert await store.record_routing([routed(d, job(d))], now=now + 10) == []  # window over
    [row] = await fetch(pg_schema, "SELECT until, suppressed FROM throttles WHERE key = 'r:k'")
    assert (row["until"], row["suppressed"]) == (pytest.approx(now + 10), 2)
    keys = {r.key for r in await store.list_deliveries()}
    assert keys == {"a:r:x", "a:r:y", "d:r:x"}


async def test_digest_groups_collect_events_until_due(store: PostgresStore) -> None:
    now = time.time()
    await accept(store, "a", "b", "c", now=now)
    a, b, c = await store.claim_events(10, lease=30, now=now)
    entry = DigestEntry("daily", '{"course": 1}', now + 60, 10)
    await store.record_routing([routed(a, digests=[entry])], now=now)
    await store.record_routing(
        [routed(b, digests=[DigestEntry("daily", '{"course": 1}', now + 70, 10)])], now=now
    )
    other = DigestEntry("daily", '{"course": 2}', now + 60, 10)
    await store.record_routing([routed(c, digests=[other])], now=now)
    assert await store.claim_due_digests(10, lease=30, now=now + 59) == []
    due = await store.claim_due_digests(10, lease=30, now=now + 60)
    assert [(d.rule, d.group, [e.id for e in d.events]) for d in due] == [
        ("daily", '{"course": 1}', ["a", "b"]),  # due when its first event said
        ("daily", '{"course": 2}', ["c"]),
    ]
    assert due[0].events[0].payload == b'{"id": "a"}'
    assert await store.claim_due_digests(10, lease=30, now=now + 60) == []  # leased
    message = NewDelivery("digest-1:daily:x", "daily", "x", b"{}")
    await store.record_digest(due[0].id, [message], now=now + 60)
    await store.record_digest(due[0].id, [message], now=now + 60)  # a repeat adds nothing
    [job] = await store.claim_deliveries("x", 10, lease=30, now=now + 60)
    assert (job.key, job.event_id) == ("digest-1:daily:x", "a")  # tied to the first event
    # The other group's lease runs out: it is claimed again, then sent with no jobs.
    [retry] = await store.claim_due_digests(10, lease=30, now=now + 90)
    assert retry.id == due[1].id and [e.id for e in retry.events] == ["c"]
    await store.record_digest(retry.id, [], now=now + 90)
    assert await store.claim_due_digests(10, lease=30, now=now + 1000) == []


async def test_a_full_digest_group_is_due_at_once(store: PostgresStore) -> None:
    now = time.time()
    await accept(store, "a", "b", "c", "d", now=now)
    a, b, c, d = await store.claim_events(10, lease=30, now=now)
    entry = DigestEntry("burst", "{}", now + 600, 2)
    await store.record_routing([routed(a, digests=[entry])], now=now)
    assert await store.claim_due_digests(10, lease=30, now=now + 1) == []
    await store.record_routing([routed(b, digests=[entry])], now=now + 1)
    [due] = await store.claim_due_digests(10, lease=30, now=now + 1)
    assert [e.id for e in due.events] == ["a", "b"]
    # Two events filling a new group in one batch make it due at once too.
    await store.record_routing([routed(c, digests=[entry]), routed(d, digests=[entry])], now=now)
    [full] = await store.claim_due_digests(10, lease=30, now=now + 1)
    assert full.id != due.id and [e.id for e in full.events] == ["c", "d"]


async def test_an_event_routed_while_its_digest_is_flushing_opens_a_new_group(
    store: PostgresStore,
) -> None:
    now = time.time()
    await accept(store, "a", "b", now=now)
    a, b = await store.claim_events(10, lease=30, now=now)
    entry = DigestEntry("daily", "{}", now + 5, 10)
    await store.record_routing([routed(a, digests=[entry])], now=now)
    [due] = await store.claim_due_digests(10, lease=30, now=now + 5)
    await store.record_routing([routed(b, digests=[entry])], now=now + 5)  # meanwhile
    await store.record_digest(due.id, [NewDelivery("d1", "daily", "x", b"{}")], now=now + 5)
    assert [e.id for e in due.events] == ["a"]
    [later] = await store.claim_due_digests(10, lease=30, now=now + 10)
    assert later.id != due.id and [e.id for e in later.events] == ["b"]


async def test_snapshots_are_stored_last_one_wins(store: PostgresStore) -> None:
    now = time.time()
    await accept(store, "a", "b", "c", now=now)
    a, b, c = await store.claim_events(10, lease=30, now=now)
    await store.record_routing(
        [
            routed(a, snapshot=("user:1", b"first")),
            routed(b, snapshot=("user:1", b"second")),
            routed(c, snapshot=("user:2", b"other")),
        ],
        now=now,
    )
    assert await store.load_snapshots(["user:1", "user:2", "user:3", "user:1"]) == {
        "user:1": b"second",
        "user:2": b"other",
    }
    assert await store.load_snapshots([]) == {}


# -- operators: listings, replay, counts ----------------------------------------------


async def test_dead_letters_listing_and_replay(store: PostgresStore) -> None:
    now = time.time()
    await accept(store, "a", "b", "c", now=now)
    events = await store.claim_events(10, lease=30, now=now)
    await store.record_routing(
        [routed(e, NewDelivery(f"{e.id}:r:x", "r", "x", b"{}", error="broke")) for e in events],
        now=now,
    )
    dead = await store.list_deliveries(state="dead")
    assert [(d.key, d.event_id, d.state, d.last_error) for d in dead] == [
        ("c:r:x", "c", "dead", "broke"),
        ("b:r:x", "b", "dead", "broke"),
        ("a:r:x", "a", "dead", "broke"),
    ]
    assert len(await store.list_deliveries(limit=2)) == 2
    assert await store.list_deliveries(state="pending") == []
    assert (await store.counts()).dead == 3
    assert await store.replay([dead[0].id, 999_999], now=now + 1) == 1
    assert await store.replay([dead[0].id], now=now + 1) == 0  # not dead any more
    [job] = await store.claim_deliveries("x", 10, lease=30, now=now + 1)
    assert (job.key, job.attempts) == ("c:r:x", 0)  # same idempotency key, attempts reset
    assert await store.replay(None, now=now + 2) == 2
    counts = await store.counts()
    assert (counts.events_pending, counts.deliveries_pending, counts.dead) == (0, 3, 0)
    assert await store.replay([], now=now + 2) == 0


async def test_a_late_result_does_not_undo_a_final_one(store: PostgresStore) -> None:
    now = time.time()
    await accept(store, "a", now=now)
    [event] = await store.claim_events(1, lease=30, now=now)
    await store.record_routing([routed(event, NewDelivery("a:r:x", "r", "x", b"{}"))], now=now)
    [job] = await store.claim_deliveries("x", 1, lease=30, now=now)
    [taken] = await store.claim_deliveries("x", 1, lease=30, now=now + 31)  # lease ran out
    await store.finish_delivery(taken.id, "delivered", attempts=1, now=now + 32)
    # The first claimer finally fails and asks for a retry: too late, it stays delivered.
    await store.finish_delivery(job.id, "pending", attempts=1, now=now + 33, next_attempt_at=0)
    [record] = await store.list_deliveries()
    assert (record.state, record.updated_at) == ("delivered", pytest.approx(now + 32))


# -- wake-ups -------------------------------------------------------------------------


async def test_subscribers_hear_other_replicas_work_not_their_own(
    store: PostgresStore, pg_schema: str
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    unsubscribe = await store.subscribe(heard.put_nowait)
    other = PostgresStore(store_url(pg_schema))
    await other.open()
    try:
        now = time.time()
        await accept(other, "a", now=now)
        assert await asyncio.wait_for(heard.get(), 5) == "events"
        await accept(other, "a", now=now)  # only a duplicate: nothing to route
        [event] = await other.claim_events(1, lease=30, now=now)
        await other.record_routing([routed(event)], now=now)  # no deliveries: silent
        await asyncio.sleep(0.3)
        assert heard.empty()
        await accept(other, "b", now=now)
        assert await asyncio.wait_for(heard.get(), 5) == "events"
        [event] = await other.claim_events(1, lease=30, now=now)
        await other.record_routing([routed(event, NewDelivery("b:r:x", "r", "x", b"{}"))], now=now)
        assert await asyncio.wait_for(heard.get(), 5) == "deliveries"
        # A lost LISTEN connection comes back, and then everyone rescans once.
        assert store._listener is not None
        store._listener.terminate()
        assert await asyncio.wait_for(heard.get(), 5) == "events"
        assert await asyncio.wait_for(heard.get(), 5) == "deliveries"
        await accept(store, "own", now=now)  # its own work: its workers know already
        await asyncio.sleep(0.3)
        assert heard.empty()
        await unsubscribe()
        await accept(other, "c", now=now)
        await asyncio.sleep(0.3)
        assert heard.empty()
    finally:
        await other.close()


# -- operators: filters, details, purge, status, retention ----------------------------


async def test_listing_filters_details_and_purge(store: PostgresStore) -> None:
    now = time.time()
    await accept(store, "a", "b", "c", now=now)
    a, b, c = await store.claim_events(10, lease=30, now=now)
    await store.record_routing(
        [
            routed(a, NewDelivery("a:r1:x", "r1", "x", b'{"m": 1}', error="broke")),
            routed(b, NewDelivery("b:r2:x", "r2", "x", b"{}", error="broke")),
            routed(
                c,
                NewDelivery("c:r1:y", "r1", "y", b"{}", error="broke"),
                NewDelivery("c:r1:x", "r1", "x", b"{}"),
            ),
        ],
        now=now,
    )
    dead_x = await store.list_deliveries(state="dead", channel="x")
    assert [d.key for d in dead_x] == ["b:r2:x", "a:r1:x"]
    assert {d.event_name for d in dead_x} == {"e"}
    assert [d.key for d in await store.list_deliveries(rule="r1")] == [
        "c:r1:x",
        "c:r1:y",
        "a:r1:x",
    ]
    [job] = await store.claim_deliveries("x", 10, lease=30, now=now)
    assert job.received_at == pytest.approx(now)
    await store.finish_delivery(job.id, "delivered", attempts=1, now=now + 10)
    assert [d.key for d in await store.list_deliveries(since=now + 5)] == ["c:r1:x"]
    assert await store.list_deliveries(since=now + 5, state="dead") == []

    detail = await store.get_delivery(dead_x[1].id)
    assert detail is not None
    assert (detail.record.key, detail.message, detail.event) == (
        "a:r1:x",
        b'{"m": 1}',
        b'{"id": "a"}',
    )
    assert await store.get_delivery(999_999) is None

    assert await store.replay(None, now=now + 20, channel="y") == 1
    assert await store.replay(None, now=now + 20, rule="r2", since=now + 30) == 0
    assert await store.purge(None, rule="r2") == 1
    assert await store.purge([dead_x[1].id, job.id], channel="x") == 1  # a delivered one stays
    assert await store.purge(None) == 0
    counts = await store.counts()
    assert (counts.deliveries_pending, counts.dead) == (1, 0)
    assert {d.key for d in await store.list_deliveries()} == {"c:r1:x", "c:r1:y"}


async def test_oldest_pending_size_and_recent_events(store: PostgresStore) -> None:
    now = time.time()
    assert await store.oldest_pending() is None
    empty = await store.size_bytes()
    assert empty > 0
    await store.accept_events(
        [(f"big{n}", "e", b"x" * 2000) for n in range(200)], dedupe_window=60, now=now
    )
    assert await store.size_bytes() > empty
    await accept(store, "a", now=now + 1)
    await accept(store, "b", "a", now=now + 2)
    events = await store.claim_events(1000, lease=30, now=now + 2)
    await store.record_routing(
        [routed(e, NewDelivery(f"{e.id}:r:x", "r", "x", b"{}")) for e in events[-2:]],
        now=now + 3,
    )
    assert await store.oldest_pending() == pytest.approx(now + 3)
    recent = await store.recent_events(3)
    assert [(e.id, e.state) for e in recent] == [
        ("a", "duplicate"),
        ("b", "routed"),
        ("a", "routed"),
    ]
    assert [d.key for d in recent[1].deliveries] == ["b:r:x"]
    assert recent[0].deliveries == [] and recent[1].received_at == pytest.approx(now + 2)


async def test_prune_removes_only_what_is_finished_and_old(
    store: PostgresStore, pg_schema: str
) -> None:
    old, now = time.time() - 1000, time.time()
    ids = ["done", "dead", "digested", "open-digest", "quiet", "waiting"]
    assert await accept(store, *ids, "quiet", now=old) == [False] * 6 + [True]
    events = {e.id: e for e in await store.claim_events(10, lease=30, now=old)}
    assert sorted(events) == sorted(ids)
    await store.record_routing(
        [
            routed(events["done"], NewDelivery("done:r:x", "r", "x", b"{}")),
            routed(events["dead"], NewDelivery("dead:r:x", "r", "x", b"{}", error="broke")),
            routed(events["digested"], digests=[DigestEntry("d", "1", old, 10)]),
            routed(events["open-digest"], digests=[DigestEntry("d", "2", now + 60, 10)]),
            routed(
                events["quiet"],
                NewDelivery("quiet:t:x", "t", "x", b"{}", error="x", throttle=("t:", old + 1)),
            ),
        ],
        now=old,
    )
    [digest] = await store.claim_due_digests(10, lease=30, now=old)
    await store.record_digest(digest.id, [], now=old)  # sent, with no deliveries
    [job] = await store.claim_deliveries("x", 10, lease=30, now=old)
    await store.finish_delivery(job.id, "delivered", attempts=1, now=old + 1)
    assert await store.purge(None, rule="t") == 1  # "quiet" has no delivery left

    first = await store.prune(before=now - 100, limit=1)
    assert (first.deliveries, first.events, first.digests, first.throttles) == (1, 1, 1, 1)
    rest = await store.prune(before=now - 100)
    assert rest.total > 0
    assert (await store.prune(before=now - 100)).total == 0
    left = await fetch(pg_schema, "SELECT id, state FROM events ORDER BY seq")
    # Kept: the dead delivery's event, the event in an open digest, the unrouted one.
    assert [(r["id"], r["state"]) for r in left] == [
        ("dead", "routed"),
        ("open-digest", "routed"),
        ("waiting", "pending"),
    ]
    [payloads] = await fetch(pg_schema, "SELECT count(*) AS n FROM event_payloads")
    assert payloads["n"] == 3
    assert [d.key for d in await store.list_deliveries()] == ["dead:r:x"]
    # A pruned event's id no longer dedupes, as with SQLite; a kept one still does.
    assert await accept(store, "done", "dead", now=now, window=86400) == [False, True]
    assert (await store.counts()).events_pending == 2
