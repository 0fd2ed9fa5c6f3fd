"""The store policies as plain functions: the decisions both stores call (their use
through each store is tested on both backends in test_store.py)."""

import pytest

from router.store import DigestEntry, NewDelivery
from router.store.policies import (
    DeliveryFilter,
    DigestGroup,
    decide_throttles,
    delivery_expired,
    digest_expired,
    digest_joins,
    event_expired,
    join_digest,
    throttle_expired,
    throttle_keys,
)

NOW = 1000.0


def job(key: str, channel: str = "x", throttle: str | None = "k") -> NewDelivery:
    return NewDelivery(
        key, "r", channel, b"{}", throttle=(throttle, NOW + 60) if throttle else None
    )


def test_a_closed_window_opens_for_every_channel_of_the_first_event() -> None:
    batch = [(1, [job("a:x"), job("a:y", "y"), job("a:free", throttle=None)]), (2, [job("b:x")])]
    assert throttle_keys(batch) == ["k"]
    verdicts = decide_throttles(batch, {"k": None}, NOW)
    assert [(seq, d.key) for seq, d in verdicts.kept] == [(1, "a:x"), (1, "a:y"), (1, "a:free")]
    assert verdicts.windows == {"k": NOW + 60}
    assert verdicts.counted == {"k": 1} and verdicts.suppressed == ["r"]
    assert verdicts.written() == ["k"]


def test_an_open_window_suppresses_and_an_ended_one_reopens() -> None:
    batch = [(1, [job("a", throttle="open"), job("b", throttle="ended")])]
    verdicts = decide_throttles(batch, {"open": NOW + 1, "ended": NOW}, NOW)
    assert [d.key for _, d in verdicts.kept] == ["b"]
    assert verdicts.windows == {"ended": NOW + 60}
    assert verdicts.counted == {"open": 1}
    assert verdicts.written() == ["ended", "open"]


def test_joining_a_digest_group() -> None:
    entry = DigestEntry("daily", "g", NOW + 60, 3)
    assert join_digest(None, [entry], NOW) == DigestGroup(size=1, due_at=NOW + 60)
    later = DigestEntry("daily", "g", NOW + 90, 3)  # a later event keeps the group's time
    assert join_digest(DigestGroup(1, NOW + 60), [later], NOW) == DigestGroup(2, NOW + 60)
    # Full: due now; and a group overdue already keeps its earlier time.
    assert join_digest(DigestGroup(2, NOW + 60), [later], NOW) == DigestGroup(3, NOW)
    assert join_digest(DigestGroup(2, NOW - 5), [later], NOW) == DigestGroup(3, NOW - 5)
    # The entry that fills the group decides its limit (a reload may have lowered it).
    small = DigestEntry("daily", "g", NOW + 60, 1)
    assert join_digest(DigestGroup(5, NOW + 60), [entry, small], NOW).due_at == NOW
    with pytest.raises(ValueError):
        join_digest(None, [], NOW)


def test_digest_joins_are_grouped_in_lock_order() -> None:
    a, b = DigestEntry("r2", "g", 1, 5), DigestEntry("r1", "g", 1, 5)
    assert list(digest_joins([(1, a), (2, b), (3, a)]).items()) == [
        (("r1", "g"), [(2, b)]),
        (("r2", "g"), [(1, a), (3, a)]),
    ]


def test_delivery_filters_check_the_state_and_list_the_terms_given() -> None:
    assert DeliveryFilter().terms() == []
    assert DeliveryFilter(state="dead", rule="r", since=5.0, ids=[]).terms() == [
        ("state", "=", "dead"),
        ("rule", "=", "r"),
        ("updated_at", ">=", 5.0),
        ("id", "in", []),
    ]
    with pytest.raises(ValueError, match="unknown delivery state 'gone'"):
        DeliveryFilter(state="gone")


def test_retention_keeps_unfinished_work() -> None:
    assert delivery_expired("delivered", 1, 2) and delivery_expired("logged", 1, 2)
    assert not delivery_expired("delivered", 2, 2)
    assert not delivery_expired("dead", 1, 2) and not delivery_expired("pending", 1, 2)
    assert event_expired("routed", 1, False, 2) and event_expired("duplicate", 1, False, 2)
    assert not event_expired("routed", 1, True, 2)  # a delivery or digest needs it
    assert not event_expired("pending", 1, False, 2) and not event_expired("routed", 2, False, 2)
    assert digest_expired("sent", 1, 2) and not digest_expired("open", 1, 2)
    assert throttle_expired(1, 2) and not throttle_expired(2, 2)
