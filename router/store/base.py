"""The store interface and the records that cross it.

The records made once per event or per delivery are plain slotted dataclasses, not
frozen ones: a frozen dataclass sets each field through ``object.__setattr__``, which
made building a claimed ``DeliveryJob`` cost about 15 k instructions on the store's
thread, a fifth of that thread's work per delivery.
"""

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

DeliveryState = Literal["pending", "delivered", "logged", "dead", "silenced", "muted", "held"]
"""``silenced``: a silence matched it (``silence`` names which); ``muted``: its rule or
channel was in a quiet-hours window with ``during_mute: drop``; ``held``: in such a
window with ``during_mute: hold``, pending again at its ``next_attempt_at``. Silenced
and muted deliveries are not sent, and are replayable like dead letters."""


@dataclass(slots=True)
class Accepted:
    """The answer for one ingested event: its id and whether it was a repeat."""

    id: str
    duplicate: bool


@dataclass(slots=True)
class InboxEvent:
    """An accepted event waiting to be routed."""

    seq: int
    id: str
    name: str
    payload: bytes
    received_at: float


@dataclass(slots=True)
class NewDelivery:
    """A delivery job produced by routing one event. ``error`` set means born dead
    (e.g. the template failed to render): it goes straight to the dead letters.

    ``throttle`` (a key and the end of its window) makes the job conditional: if the
    key's window is still open it is suppressed and counted instead of created.
    """

    key: str
    rule: str
    channel: str
    message: bytes
    error: str | None = None
    throttle: tuple[str, float] | None = None
    state: DeliveryState = "pending"  # or silenced, muted, held (never throttled)
    silence: str | None = None  # the id of the silence that matched (state silenced)
    release_at: float | None = None  # when a held delivery becomes pending


@dataclass(frozen=True)
class DigestEntry:
    """An event joining the open digest group of a rule (opening it if there is none)."""

    rule: str
    group: str
    due_at: float
    max: int


@dataclass(slots=True)
class RoutedEvent:
    """Everything routing decided about one event, recorded in one transaction."""

    event: InboxEvent
    deliveries: list[NewDelivery]
    digests: list[DigestEntry] = field(default_factory=list)
    snapshot: tuple[str, bytes] | None = None


@dataclass(frozen=True)
class DueDigest:
    """A digest group whose wait is over (or that is full), with its events."""

    id: int
    rule: str
    group: str
    events: list[InboxEvent]


@dataclass(slots=True)
class DeliveryJob:
    """A claimed delivery, with everything the dispatcher needs to attempt it."""

    id: int
    key: str
    event_id: str
    event_name: str
    rule: str
    channel: str
    message: bytes
    event: bytes
    attempts: int
    created_at: float
    received_at: float | None = None  # when the event was accepted (delivery latency)


@dataclass(frozen=True)
class DeliveryRecord:
    """A delivery as shown to operators (dead-letter listings, status)."""

    id: int
    key: str
    event_id: str
    rule: str
    channel: str
    state: DeliveryState
    attempts: int
    created_at: float
    updated_at: float
    next_attempt_at: float
    last_error: str | None
    event_name: str = ""
    silence: str | None = None  # the silence that matched a silenced delivery


@dataclass(frozen=True)
class Silence:
    """A silence: while ``starts_at <= now < ends_at``, deliveries its ``matchers``
    select are recorded as ``silenced`` instead of being sent. ``matchers`` is the
    JSON of ``router.silences.Matchers`` (rule, channel, event globs and field
    conditions)."""

    id: str
    matchers: dict[str, Any]
    starts_at: float
    ends_at: float
    author: str
    comment: str
    created_at: float

    def active(self, now: float) -> bool:
        """Whether the silence applies at ``now``."""
        return self.starts_at <= now < self.ends_at


@dataclass(frozen=True)
class DeliveryDetail:
    """One delivery with its rendered message and its event (``router dlq show``)."""

    record: DeliveryRecord
    message: bytes
    event: bytes | None  # None once retention removed the payload


@dataclass(frozen=True)
class EventRecord:
    """A stored event and the deliveries it produced (the status page)."""

    seq: int
    id: str
    name: str
    state: str  # pending, routed, duplicate
    received_at: float
    deliveries: list[DeliveryRecord]


@dataclass(frozen=True)
class Pruned:
    """What one retention pass removed."""

    deliveries: int = 0
    events: int = 0
    digests: int = 0
    throttles: int = 0

    @property
    def total(self) -> int:
        return self.deliveries + self.events + self.digests + self.throttles


def log_schema_change(log: logging.Logger, store: str, found: int, now: int) -> None:
    """The one line a store logs when it opens a schema it had to change: ``store
    created`` (it was empty) or ``store migrated`` (from version ``found`` to ``now``)."""
    if found == now:
        return
    if found == 0:
        log.info("store created", extra={"store": store, "schema_version": now})
    else:
        log.info(
            "store migrated",
            extra={"store": store, "schema_version": now, "from_schema_version": found},
        )


class StoreOpenError(Exception):
    """The store could not be opened (a file that cannot be created, a database that
    does not answer). Its message names the cause, never a password."""


@dataclass(frozen=True)
class StoreCounts:
    """Sizes of the queues, for readiness and metrics."""

    events_pending: int
    deliveries_pending: int
    dead: int


class Store(Protocol):
    """Everything the service keeps. Every write is durable when its coroutine returns."""

    async def open(self) -> None:
        """Create or migrate the schema and release leases left by a crashed process."""

    async def close(self) -> None:
        """Finish queued writes and close."""

    async def accept_events(
        self, events: list[tuple[str, str, bytes]], *, dedupe_window: float, now: float
    ) -> list[Accepted]:
        """Durably store ``(id, name, canonical payload)`` events in one transaction.

        An event whose id was accepted within ``dedupe_window`` seconds is recorded as
        a duplicate and will not be routed again.
        """

    async def claim_events(self, limit: int, *, lease: float, now: float) -> list[InboxEvent]:
        """Lease up to ``limit`` unrouted events, oldest first."""

    async def load_snapshots(self, keys: list[str]) -> dict[str, bytes]:
        """The stored snapshots of these entities (absent keys have none)."""

    async def record_routing(self, routed: list[RoutedEvent], *, now: float) -> list[str]:
        """Atomically, per event: create its delivery jobs (minus throttled ones), add
        it to digest groups, store its entity snapshot and mark it routed. Returns the
        ``rule`` of every delivery suppressed by a throttle."""

    async def claim_due_digests(self, limit: int, *, lease: float, now: float) -> list[DueDigest]:
        """Lease digest groups that are due, with their events in arrival order."""

    async def record_digest(
        self, digest_id: int, deliveries: list[NewDelivery], *, now: float
    ) -> None:
        """Atomically create a digest's delivery jobs and close the group."""

    async def claim_deliveries(
        self, channel: str, limit: int, *, lease: float, now: float
    ) -> list[DeliveryJob]:
        """Lease up to ``limit`` due deliveries for ``channel``, oldest due first."""

    async def finish_delivery(
        self,
        delivery_id: int,
        state: DeliveryState,
        *,
        attempts: int,
        now: float,
        next_attempt_at: float | None = None,
        error: str | None = None,
    ) -> None:
        """Record an attempt's result: ``pending`` (retry at next_attempt_at) or final."""

    async def hold_delivery(self, delivery_id: int, *, until: float, now: float) -> None:
        """Give back a claimed delivery untried (its channel's circuit is open): due
        again at ``until``, its attempts and last error unchanged."""

    async def release_retries(self, channel: str, *, now: float) -> int:
        """Make the channel's pending deliveries that wait for a later time due now (its
        receiver is back); return how many."""

    async def next_due(self, channels: list[str]) -> float | None:
        """When the earliest pending delivery of these channels becomes due, or None."""

    async def list_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        limit: int = 100,
        channel: str | None = None,
        rule: str | None = None,
        since: float | None = None,
    ) -> list[DeliveryRecord]:
        """Deliveries, newest first. Every filter given must hold: ``state``,
        ``channel``, ``rule``, and ``since`` (last changed at or after, unix seconds)."""

    async def get_delivery(self, delivery_id: int) -> DeliveryDetail | None:
        """One delivery with its rendered message and event, or None."""

    async def replay(
        self,
        delivery_ids: list[int] | None,
        *,
        now: float,
        channel: str | None = None,
        rule: str | None = None,
        since: float | None = None,
        state: DeliveryState = "dead",
    ) -> int:
        """Put dead deliveries (or, with ``state``, silenced or muted ones) back in the
        queue (all of them when ids is None; the filters narrow either), keeping their
        idempotency keys. Returns how many were requeued."""

    async def purge(
        self,
        delivery_ids: list[int] | None,
        *,
        channel: str | None = None,
        rule: str | None = None,
        since: float | None = None,
        state: DeliveryState = "dead",
    ) -> int:
        """Delete dead (or silenced, or muted) deliveries, selected as by ``replay``.
        Returns how many."""

    async def release_held(self, *, now: float) -> int:
        """Make held deliveries whose release time has come pending (due now); return
        how many."""

    async def add_silence(self, silence: Silence) -> None:
        """Store a new silence."""

    async def list_silences(self, *, active_at: float | None = None) -> list[Silence]:
        """Silences, newest first; with ``active_at``, only those active then."""

    async def expire_silence(self, silence_id: str, *, now: float) -> Silence | None:
        """End a silence now (one that ended already keeps its end); None if unknown."""

    async def stored_events(self, *, since: float, limit: int) -> list[InboxEvent]:
        """Up to ``limit`` stored events received at or after ``since`` that have a
        payload (not duplicates), oldest first. Reads only: safe while a server runs."""

    async def subscribe(
        self, callback: Callable[[str], None]
    ) -> Callable[[], Awaitable[None]] | None:
        """Call ``callback("events")`` / ``callback("deliveries")`` when another process
        sharing the store adds work, so its workers wake before their next poll.
        Returns ``unsubscribe``, or None for a store no other process shares."""

    async def counts(self) -> StoreCounts:
        """Queue sizes."""

    async def oldest_pending(self) -> float | None:
        """``created_at`` of the oldest pending delivery, or None when none is pending."""

    async def size_bytes(self) -> int:
        """The store's size on disk in bytes (for SQLite: the file plus its WAL)."""

    async def recent_events(self, limit: int = 20) -> list[EventRecord]:
        """The latest events, newest first, each with its deliveries."""

    async def prune(self, *, before: float, limit: int = 1000) -> Pruned:
        """Retention, one bounded pass: delete delivered/logged deliveries last changed
        before ``before``; routed and duplicate events received before it (with their
        payloads) that have no delivery left and are in no open digest; sent digest
        groups opened before it; throttle windows that ended before it. Pending and
        dead deliveries and their events are never deleted. Removes at most about
        ``limit`` rows of each kind: call again while ``total`` is not 0."""
