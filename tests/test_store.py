"""The store contract, on both backends: every test here runs once on SQLite (a file)
and once on PostgreSQL (a schema of its own, dropped after the test). What only one
backend has is tested beside it: test_sqlite_store.py (WAL, group commit, migrations,
in-memory leases) and test_postgres_store.py (leases in rows between replicas, NOTIFY)."""

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from router.store import (
    DigestEntry,
    InboxEvent,
    NewDelivery,
    RoutedEvent,
    Silence,
    Store,
    open_store,
)
from tests.conftest import StoreDB


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    """An open store on each backend in turn."""
    store = open_store(db_url)
    await store.open()
    yield store
    await store.close()


async def accept(store: Store, *ids: str, now: float, window: float = 60) -> list[bool]:
    """Accept events with these ids; return which were duplicates."""
    answers = await store.accept_events(
        [(i, "e", b'{"id": "%s"}' % i.encode()) for i in ids], dedupe_window=window, now=now
    )
    return [answer.duplicate for answer in answers]


def at(when: float) -> object:
    """A time as the store gives it back (to the microsecond)."""
    return pytest.approx(when, rel=0, abs=1e-6)


def routed(event: InboxEvent, *deliveries: NewDelivery, **kwargs: object) -> RoutedEvent:
    return RoutedEvent(event, list(deliveries), **kwargs)  # type: ignore[arg-type]


# -- schema ---------------------------------------------------------------------------


async def test_a_new_store_logs_one_line_and_reopening_none(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="router.store")
    for _ in range(2):
        store = open_store(db_url)
        await store.open()
        await store.close()
    said = [r for r in caplog.records if r.name.startswith("router.store")]
    assert [r.getMessage() for r in said] == ["store created"]
    assert said[0].schema_version >= 1  # type: ignore[attr-defined]


# -- events ---------------------------------------------------------------------------


async def test_duplicate_check_survives_a_restart(db_url: str) -> None:
    now = time.time()
    first = open_store(db_url)
    await first.open()
    await first.accept_events([("old", "e", b"{}")], dedupe_window=60, now=now - 100)
    await first.accept_events([("x", "e", b"{}"), ("x", "e", b"{}")], dedupe_window=60, now=now)
    await first.close()
    second = open_store(db_url)
    await second.open()
    try:
        answers = await second.accept_events(
            [("x", "e", b"{}"), ("old", "e", b"{}"), ("new", "e", b"{}")],
            dedupe_window=60,
            now=now + 30,
        )
        assert [a.duplicate for a in answers] == [True, False, False]
        # The window counts from the first copy, not from the duplicate.
        again = await second.accept_events([("x", "e", b"{}")], dedupe_window=60, now=now + 61)
        assert again[0].duplicate is False
    finally:
        await second.close()


async def test_an_event_whose_write_failed_is_not_a_duplicate_later(store: Store) -> None:
    now = time.time()
    with pytest.raises((sqlite3.IntegrityError, asyncpg.NotNullViolationError)):
        await store.accept_events(  # the second item breaks the batch
            [("a", "e", b"{}"), ("b", None, b"{}")],  # type: ignore[list-item]
            dedupe_window=60,
            now=now,
        )
    [retry] = await store.accept_events([("a", "e", b"{}")], dedupe_window=60, now=now + 1)
    assert retry.duplicate is False
    assert (await store.counts()).events_pending == 1


async def test_concurrent_accepts_are_all_stored(store: Store) -> None:
    now = time.time()
    answers = await asyncio.gather(*(accept(store, f"id{i}", now=now) for i in range(200)))
    assert answers == [[False]] * 200
    assert (await store.counts()).events_pending == 200


async def test_duplicates_within_window_and_in_one_batch(store: Store) -> None:
    now = time.time()
    assert await accept(store, "x", "y", "x", "x", now=now) == [False, False, True, True]
    assert await accept(store, "x", now=now + 30) == [True]
    # The window runs from the last acceptance as new, not from the last duplicate.
    assert await accept(store, "x", now=now + 61) == [False]
    assert await accept(store, "x", now=now + 62) == [True]
    assert await store.accept_events([], dedupe_window=60, now=now) == []
    assert (await store.counts()).events_pending == 3


async def test_duplicates_are_not_routed(store: Store) -> None:
    now = time.time()
    await accept(store, "a", "a", "b", now=now)
    claimed = await store.claim_events(10, lease=30, now=now)
    assert [e.id for e in claimed] == ["a", "b"]  # oldest first, the duplicate not at all
    assert claimed[0].seq < claimed[1].seq


async def test_payload_bytes_and_times_round_trip(store: Store) -> None:
    now = 1_700_000_000.123456
    payload = bytes(range(256))
    await store.accept_events([("bin", "course_completed", payload)], dedupe_window=60, now=now)
    [event] = await store.claim_events(1, lease=30, now=now)
    assert event == InboxEvent(event.seq, "bin", "course_completed", payload, now)


async def test_routing_and_claims_with_leases(store: Store) -> None:
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
    await store.finish_delivery(job.id, "pending", attempts=1, now=now, next_attempt_at=now + 5)
    assert await store.next_due(["a", "b"]) == at(now + 5)
    assert await store.next_due(["b"]) is None
    assert await store.next_due([]) is None
    assert await store.claim_deliveries("a", 5, lease=30, now=now + 1) == []
    [again] = await store.claim_deliveries("a", 5, lease=30, now=now + 5)
    assert again.attempts == 1
    await store.finish_delivery(again.id, "delivered", attempts=2, now=now + 6)
    assert (await store.counts()).deliveries_pending == 0
    assert await store.claim_deliveries("a", 5, lease=30, now=now + 100) == []


async def test_throttles_suppress_within_the_window_and_count(
    store: Store, store_db: StoreDB
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
    [row] = store_db.rows("SELECT until, suppressed FROM throttles WHERE key = 'r:k'")
    assert row == (at(now + 10), 2)
    keys = {r.key for r in await store.list_deliveries()}
    assert keys == {"a:r:x", "a:r:y", "d:r:x"}


async def test_digest_groups_collect_events_until_due(store: Store) -> None:
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


async def test_a_full_digest_group_is_due_at_once(store: Store) -> None:
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
    store: Store,
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


async def test_snapshots_are_stored_last_one_wins(store: Store) -> None:
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


async def test_dead_letters_listing_and_replay(store: Store) -> None:
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


async def test_listing_filters_details_and_purge(store: Store) -> None:
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
    assert job.received_at == at(now)
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


async def test_oldest_pending_size_and_recent_events(store: Store) -> None:
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
    assert await store.oldest_pending() == at(now + 3)
    recent = await store.recent_events(3)
    assert [(e.id, e.state) for e in recent] == [
        ("a", "duplicate"),
        ("b", "routed"),
        ("a", "routed"),
    ]
    assert [d.key for d in recent[1].deliveries] == ["b:r:x"]
    assert recent[0].deliveries == [] and recent[1].received_at == at(now + 2)


async def test_prune_removes_only_what_is_finished_and_old(store: Store, store_db: StoreDB) -> None:
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
    left = await store.recent_events(100)
    # Kept: the dead delivery's event, the event in an open digest, the unrouted one.
    assert [(e.id, e.state) for e in reversed(left)] == [
        ("dead", "routed"),
        ("open-digest", "routed"),
        ("waiting", "pending"),
    ]
    assert store_db.rows("SELECT count(*) FROM event_payloads") == [(3,)]
    assert [d.key for d in await store.list_deliveries()] == ["dead:r:x"]
    # A pruned event's id no longer dedupes, as with SQLite; a kept one still does.
    assert await accept(store, "done", "dead", now=now, window=86400) == [False, True]
    assert (await store.counts()).events_pending == 2


async def test_claims_are_oldest_first_and_limited(store: Store) -> None:
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
    store: Store,
) -> None:
    # The circuit breaker's two operations.
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


# -- silences and quiet hours ------------------------------------------------------------


async def test_silenced_muted_and_held_deliveries(store: Store) -> None:
    now = time.time()
    await accept(store, "a", "b", "c", now=now)
    a, b, c = await store.claim_events(10, lease=30, now=now)
    await store.record_routing(
        [
            routed(a, NewDelivery("a:r:x", "r", "x", b"{}", state="silenced", silence="s1")),
            routed(b, NewDelivery("b:r:x", "r", "x", b"{}", state="muted")),
            routed(c, NewDelivery("c:r:x", "r", "x", b"{}", state="held", release_at=now + 60)),
        ],
        now=now,
    )
    [silenced] = await store.list_deliveries(state="silenced")
    assert (silenced.key, silenced.silence) == ("a:r:x", "s1")
    assert [d.key for d in await store.list_deliveries(state="muted")] == ["b:r:x"]
    [held] = await store.list_deliveries(state="held")
    assert held.next_attempt_at == at(now + 60)  # its release time
    counts = await store.counts()
    assert (counts.deliveries_pending, counts.dead) == (0, 0)
    # Nothing of these is claimed, not even once the held one's time has come...
    assert await store.claim_deliveries("x", 10, lease=30, now=now + 61) == []
    assert await store.next_due(["x"]) is None
    # ...until it is released, and then only it.
    assert await store.release_held(now=now + 59) == 0
    assert await store.release_held(now=now + 61) == 1
    [job] = await store.claim_deliveries("x", 10, lease=30, now=now + 61)
    assert job.key == "c:r:x"
    # Silenced and muted deliveries are replayed like dead letters, keeping their keys.
    assert await store.replay(None, now=now + 62) == 0  # dead ones by default: none
    assert await store.replay([silenced.id], now=now + 62, state="silenced") == 1
    assert await store.replay(None, now=now + 62, state="muted", rule="r") == 1
    jobs = await store.claim_deliveries("x", 10, lease=30, now=now + 62)
    assert sorted(job.key for job in jobs) == ["a:r:x", "b:r:x"]
    [replayed] = [d for d in await store.list_deliveries(state="pending") if d.key == "a:r:x"]
    assert replayed.silence is None
    with pytest.raises(ValueError, match="cannot replay"):
        await store.replay(None, now=now, state="pending")


async def test_silences_are_stored_listed_and_expired(db_url: str) -> None:
    now = time.time()
    first = open_store(db_url)
    await first.open()
    try:
        await first.add_silence(
            Silence("old", {"rule": "r"}, now - 100, now - 50, "ann", "over", now - 100)
        )
        await first.add_silence(
            Silence("now", {"channel": "slack-*"}, now - 10, now + 3600, "bob", "term", now - 10)
        )
        await first.add_silence(
            Silence("later", {"event": "course_*"}, now + 600, now + 900, "cy", "", now - 5)
        )
    finally:
        await first.close()
    store = open_store(db_url)  # they survive a restart
    await store.open()
    try:
        assert [s.id for s in await store.list_silences()] == ["later", "now", "old"]
        [active] = await store.list_silences(active_at=now)
        assert active == Silence(
            "now", {"channel": "slack-*"}, at(now - 10), at(now + 3600), "bob", "term", at(now - 10)
        )
        assert [s.id for s in await store.list_silences(active_at=now + 700)] == ["later", "now"]
        expired = await store.expire_silence("now", now=now + 1)
        assert expired is not None and expired.ends_at == at(now + 1)
        assert await store.list_silences(active_at=now + 2) == []
        # Expiring again, or one that ended already, keeps its end.
        assert (await store.expire_silence("old", now=now + 2)).ends_at == at(now - 50)  # type: ignore[union-attr]
        assert await store.expire_silence("nope", now=now) is None
    finally:
        await store.close()


async def test_stored_events_for_the_history_preview(store: Store) -> None:
    now = time.time()
    await accept(store, "old", now=now - 100)
    await accept(store, "a", "a", "b", now=now)
    events = await store.stored_events(since=now - 10, limit=10)
    assert [(e.id, e.payload) for e in events] == [("a", b'{"id": "a"}'), ("b", b'{"id": "b"}')]
    assert [e.id for e in await store.stored_events(since=0, limit=2)] == ["old", "a"]


async def test_purge_takes_the_state_it_is_given_and_only_it(store: Store) -> None:
    now = time.time()
    await accept(store, "a", "b", "c", now=now)
    a, b, c = await store.claim_events(10, lease=30, now=now)
    await store.record_routing(
        [
            routed(a, NewDelivery("a:r:x", "r", "x", b"{}", state="silenced", silence="s")),
            routed(b, NewDelivery("b:r:x", "r", "x", b"{}", state="muted")),
            routed(c, NewDelivery("c:r:x", "r", "x", b"{}", error="broke")),
        ],
        now=now,
    )
    assert await store.purge(None, state="silenced") == 1
    assert await store.list_deliveries(state="silenced") == []
    assert [d.key for d in await store.list_deliveries()] == ["c:r:x", "b:r:x"]
    assert await store.purge(None) == 1  # dead letters by default
    assert [d.state for d in await store.list_deliveries()] == ["muted"]
    with pytest.raises(ValueError, match="cannot purge"):
        await store.purge(None, state="held")
