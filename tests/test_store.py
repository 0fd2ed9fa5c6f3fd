"""The SQLite store on a real file: durability, group commit, migrations, leases; and
the claim order every store keeps, on both backends."""

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from router.store import NewDelivery, RoutedEvent, Store, open_store
from router.store.sqlite import MIGRATIONS, SqliteStore, _state_checks_as_comparisons


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = open_store(str(tmp_path / "s.db"))
    await store.open()
    yield store
    await store.close()


async def test_wal_mode_and_schema_version(store: SqliteStore, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_reopening_is_idempotent_and_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    for _ in range(2):
        store = open_store(str(path))
        await store.open()
        await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer than this router knows"):
        await open_store(str(path)).open()


async def test_concurrent_writes_share_commits(store: SqliteStore) -> None:
    now = time.time()
    answers = await asyncio.gather(
        *(
            store.accept_events([(f"id{i}", "e", b"{}")], dedupe_window=60, now=now)
            for i in range(200)
        )
    )
    assert len(answers) == 200
    assert (await store.counts()).events_pending == 200
    # One fsync per request would be 200 commits; group commit needs far fewer.
    assert store.commits < 100, store.commits


async def test_failed_operation_does_not_spoil_its_batch(store: SqliteStore) -> None:
    now = time.time()

    async def bad() -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO events (id) VALUES ('incomplete')")  # NOT NULL fails

        await store._call(op)

    results = await asyncio.gather(
        store.accept_events([("a", "e", b"{}")], dedupe_window=60, now=now),
        bad(),
        store.accept_events([("b", "e", b"{}")], dedupe_window=60, now=now),
        return_exceptions=True,
    )
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert (await store.counts()).events_pending == 2


async def test_duplicates_within_window_and_in_one_batch(store: SqliteStore) -> None:
    now = time.time()
    first = await store.accept_events(
        [("x", "e", b"{}"), ("x", "e", b"{}")], dedupe_window=60, now=now
    )
    assert [a.duplicate for a in first] == [False, True]
    later = await store.accept_events([("x", "e", b"{}")], dedupe_window=60, now=now + 61)
    assert later[0].duplicate is False


async def test_duplicate_check_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    now = time.time()
    first = open_store(path)
    await first.open()
    await first.accept_events([("old", "e", b"{}")], dedupe_window=60, now=now - 100)
    await first.accept_events([("x", "e", b"{}"), ("x", "e", b"{}")], dedupe_window=60, now=now)
    await first.close()
    second = open_store(path)
    await second.open()
    answers = await second.accept_events(
        [("x", "e", b"{}"), ("old", "e", b"{}"), ("new", "e", b"{}")],
        dedupe_window=60,
        now=now + 30,
    )
    assert [a.duplicate for a in answers] == [True, False, False]
    # The window counts from the first copy, not from the duplicate.
    again = await second.accept_events([("x", "e", b"{}")], dedupe_window=60, now=now + 61)
    assert again[0].duplicate is False
    await second.close()


async def test_an_event_whose_write_failed_is_not_a_duplicate_later(store: SqliteStore) -> None:
    now = time.time()
    with pytest.raises(sqlite3.IntegrityError):  # the second item breaks the batch
        await store.accept_events(
            [("a", "e", b"{}"), ("b", None, b"{}")],  # type: ignore[list-item]
            dedupe_window=60,
            now=now,
        )
    [retry] = await store.accept_events([("a", "e", b"{}")], dedupe_window=60, now=now + 1)
    assert retry.duplicate is False
    assert (await store.counts()).events_pending == 1


async def test_routing_and_claims_with_leases(store: SqliteStore, tmp_path: Path) -> None:
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
    assert await store.claim_deliveries("a", 5, lease=30, now=now) == []
    await store.finish_delivery(job.id, "pending", attempts=1, now=now, next_attempt_at=now + 5)
    assert await store.next_due(["a", "b"]) == pytest.approx(now + 5)
    assert await store.next_due(["b"]) is None
    assert await store.claim_deliveries("a", 5, lease=30, now=now + 1) == []
    [again] = await store.claim_deliveries("a", 5, lease=30, now=now + 5)
    assert again.attempts == 1


async def test_leases_of_a_crashed_process_are_released_on_open(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    first = open_store(path)
    await first.open()
    now = time.time()
    await first.accept_events([("ev", "e", b"{}")], dedupe_window=60, now=now)
    assert len(await first.claim_events(10, lease=3600, now=now)) == 1
    await first.close()  # as if the process died holding the lease
    second = open_store(path)
    await second.open()
    assert len(await second.claim_events(10, lease=3600, now=now)) == 1
    await second.close()


HOT_STATEMENTS = [
    ("INSERT INTO events (id, name, received_at, state) VALUES (?,?,?,?)", 4),
    ("UPDATE events SET state = ? WHERE seq = ?", 2),
    (
        "INSERT INTO deliveries (key, event_seq, rule, channel, message, state, created_at,"
        " updated_at, next_attempt_at) VALUES (?,?,?,?,?,?,?,?,?)",
        9,
    ),
    (
        "UPDATE deliveries SET state = ?, attempts = ?, updated_at = ?, next_attempt_at = ?,"
        " last_error = ? WHERE id = ?",
        6,
    ),
]


def assert_state_checks_are_cheap_and_hold(conn: sqlite3.Connection) -> None:
    # SQLite turns a CHECK of `state IN (3+ values)` into a temporary b-tree built on
    # every insert and update (OpenEphemeral): about 30 k instructions per event insert.
    for sql, params in HOT_STATEMENTS:
        ops = [row[1] for row in conn.execute(f"EXPLAIN {sql}", (1,) * params)]
        assert "OpenEphemeral" not in ops, sql
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        conn.execute("INSERT INTO events (id, name, received_at, state) VALUES ('x','e',1,'nope')")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        conn.execute("UPDATE deliveries SET state = 'nope'")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_state_checks_cost_no_temporary_btree(store: SqliteStore, tmp_path: Path) -> None:
    await store.accept_events([("a", "e", b"{}")], dedupe_window=60, now=time.time())
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute(
            "INSERT INTO deliveries (key, event_seq, rule, channel, message, state,"
            " created_at, updated_at, next_attempt_at) VALUES ('k', 1, 'r', 'c', x'', 'dead',"
            " 1, 1, 1)"
        )
        assert_state_checks_are_cheap_and_hold(conn)


async def test_a_store_from_before_the_state_check_rewrite_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path, isolation_level=None) as conn:  # schema version 4
        for script in MIGRATIONS[:4]:
            assert isinstance(script, str)
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
        conn.execute("PRAGMA user_version=4")
        conn.execute(
            "INSERT INTO events (id, name, received_at, state) VALUES ('old', 'e', 1, 'routed')"
        )
        conn.execute("INSERT INTO event_payloads (seq, payload) VALUES (1, '{}')")
        conn.execute(
            "INSERT INTO deliveries (key, event_seq, rule, channel, message, state,"
            " created_at, updated_at, next_attempt_at, last_error) VALUES"
            " ('k', 1, 'r', 'c', x'7b7d', 'dead', 1, 1, 1, 'HTTP 500')"
        )
    store = open_store(str(path))
    await store.open()
    try:
        [dead] = await store.list_deliveries(state="dead")
        assert (dead.event_id, dead.last_error) == ("old", "HTTP 500")
        [new] = await store.accept_events([("new", "e", b"{}")], dedupe_window=60, now=2.0)
        assert not new.duplicate
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("SELECT id, state FROM events ORDER BY seq").fetchall() == [
            ("old", "routed"),
            ("new", "pending"),
        ]
        assert_state_checks_are_cheap_and_hold(conn)


def test_a_build_that_forbids_editing_the_schema_keeps_the_old_checks(tmp_path: Path) -> None:
    # Stands in for SQLITE_DBCONFIG_DEFENSIVE: an authorizer refusing writes to the schema.
    with sqlite3.connect(tmp_path / "d.db", isolation_level=None) as conn:
        for script in MIGRATIONS[:4]:
            assert isinstance(script, str)
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
        before = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()

        def authorizer(action: int, table: str | None, *_: object) -> int:
            refused = action == sqlite3.SQLITE_UPDATE and table == "sqlite_master"
            return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

        conn.set_authorizer(authorizer)
        conn.execute("BEGIN IMMEDIATE")
        _state_checks_as_comparisons(conn)  # logs, does not raise
        conn.execute(
            "INSERT INTO events (id, name, received_at, state) VALUES ('a','e',1,'pending')"
        )
        conn.execute("COMMIT")
        conn.set_authorizer(None)
        assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == before
        assert conn.execute("PRAGMA writable_schema").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1


@pytest.fixture
async def any_store(db_url: str) -> AsyncIterator[Store]:
    """An open store on each backend in turn, for the contract every store keeps."""
    store = open_store(db_url)
    await store.open()
    yield store
    await store.close()


async def test_claims_are_oldest_first_and_limited(any_store: Store) -> None:
    store = any_store
    now = time.time()
    await store.accept_events([(f"e{i}", "e", b"{}") for i in range(10)], dedupe_window=60, now=now)
    first = await store.claim_events(4, lease=30, now=now)
    second = await store.claim_events(4, lease=30, now=now)
    assert [e.id for e in first] == ["e0", "e1", "e2", "e3"]
    assert [e.id for e in second] == ["e4", "e5", "e6", "e7"]
    events = first + second
    await store.record_routing(
        [RoutedEvent(e, [NewDelivery(f"{e.id}:r:c", "r", "c", b"{}")]) for e in events],
        now=now,
    )
    jobs = await store.claim_deliveries("c", 8, lease=30, now=now)
    assert [j.event_id for j in jobs] == [e.id for e in events]
    for i, job in enumerate(jobs):  # retries fall due in the opposite order
        await store.finish_delivery(
            job.id, "pending", attempts=1, now=now, next_attempt_at=now + 10 - i
        )
    jobs = await store.claim_deliveries("c", 3, lease=30, now=now + 10)
    assert [j.event_id for j in jobs] == ["e7", "e6", "e5"]  # earliest due first


async def test_held_deliveries_keep_their_attempts_and_a_release_makes_retries_due(
    any_store: Store,
) -> None:
    # The circuit breaker's two operations.
    store = any_store
    now = time.time()
    await store.accept_events([(f"e{i}", "e", b"{}") for i in range(4)], dedupe_window=60, now=now)
    events = await store.claim_events(4, lease=30, now=now)
    await store.record_routing(
        [
            RoutedEvent(e, [NewDelivery(f"{e.id}:r:{ch}", "r", ch, b"{}")])
            for e, ch in zip(events, ["c", "c", "c", "other"], strict=True)
        ],
        now=now,
    )
    failed, held, leased = await store.claim_deliveries("c", 3, lease=30, now=now)
    await store.finish_delivery(
        failed.id, "pending", attempts=1, now=now, next_attempt_at=now + 600, error="HTTP 503"
    )
    await store.hold_delivery(held.id, until=now + 5, now=now)
    [other] = await store.claim_deliveries("other", 1, lease=30, now=now)
    await store.finish_delivery(
        other.id, "pending", attempts=1, now=now, next_attempt_at=now + 600, error="x"
    )
    assert await store.claim_deliveries("c", 3, lease=30, now=now + 1) == []
    [again] = await store.claim_deliveries("c", 3, lease=30, now=now + 5)  # held: due
    assert (again.id, again.attempts) == (held.id, 0)  # attempts untouched
    await store.hold_delivery(again.id, until=now + 5, now=now + 5)

    # Only the channel's own waiting retries are released, and the one in flight
    # (leased, still due) is not touched.
    assert await store.release_retries("c", now=now + 6) == 1
    due = await store.claim_deliveries("c", 3, lease=30, now=now + 6)
    assert sorted(j.id for j in due) == sorted([failed.id, held.id])
    assert [j.attempts for j in due if j.id == failed.id] == [1]
    assert await store.claim_deliveries("other", 1, lease=30, now=now + 6) == []
    assert leased.id not in {j.id for j in due}
    await store.hold_delivery(failed.id, until=now + 9, now=now + 6)
    detail = await store.get_delivery(failed.id)
    assert detail is not None
    record = detail.record
    assert (record.attempts, record.last_error, record.state) == (1, "HTTP 503", "pending")
