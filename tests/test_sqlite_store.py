"""The SQLite store on a real file: WAL, group commit, migrations, in-memory leases.
The contract every store keeps is tested on both backends in test_store.py."""

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest

from router.store import DigestEntry, RoutedEvent, open_store
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


async def test_a_store_from_before_the_state_check_rewrite_is_migrated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
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
    with caplog.at_level(logging.INFO, logger="router.store"):
        await store.open()
    assert [(r.getMessage(), r.from_schema_version, r.schema_version) for r in caplog.records] == [
        ("store migrated", 4, len(MIGRATIONS))
    ]
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
        for state in ("silenced", "muted", "held"):  # the states of silences, quiet hours
            conn.execute("UPDATE deliveries SET state = ?", (state,))


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


async def test_a_sealed_digest_group_is_claimed_again_after_a_crash(tmp_path: Path) -> None:
    path, now = str(tmp_path / "s.db"), time.time()
    first = open_store(path)
    await first.open()
    await first.accept_events([("a", "e", b"{}"), ("b", "e", b"{}")], dedupe_window=60, now=now)
    a, b = await first.claim_events(2, lease=30, now=now)
    entry = DigestEntry("daily", "{}", now, 10)
    await first.record_routing([RoutedEvent(a, [], [entry])], now=now)
    [due] = await first.claim_due_digests(10, lease=3600, now=now)  # sealed
    await first.record_routing([RoutedEvent(b, [], [entry])], now=now)  # a new group
    await first.close()  # as if the process died while rendering the digest
    second = open_store(path)
    await second.open()
    try:
        groups = await second.claim_due_digests(10, lease=30, now=now + 1)
        assert [(g.id, [e.id for e in g.events]) for g in groups] == [
            (due.id, ["a"]),
            (due.id + 1, ["b"]),
        ]
    finally:
        await second.close()
