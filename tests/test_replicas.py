"""Several router replicas on one PostgreSQL schema: claims never overlap, a crashed
replica's leases are taken over, dedupe/throttles/digests hold under races, and two
real router apps sharing a schema deliver every event exactly once per rule/channel.

Uses the server and per-test schema of ``tests/test_postgres_store.py`` (skipped only
when PostgreSQL is unreachable).
"""

import asyncio
import copy
import itertools
import random
import shutil
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.http.app import create_app
from router.http.keys import STORE
from router.settings import Settings
from router.store import DigestEntry, InboxEvent, NewDelivery, RoutedEvent
from router.store.postgres import PostgresStore
from tests.conftest import ROOT, example
from tests.receiver import SECRET, WebhookReceiver
from tests.test_postgres_store import fetch, pg_schema, store_url

__all__ = ["pg_schema"]  # the fixture, imported to be used here


@pytest.fixture
async def replicas(pg_schema: str) -> AsyncIterator[list[PostgresStore]]:
    """Three stores on one schema, as three router processes would have."""
    stores = [PostgresStore(store_url(pg_schema, replica=f"r{n}")) for n in range(3)]
    await asyncio.gather(*(store.open() for store in stores))
    yield stores
    await asyncio.gather(*(store.close() for store in stores))


def payload(event_id: str) -> bytes:
    return orjson.dumps({"id": event_id})


async def test_concurrent_claims_never_hand_out_the_same_event_or_delivery(
    replicas: list[PostgresStore],
) -> None:
    now = time.time()
    ids = [f"ev{n}" for n in range(600)]
    for start in range(0, len(ids), 100):
        await replicas[0].accept_events(
            [(i, "e", payload(i)) for i in ids[start : start + 100]], dedupe_window=60, now=now
        )
    events: dict[int, list[str]] = {}  # worker -> event ids it claimed
    deliveries: dict[int, list[int]] = {}

    async def route(worker: int, store: PostgresStore) -> None:
        mine = events.setdefault(worker, [])
        while claimed := await store.claim_events(7, lease=60, now=now):
            mine.extend(e.id for e in claimed)
            jobs = [RoutedEvent(e, [NewDelivery(f"{e.id}:r:c", "r", "c", b"{}")]) for e in claimed]
            await store.record_routing(jobs, now=now)

    async def dispatch(worker: int, store: PostgresStore) -> None:
        mine = deliveries.setdefault(worker, [])
        while claimed := await store.claim_deliveries("c", 5, lease=60, now=now):
            mine.extend(job.id for job in claimed)
            for job in claimed:
                await store.finish_delivery(job.id, "delivered", attempts=1, now=now)

    workers = list(enumerate(replicas * 2))  # two workers per replica
    await asyncio.gather(*(route(n, store) for n, store in workers))
    claimed_events = [i for mine in events.values() for i in mine]
    assert len(claimed_events) == len(set(claimed_events)), "an event was claimed twice"
    assert sorted(claimed_events) == sorted(ids)
    assert sum(1 for mine in events.values() if mine) > 1, "no concurrency happened"

    await asyncio.gather(*(dispatch(n, store) for n, store in workers))
    claimed_jobs = [i for mine in deliveries.values() for i in mine]
    assert len(claimed_jobs) == len(set(claimed_jobs)), "a delivery was claimed twice"
    assert len(claimed_jobs) == len(ids)
    counts = await replicas[1].counts()
    assert (counts.events_pending, counts.deliveries_pending, counts.dead) == (0, 0, 0)


async def test_a_crashed_replicas_leases_are_taken_over_once_they_expire(pg_schema: str) -> None:
    now = time.time()
    crashed = PostgresStore(store_url(pg_schema, replica="crashed"))
    stalled = PostgresStore(store_url(pg_schema, replica="stalled"))
    survivor = PostgresStore(store_url(pg_schema, replica="survivor"))
    for store in (crashed, stalled, survivor):
        await store.open()
    try:
        await crashed.accept_events(
            [(i, "e", payload(i)) for i in ("a", "b", "c")], dedupe_window=60, now=now
        )
        [a, b, _] = await crashed.claim_events(10, lease=30, now=now)
        await crashed.record_routing(
            [
                RoutedEvent(a, [NewDelivery("a:r:x", "r", "x", b"{}")]),
                RoutedEvent(b, [], [DigestEntry("daily", "{}", now, 10)]),
            ],
            now=now,
        )
        await crashed.accept_events([("d", "e", payload("d"))], dedupe_window=60, now=now)
        assert [e.id for e in await crashed.claim_events(10, lease=30, now=now)] == ["d"]
        [job] = await crashed.claim_deliveries("x", 10, lease=30, now=now)
        [digest] = await crashed.claim_due_digests(10, lease=30, now=now)
        await crashed.close()  # died holding leases on c, d, a:r:x and the digest

        later = now + 29
        assert await survivor.claim_events(10, lease=30, now=later) == []
        assert await survivor.claim_deliveries("x", 10, lease=30, now=later) == []
        assert await survivor.claim_due_digests(10, lease=30, now=later) == []
        assert await survivor.next_due(["x"]) == pytest.approx(now + 30)

        later = now + 30
        taken = await survivor.claim_events(10, lease=30, now=later)
        assert [e.id for e in taken] == ["c", "d"]
        [job_again] = await survivor.claim_deliveries("x", 10, lease=30, now=later)
        [digest_again] = await survivor.claim_due_digests(10, lease=30, now=later)
        assert (job_again.id, digest_again.id) == (job.id, digest.id)
        assert [e.id for e in digest_again.events] == ["b"]
        rows = await fetch(
            pg_schema,
            "SELECT leased_by FROM events WHERE lease_until IS NOT NULL UNION ALL"
            " SELECT leased_by FROM deliveries WHERE lease_until IS NOT NULL UNION ALL"
            " SELECT leased_by FROM digests WHERE lease_until IS NOT NULL",
        )
        assert {r["leased_by"] for r in rows} == {"survivor"}

        # A replica that stalled past its lease and then finishes its work late must
        # not double anything the survivor did.
        [c_event, d_event] = taken
        jobs = [NewDelivery("c:r:x", "r", "x", b"{}")]
        await survivor.record_routing(
            [RoutedEvent(c_event, jobs), RoutedEvent(d_event, [])], now=later
        )
        await stalled.record_routing([RoutedEvent(c_event, jobs)], now=later)
        digest_jobs = [NewDelivery(f"digest-{digest.id}:daily:x", "daily", "x", b"{}")]
        await survivor.record_digest(digest.id, digest_jobs, now=later)
        await stalled.record_digest(digest.id, digest_jobs, now=later)
        await survivor.finish_delivery(job.id, "delivered", attempts=1, now=later)
        await stalled.finish_delivery(job.id, "pending", attempts=1, now=later, error="late")
        records = await survivor.list_deliveries()
        assert Counter(r.key for r in records) == {
            "a:r:x": 1,
            "c:r:x": 1,
            f"digest-{digest.id}:daily:x": 1,
        }
        assert {r.key: r.state for r in records}["a:r:x"] == "delivered"
        counts = await survivor.counts()
        assert (counts.events_pending, counts.deliveries_pending) == (0, 2)
    finally:
        for store in (stalled, survivor):
            await store.close()


async def test_concurrent_duplicate_accepts_yield_exactly_one_pending(
    replicas: list[PostgresStore],
) -> None:
    now = time.time()
    ids = [f"single{n}" for n in range(100)]
    answers = await asyncio.gather(
        *(
            store.accept_events([(i, "e", payload(i))], dedupe_window=60, now=now)
            for i in ids
            for store in replicas
        )
    )
    new = Counter(a[0].id for a in answers if not a[0].duplicate)
    assert new == dict.fromkeys(ids, 1)

    # Batches holding the same ids in different orders, at the same time: no deadlock,
    # and still exactly one of each is new.
    rng = random.Random(7)
    batch_ids = [f"batch{n}" for n in range(60)]
    batches = []
    for store in replicas * 2:
        shuffled = batch_ids[:]
        rng.shuffle(shuffled)
        batches.append((store, shuffled))
    answers = await asyncio.gather(
        *(
            store.accept_events([(i, "e", payload(i)) for i in order], dedupe_window=60, now=now)
            for store, order in batches
        )
    )
    new = Counter(a.id for answer in answers for a in answer if not a.duplicate)
    assert new == dict.fromkeys(batch_ids, 1)
    assert (await replicas[0].counts()).events_pending == len(ids) + len(batch_ids)
    [row] = await fetch(
        replicas[0].schema or "", "SELECT count(*) AS n FROM events WHERE state = 'duplicate'"
    )
    assert row["n"] == len(ids) * 2 + len(batch_ids) * 5


async def claim_all(store: PostgresStore, now: float) -> list[InboxEvent]:
    return await store.claim_events(1000, lease=60, now=now)


async def test_throttles_hold_across_replicas_routing_at_once(
    replicas: list[PostgresStore],
) -> None:
    now = time.time()
    ids = [f"t{n}" for n in range(30)]
    await replicas[0].accept_events([(i, "e", payload(i)) for i in ids], dedupe_window=60, now=now)
    events = await claim_all(replicas[0], now)
    keys = [f"r:key{k}" for k in range(5)]
    rng = random.Random(11)

    def decide(event: InboxEvent) -> RoutedEvent:
        order = keys[:]
        rng.shuffle(order)  # every event uses every key, in its own order
        return RoutedEvent(
            event,
            [
                NewDelivery(f"{event.id}:{k}", "r", "x", b"{}", throttle=(k, now + 60))
                for k in order
            ],
        )

    # Each replica routes its share: some one event per call, some in batches.
    calls = []
    for n, store in enumerate(replicas):
        share = [decide(e) for e in events[n::3]]
        if n == 0:
            calls.append(store.record_routing(share, now=now))
        else:
            calls.extend(store.record_routing([item], now=now) for item in share)
    results = await asyncio.gather(*calls)
    suppressed = sum(len(rules) for rules in results)
    created = await replicas[0].list_deliveries(limit=1000)
    assert sorted(d.key.split(":", 1)[1] for d in created) == keys  # one per key
    assert suppressed == len(ids) * len(keys) - len(keys)
    rows = await fetch(replicas[0].schema or "", "SELECT sum(suppressed) AS n FROM throttles")
    assert rows[0]["n"] == suppressed


async def test_digest_joins_from_replicas_at_once_land_in_one_group(
    replicas: list[PostgresStore],
) -> None:
    now = time.time()
    ids = [f"d{n}" for n in range(30)]
    await replicas[0].accept_events([(i, "e", payload(i)) for i in ids], dedupe_window=60, now=now)
    events = await claim_all(replicas[0], now)
    entry = DigestEntry("daily", '{"course": 1}', now + 5, 1000)
    await asyncio.gather(
        *(
            replicas[n % 3].record_routing([RoutedEvent(e, [], [entry])], now=now)
            for n, e in enumerate(events)
        )
    )
    [due] = await replicas[1].claim_due_digests(10, lease=60, now=now + 5)
    assert sorted(e.id for e in due.events) == sorted(ids)
    assert [e.seq for e in due.events] == sorted(e.seq for e in due.events)
    rows = await fetch(replicas[0].schema or "", "SELECT size FROM digests")
    assert [r["size"] for r in rows] == [len(ids)]


# -- two real router apps ------------------------------------------------------------------

RULES = """\
version: 1
channels:
  hook:
    type: webhook
    url: "{url}"
    secret: "{secret}"
    timeout: 5
  audit:
    type: webhook
    url: "{url}"
    secret: "{secret}"
    timeout: 5
rules:
  - name: everything
    events: ["*"]
    notify: [hook, audit]
  - name: completions
    events: ["course_completed"]
    notify: [hook]
"""


def make_event(n: int, kind: str) -> dict[str, Any]:
    event = copy.deepcopy(example(kind))
    event["metadata"]["request_id"] = str(uuid.uuid4())
    if kind == "course_completed":
        event["body"]["user"]["id"] = str(200_000 + n)
    return event


async def test_two_router_apps_sharing_a_schema_deliver_each_event_once(
    pg_schema: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    receiver = WebhookReceiver()
    receiver_runner = await receiver.start()
    try:
        rules = tmp_path / "rules.yaml"
        rules.write_text(RULES.format(url=receiver.url, secret=SECRET))
        templates = tmp_path / "templates"
        shutil.copytree(ROOT / "templates", templates)
        clients = []
        for name in ("a", "b"):
            settings = Settings(
                rules=rules,
                templates=templates,
                db=store_url(pg_schema, replica=f"web-{name}"),
                backoff_base=0.05,
                backoff_cap=0.2,
                shutdown_grace=2,
                reload_poll=0,
            )
            clients.append(await aiohttp_client(create_app(settings)))

        # Count, per replica, which events and deliveries its workers claimed.
        claimed: dict[str, Counter[str]] = {}
        for name, client in zip("ab", clients, strict=True):
            store = client.app[STORE]
            assert isinstance(store, PostgresStore)
            claimed[name] = Counter()
            store.claim_events = counting(store.claim_events, claimed[name], "events")  # type: ignore[method-assign]
            store.claim_deliveries = counting(store.claim_deliveries, claimed[name], "jobs")  # type: ignore[method-assign]

        kinds = itertools.cycle(["course_completed", "course_created", "course_completed"])
        events = [make_event(n, next(kinds)) for n in range(60)]
        accepted: list[str] = []

        async def post(client: Any, body: Any) -> list[dict[str, Any]]:
            resp = await client.post(
                "/events", data=orjson.dumps(body), headers={"Content-Type": "application/json"}
            )
            assert resp.status == 202, await resp.text()
            return (await resp.json())["accepted"]

        # Events go to both replicas, one by one and in batches, at the same time.
        chunks: list[list[dict[str, Any]]] = []
        sizes = itertools.cycle([1, 3, 4, 2])
        while (start := sum(map(len, chunks))) < len(events):
            chunks.append(events[start : start + next(sizes)])
        posts = [
            post(clients[n % 2], chunk[0] if len(chunk) == 1 else chunk)
            for n, chunk in enumerate(chunks)
        ]
        answers = await asyncio.gather(*posts)
        for answer in answers:
            for item in answer:
                assert not item["duplicate"], item
                accepted.append(item["id"])
        assert len(accepted) == len(set(accepted))

        # Canvas retries: the same events to the *other* replica, and one new event to
        # both at once; all duplicates but one.
        again = await asyncio.gather(*(post(clients[1], events[n]) for n in range(0, 60, 6)))
        assert all(item["duplicate"] for answer in again for item in answer)
        racer = make_event(999, "course_completed")
        both = await asyncio.gather(post(clients[0], racer), post(clients[1], racer))
        assert sorted(answer[0]["duplicate"] for answer in both) == [False, True]
        accepted.append(both[0][0]["id"])

        completed = sum(1 for e in events if e["metadata"]["event_name"] == "course_completed")
        expected = 2 * len(accepted) + completed + 1  # + the racer's "completions" job
        await receiver.wait_for(expected, timeout=30)
        for client in clients:  # idle on both replicas...
            deadline = time.monotonic() + 10
            while True:
                ready = await (await client.get("/readyz")).json()
                if (ready["events_pending"], ready["deliveries_pending"]) == (0, 0):
                    break
                assert time.monotonic() < deadline, ready
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # ...and past a polling interval: nothing more arrives
        assert ready["dead_letters"] == 0
        assert not receiver.rejected, receiver.rejected[:3]
        keys = Counter(r.webhook_id for r in receiver.received)
        repeated = {key: n for key, n in keys.items() if n > 1}
        assert not repeated, f"delivered more than once: {list(repeated.items())[:5]}"
        assert len(keys) == expected
        assert {key.split(":")[0] for key in keys} == set(accepted)
        assert {key.split(":", 1)[1] for key in keys} == {
            "everything:hook",
            "everything:audit",
            "completions:hook",
        }
        # Both replicas took part, and together they claimed each thing once.
        assert claimed["a"]["events"] + claimed["b"]["events"] == len(accepted)
        assert claimed["a"]["jobs"] + claimed["b"]["jobs"] == expected
        assert claimed["a"]["events"] and claimed["b"]["events"], claimed
        assert claimed["a"]["jobs"] and claimed["b"]["jobs"], claimed
    finally:
        await receiver_runner.cleanup()


def counting(claim: Any, counter: Counter[str], what: str) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await claim(*args, **kwargs)
        counter[what] += len(result)
        return result

    return wrapper
