"""The PostgreSQL store on a real server: what only a shared database has (URLs and
schemas, migrations under a lock, leases in rows between replicas, NOTIFY). The store
contract both backends keep is tested on both in test_store.py.

Every test gets a schema of its own (``?schema=`` in the store URL), dropped after it,
so tests never see each other's rows and can run again and again. The server is
``ROUTER_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``); the
tests are skipped, saying so, only when it cannot be reached.
"""

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from router.store import DigestEntry, InboxEvent, NewDelivery, RoutedEvent, open_store
from router.store.postgres import MIGRATIONS, PostgresStore, parse_url
from router.store.sqlite import SqliteStore
from tests.conftest import PG_DSN, fresh_pg_schema, pg_url

# The test server and how a missing one is handled live in conftest (shared with the
# service fixture, which runs every service test on PostgreSQL too).
store_url = pg_url


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema name (the store creates it); dropped after the test."""
    async with fresh_pg_schema() as name:
        yield name


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


# -- leases in rows -------------------------------------------------------------------


async def test_next_due_is_the_end_of_a_lease_another_replica_holds(store: PostgresStore) -> None:
    now = time.time()
    await accept(store, "ev", now=now)
    [event] = await store.claim_events(1, lease=30, now=now)
    await store.record_routing([routed(event, NewDelivery("ev:r:a", "r", "a", b"{}"))], now=now)
    [job] = await store.claim_deliveries("a", 5, lease=30, now=now)
    assert await store.next_due(["a"]) == pytest.approx(now + 30, rel=0, abs=1e-6)
    await store.finish_delivery(job.id, "pending", attempts=1, now=now, next_attempt_at=now + 5)
    assert await store.next_due(["a"]) == pytest.approx(now + 5, rel=0, abs=1e-6)


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


def routed(event: InboxEvent, *deliveries: NewDelivery, **kwargs: object) -> RoutedEvent:
    return RoutedEvent(event, list(deliveries), **kwargs)  # type: ignore[arg-type]


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


async def test_replicas_joining_one_digest_group_at_once_lose_no_event(pg_schema: str) -> None:
    now = time.time()
    stores = [PostgresStore(store_url(pg_schema)) for _ in range(2)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        await accept(stores[0], *(f"e{i}" for i in range(40)), now=now)
        entry = DigestEntry("daily", "{}", now + 60, 1000)

        async def route(store: PostgresStore) -> None:
            while events := await store.claim_events(3, lease=30, now=now):
                await store.record_routing([routed(e, digests=[entry]) for e in events], now=now)

        await asyncio.gather(*(route(store) for store in stores))
        [group] = await stores[0].claim_due_digests(10, lease=30, now=now + 60)
        assert sorted(e.id for e in group.events) == sorted(f"e{i}" for i in range(40))
        [size] = await fetch(pg_schema, "SELECT size FROM digests WHERE id = $1", group.id)
        assert size["size"] == 40
    finally:
        await asyncio.gather(*(store.close() for store in stores))
