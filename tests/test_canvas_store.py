"""The store's part of Canvas enrichment, on both backends: the shared cache of API
answers, and holding an event whose Canvas data is unavailable."""

import time
from collections.abc import AsyncIterator

import pytest

from router.store import Store, open_store


@pytest.fixture
async def any_store(db_url: str) -> AsyncIterator[Store]:
    store = open_store(db_url)
    await store.open()
    yield store
    await store.close()


async def test_cache_answers_until_they_expire_and_forgets_expired_ones(
    any_store: Store, store_db: object
) -> None:
    store, now = any_store, 1000.0
    await store.save_cached("a", b'{"x":1}', expires_at=now + 60, now=now)
    await store.save_cached("b", b"null", expires_at=now + 10, now=now)
    assert await store.load_cached(["a", "b", "c"], now=now + 5) == {"a": b'{"x":1}', "b": b"null"}
    assert await store.load_cached(["a", "b"], now=now + 11) == {"a": b'{"x":1}'}
    await store.save_cached("a", b'{"x":2}', expires_at=now + 120, now=now + 11)
    assert await store.load_cached(["a"], now=now + 100) == {"a": b'{"x":2}'}
    rows = store_db.rows("SELECT key FROM canvas_cache ORDER BY key")  # type: ignore[attr-defined]
    assert rows == [("a",)]  # b expired and was removed by the later save


async def test_a_held_event_is_not_claimed_before_its_time(any_store: Store) -> None:
    store, now = any_store, time.time()
    await store.accept_events([("e1", "x", b"{}"), ("e2", "x", b"{}")], dedupe_window=60, now=now)
    first = await store.claim_events(10, lease=60, now=now)
    assert [e.id for e in first] == ["e1", "e2"]
    await store.hold_event(first[0].seq, until=now + 30)
    later = await store.claim_events(10, lease=60, now=now + 29)
    assert later == []  # e1 held, e2 still leased
    again = await store.claim_events(10, lease=5, now=now + 31)
    assert [e.id for e in again] == ["e1"]
