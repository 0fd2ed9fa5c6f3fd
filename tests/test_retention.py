"""Retention: what is old and finished goes; pending and dead work, and the events it
needs, stay. Driven with explicit times (a fake clock) on a real store, on each
backend."""

from collections.abc import AsyncIterator

import orjson
import pytest

from router.retention import run_retention
from router.settings import Settings
from router.store import DigestEntry, NewDelivery, Pruned, RoutedEvent, Store, open_store
from tests.conftest import ServiceFactory, StoreDB, example, webhook_rules
from tests.test_metrics import scrape, until_metric, value

T0 = 1_700_000_000.0
DAY = 86400.0
PAYLOAD = orjson.dumps(example("course_created"))


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    store = open_store(db_url)
    await store.open()
    yield store
    await store.close()


async def build(store: Store, store_db: StoreDB) -> Store:
    """Events in every state a retention pass must tell apart, all received at T0."""
    names = ["done", "dead", "retrying", "quiet", "open-digest", "sent-digest", "waiting"]
    await store.accept_events(
        [(name, "course_created", PAYLOAD) for name in names], dedupe_window=60, now=T0
    )
    await store.accept_events([("done", "course_created", PAYLOAD)], dedupe_window=60, now=T0)
    claimed = {e.id: e for e in await store.claim_events(100, lease=60, now=T0)}
    del claimed["waiting"]  # stays pending: never routed

    def job(event: str, error: str | None = None) -> list[NewDelivery]:
        return [NewDelivery(f"{event}:r:hook", "r", "hook", b"{}", error)]

    await store.record_routing(
        [
            RoutedEvent(claimed["done"], job("done")),
            RoutedEvent(claimed["dead"], job("dead", "HTTP 410")),
            RoutedEvent(claimed["retrying"], job("retrying")),
            RoutedEvent(claimed["quiet"], []),  # no rule fired
            RoutedEvent(claimed["open-digest"], [], [DigestEntry("d", "open", T0 + 30 * DAY, 50)]),
            RoutedEvent(claimed["sent-digest"], [], [DigestEntry("d", "sent", T0 + 10, 50)]),
        ],
        now=T0,
    )
    [digest] = await store.claim_due_digests(10, lease=60, now=T0 + 10)
    await store.record_digest(digest.id, job("digest"), now=T0 + 10)
    jobs = {j.key: j for j in await store.claim_deliveries("hook", 10, lease=60, now=T0 + 20)}
    await store.finish_delivery(jobs["done:r:hook"].id, "delivered", attempts=1, now=T0 + 20)
    await store.finish_delivery(jobs["digest:r:hook"].id, "logged", attempts=1, now=T0 + 20)
    await store.finish_delivery(
        jobs["retrying:r:hook"].id,
        "pending",
        attempts=3,
        now=T0 + 20,
        next_attempt_at=T0 + 9 * DAY,
        error="HTTP 503",
    )
    for key, until in [("r:ended", T0 + 3600), ("r:running", T0 + 30 * DAY)]:
        store_db.rows("INSERT INTO throttles (key, until) VALUES (?, ?)", key, until)
    return store


async def test_prune_keeps_unfinished_work_and_what_it_needs(
    store: Store, store_db: StoreDB
) -> None:
    await build(store, store_db)
    # Nothing is old enough yet: a pass a day later deletes nothing.
    assert await run_retention(store, keep=7 * DAY, now=T0 + DAY) == Pruned()

    pruned = await run_retention(store, keep=7 * DAY, now=T0 + 8 * DAY)
    # done's and the digest's deliveries; done, its duplicate, quiet and sent-digest's
    # events; the sent digest group; the throttle window that ended.
    assert pruned == Pruned(deliveries=2, events=4, digests=1, throttles=1)
    assert sorted(store_db.rows("SELECT id, state FROM events")) == [
        ("dead", "routed"),
        ("open-digest", "routed"),
        ("retrying", "routed"),
        ("waiting", "pending"),
    ]
    assert sorted(store_db.rows("SELECT key, state FROM deliveries")) == [
        ("dead:r:hook", "dead"),
        ("retrying:r:hook", "pending"),
    ]
    # Payloads go with their events; the open digest group and its member stay.
    assert store_db.rows("SELECT count(*) FROM event_payloads") == [(4,)]
    assert store_db.rows("SELECT group_key, state FROM digests") == [("open", "open")]
    assert store_db.rows("SELECT count(*) FROM digest_events") == [(1,)]
    assert store_db.rows("SELECT key FROM throttles") == [("r:running",)]


async def test_prune_works_in_bounded_passes(store: Store) -> None:
    events = [(f"e{i}", "x", PAYLOAD) for i in range(5)]
    await store.accept_events(events, dedupe_window=60, now=T0)
    claimed = await store.claim_events(10, lease=60, now=T0)
    await store.record_routing([RoutedEvent(e, []) for e in claimed], now=T0)
    assert (await store.prune(before=T0 + 1, limit=2)).events == 2
    assert (await store.prune(before=T0 + 1, limit=2)).events == 2
    assert (await store.prune(before=T0 + 1, limit=2)).events == 1
    assert (await store.prune(before=T0 + 1, limit=2)).total == 0


async def test_the_service_prunes_in_the_background(
    service: ServiceFactory, store_db: StoreDB
) -> None:
    client = await service(
        webhook_rules("", secret=None),
        retention="1s",
        retention_interval=0.2,
        dedupe_window=0,
    )
    await client.post("/events", json=example("course_created"))
    await until_metric(
        client, "router_deliveries_completed_total", 1, channel="hook", result="logged"
    )
    samples = await until_metric(client, "router_retention_pruned_total", 1, kind="events")
    assert value(samples, "router_retention_pruned_total", kind="deliveries") == 1
    assert store_db.rows("SELECT count(*) FROM events") == [(0,)]
    assert value(await scrape(client), "router_store_size_bytes") > 0


def test_retention_setting_takes_durations() -> None:
    assert Settings().retention == 7 * DAY
    assert Settings(retention="36h").retention == 36 * 3600
    assert Settings(retention=90).retention == 90
