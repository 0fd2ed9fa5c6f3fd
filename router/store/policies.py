"""What the stores decide, written once.

Both stores (SQLite and PostgreSQL) read the rows a decision needs, call a function
here, and write what it returns: throttle verdicts, how an event joining a digest
group changes it, which deliveries a listing or a dead-letter selection means, and
what retention may delete. The stores only read and write, each in its own dialect
and with its own locking (SQLite's single writer, PostgreSQL's row locks and
``SKIP LOCKED``); the policies hold no SQL and touch no connection.
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.store.base import DigestEntry, NewDelivery

__all__ = [
    "DELIVERY_STATES",
    "FINISHED_STATES",
    "REPLAYABLE_STATES",
    "DeliveryFilter",
    "DigestGroup",
    "ThrottleVerdicts",
    "decide_throttles",
    "delivery_expired",
    "digest_expired",
    "digest_joins",
    "event_expired",
    "join_digest",
    "next_attempt",
    "stored_state",
    "throttle_expired",
    "throttle_keys",
]

DELIVERY_STATES = ("pending", "delivered", "logged", "dead", "silenced", "muted", "held")
#: The states a replay puts back in the queue: dead letters, and deliveries a silence
#: or a quiet-hours window with ``during_mute: drop`` kept from being sent.
REPLAYABLE_STATES = ("dead", "silenced", "muted")


def stored_state(delivery: NewDelivery) -> str:
    """The state a new delivery is created in: dead when it could not be rendered,
    else the state routing gave it (pending, silenced, muted, held)."""
    return "dead" if delivery.error else delivery.state


def next_attempt(delivery: NewDelivery, now: float) -> float:
    """When a new delivery is first due: now, or a held one's release time."""
    return delivery.release_at if delivery.release_at is not None else now


# -- throttles ---------------------------------------------------------------------------


@dataclass
class ThrottleVerdicts:
    """The outcome of throttling one batch of routed events.

    ``kept`` are the deliveries to create, as ``(event seq, delivery)`` in batch order;
    ``windows`` the keys whose window opened, with its new end; ``counted`` how many
    deliveries each key suppressed; ``suppressed`` the rule of every suppressed
    delivery, in order (reported to metrics).
    """

    kept: list[tuple[int, NewDelivery]] = field(default_factory=list)
    windows: dict[str, float] = field(default_factory=dict)
    counted: Counter[str] = field(default_factory=Counter)
    suppressed: list[str] = field(default_factory=list)

    def written(self) -> list[str]:
        """The keys whose row changes (a window opened or a count grew), sorted: the
        order PostgreSQL locks them in."""
        return sorted(set(self.windows) | set(self.counted))


def throttle_keys(batch: Sequence[tuple[int, Sequence[NewDelivery]]]) -> list[str]:
    """Every throttle key the batch uses, sorted (the stores read or lock these)."""
    return sorted({d.throttle[0] for _, deliveries in batch for d in deliveries if d.throttle})


def decide_throttles(
    batch: Sequence[tuple[int, Sequence[NewDelivery]]],
    windows: Mapping[str, float | None],
    now: float,
) -> ThrottleVerdicts:
    """Decide the throttled deliveries of a batch of events, ``(event seq, deliveries)``
    in routing order, given where each key's window ends (None: no window yet).

    Within one event, the first delivery under a key decides for all of them: if the
    key's window is closed it opens (until the delivery's end) and every delivery of
    that event under the key goes out, so one event may notify several channels.
    While a window is open, every other use of the key is suppressed and counted.
    Later events of the same batch see the windows earlier ones opened.
    """
    until = dict(windows)
    verdicts = ThrottleVerdicts()
    for seq, deliveries in batch:
        open_here: dict[str, bool] = {}
        for delivery in deliveries:
            if delivery.throttle is None:
                verdicts.kept.append((seq, delivery))
                continue
            key, window_end = delivery.throttle
            if key not in open_here:
                end = until.get(key)
                open_here[key] = end is None or end <= now
                if open_here[key]:
                    until[key] = verdicts.windows[key] = window_end
            if open_here[key]:
                verdicts.kept.append((seq, delivery))
            else:
                verdicts.counted[key] += 1
                verdicts.suppressed.append(delivery.rule)
    return verdicts


# -- digests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestGroup:
    """The open digest group of a (rule, group key): how many events it holds and
    when it is due."""

    size: int
    due_at: float


def digest_joins(
    entries: Sequence[tuple[int, DigestEntry]],
) -> dict[tuple[str, str], list[tuple[int, DigestEntry]]]:
    """A batch's ``(event seq, entry)`` pairs by the (rule, group key) they join, in
    that order (the order PostgreSQL locks the groups in); each list in routing order."""
    joins: dict[tuple[str, str], list[tuple[int, DigestEntry]]] = {}
    for seq, entry in entries:
        joins.setdefault((entry.rule, entry.group), []).append((seq, entry))
    return dict(sorted(joins.items()))


def join_digest(
    group: DigestGroup | None, entries: Sequence[DigestEntry], now: float
) -> DigestGroup:
    """The open group after ``entries`` (of one rule and group key, in routing order)
    joined it; ``group`` None opens a new one, due when its first entry says.

    A group that reaches its size limit (the ``max`` of the entry that fills it) is
    due now, or at its earlier due time if that has passed already."""
    if not entries:
        raise ValueError("join_digest needs at least one entry")
    size, due_at = (0, entries[0].due_at) if group is None else (group.size, group.due_at)
    for entry in entries:
        size += 1
        if size >= entry.max:
            due_at = min(due_at, now)
    return DigestGroup(size=size, due_at=due_at)


# -- listing filters ----------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryFilter:
    """Which deliveries a listing, replay or purge is about: every term given must
    hold. ``since`` is "last changed at or after" (unix seconds); ``ids`` None means
    any id, an empty list none."""

    state: str | None = None
    channel: str | None = None
    rule: str | None = None
    since: float | None = None
    ids: list[int] | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in DELIVERY_STATES:
            raise ValueError(f"unknown delivery state {self.state!r}")

    def terms(self) -> list[tuple[str, str, Any]]:
        """``(column, operator, value)`` for each term given, in a fixed order:
        operator ``=`` or ``>=``, or ``in`` with a list of ids. The stores write them in
        their dialects."""
        found: list[tuple[str, str, Any]] = []
        for column, operator, value in (
            ("state", "=", self.state),
            ("channel", "=", self.channel),
            ("rule", "=", self.rule),
            ("updated_at", ">=", self.since),
            ("id", "in", self.ids),
        ):
            if value is not None:
                found.append((column, operator, value))
        return found


# -- retention ---------------------------------------------------------------------------

#: Deliveries retention may delete. Pending and dead ones are never deleted: they are
#: work still to do, or waiting for an operator.
FINISHED_STATES = ("delivered", "logged")


def delivery_expired(state: str, updated_at: float, before: float) -> bool:
    """A delivery finished before the cutoff."""
    return state in FINISHED_STATES and updated_at < before


def event_expired(state: str, received_at: float, referenced: bool, before: float) -> bool:
    """An event received before the cutoff that is routed (or a duplicate) and that no
    delivery or digest group points at any more."""
    return state != "pending" and received_at < before and not referenced


def digest_expired(state: str, opened_at: float, before: float) -> bool:
    """A digest group sent, opened before the cutoff."""
    return state == "sent" and opened_at < before


def throttle_expired(until: float, before: float) -> bool:
    """A throttle window that ended before the cutoff."""
    return until < before
