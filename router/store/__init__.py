"""The durable store: inbox, delivery jobs and dead letters behind one small interface.

``open_store(url)`` picks the implementation: a file path means embedded SQLite.
"""

from router.store.base import (
    Accepted,
    DeliveryJob,
    DeliveryRecord,
    DigestEntry,
    DueDigest,
    InboxEvent,
    NewDelivery,
    RoutedEvent,
    Store,
    StoreCounts,
)

__all__ = [
    "Accepted",
    "DeliveryJob",
    "DeliveryRecord",
    "DigestEntry",
    "DueDigest",
    "InboxEvent",
    "NewDelivery",
    "RoutedEvent",
    "Store",
    "StoreCounts",
    "open_store",
]


def open_store(url: str, *, synchronous: str = "FULL") -> Store:
    """Return an (unopened) store for ``url``: ``sqlite:///path``, or a plain file path."""
    from router.store.sqlite import SqliteStore

    path = url.removeprefix("sqlite:///").removeprefix("sqlite://")
    return SqliteStore(path, synchronous=synchronous)
