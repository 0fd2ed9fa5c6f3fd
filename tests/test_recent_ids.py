"""The SQLite store's in-memory duplicate check: exact times, bounded memory, rollback."""

from router.store.recent_ids import RecentIds


def test_a_lookup_compares_times() -> None:
    recent = RecentIds([("a", 100.0)], window=60, now=100)
    assert recent.seen_since("a", 40)
    assert recent.seen_since("a", 100)
    assert not recent.seen_since("a", 100.5)
    assert not recent.seen_since("b", 0)


def test_old_ids_are_dropped_after_two_windows() -> None:
    recent = RecentIds([], window=60, now=0)
    recent.add("a", 10)
    recent.add("b", 70)  # a window since the start: "a" moves to the older generation
    assert recent.seen_since("a", 10) and recent.seen_since("b", 70)
    assert len(recent) == 2
    recent.add("c", 130)  # another window: "a" is forgotten, "b" is kept
    assert not recent.seen_since("a", 0)
    assert recent.seen_since("b", 70)
    assert len(recent) == 2


def test_rollback_forgets_only_what_the_transaction_added() -> None:
    recent = RecentIds([("kept", 1.0)], window=60, now=1)
    recent.begin()
    recent.add("x", 2)
    recent.add("y", 61)  # rotates mid-transaction: "x" is in the older generation now
    recent.rollback()
    assert not recent.seen_since("x", 0)
    assert not recent.seen_since("y", 0)
    assert recent.seen_since("kept", 0)
    recent.begin()
    recent.add("z", 62)
    recent.begin()  # committed: the next transaction cannot undo it
    recent.rollback()
    assert recent.seen_since("z", 62)


def test_retention_forgets_pruned_ids_and_a_rollback_brings_them_back() -> None:
    recent = RecentIds([("old", 1.0), ("again", 50.0)], window=100, now=50)
    recent.begin()
    recent.forget("old", before=10)
    recent.forget("again", before=10)  # accepted as new since the cutoff: kept
    assert not recent.seen_since("old", 0) and recent.seen_since("again", 50)
    recent.rollback()  # the deletion did not happen after all
    assert recent.seen_since("old", 1)
    recent.begin()
    recent.forget("old", before=10)
    recent.begin()  # committed: the next transaction cannot undo it
    recent.rollback()
    assert not recent.seen_since("old", 0)
