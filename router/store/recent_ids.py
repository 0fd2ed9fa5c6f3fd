"""The SQLite store's duplicate check: which events it accepted lately, in memory."""

from collections.abc import Iterable

__all__ = ["RecentIds"]


class RecentIds:
    """The ids of the events accepted as new within the dedupe window, and when.

    One process owns a SQLite store, so its duplicate check can live in memory. An
    index on the events' random ids made every insert dirty another page of it, about
    a quarter of the store's cost per event (bench/README.md).

    Two generations bound the memory to at most two windows' worth of ids, and a lookup
    compares times, so the check is exact. Ids added inside a transaction are
    forgotten again when it rolls back (``begin``/``rollback``).
    """

    def __init__(self, entries: Iterable[tuple[str, float]], *, window: float, now: float):
        self.window = window
        self._current: dict[str, float] = dict(entries)  # later rows overwrite earlier
        self._previous: dict[str, float] = {}
        self._rotated_at = now
        self._added: list[str] = []
        self._forgotten: list[tuple[dict[str, float], str, float]] = []

    def seen_since(self, event_id: str, since: float) -> bool:
        """Whether ``event_id`` was accepted as new at or after ``since``."""
        at = self._current.get(event_id)
        if at is None:
            at = self._previous.get(event_id)
        return at is not None and at >= since

    def add(self, event_id: str, at: float) -> None:
        """Remember that ``event_id`` was accepted as new at ``at``."""
        if at - self._rotated_at >= self.window:
            self._previous, self._current = self._current, {}
            self._rotated_at = at
        self._current[event_id] = at
        self._added.append(event_id)

    def forget(self, event_id: str, before: float) -> None:
        """Retention deleted the events with this id: forget it, unless it was accepted
        as new again since ``before``."""
        for generation in (self._current, self._previous):
            at = generation.get(event_id)
            if at is not None and at < before:
                del generation[event_id]
                self._forgotten.append((generation, event_id, at))

    def begin(self) -> None:
        """A transaction starts: ids added or forgotten from now on are undone by
        ``rollback``."""
        self._added.clear()
        self._forgotten.clear()

    def rollback(self) -> None:
        """The transaction rolled back: its events were not stored (or deleted) after all."""
        for event_id in self._added:  # (any older entry for it had expired)
            self._current.pop(event_id, None)
            self._previous.pop(event_id, None)
        for generation, event_id, at in reversed(self._forgotten):
            generation[event_id] = at
        self._added.clear()
        self._forgotten.clear()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
