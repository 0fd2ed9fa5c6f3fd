"""The durable store: inbox, delivery jobs and dead letters behind one small interface.

``open_store(url)`` picks the implementation: a file path means embedded SQLite, a
``postgresql://`` (or ``postgres://``) URL the PostgreSQL store shared by replicas.
"""

import contextlib

from router.store.base import (
    Accepted,
    DeliveryDetail,
    DeliveryJob,
    DeliveryRecord,
    DigestEntry,
    DueDigest,
    EventRecord,
    InboxEvent,
    NewDelivery,
    Pruned,
    RoutedEvent,
    Silence,
    Store,
    StoreCounts,
    StoreOpenError,
)

__all__ = [
    "Accepted",
    "DeliveryDetail",
    "DeliveryJob",
    "DeliveryRecord",
    "DigestEntry",
    "DueDigest",
    "EventRecord",
    "InboxEvent",
    "NewDelivery",
    "Pruned",
    "RoutedEvent",
    "Silence",
    "Store",
    "StoreCounts",
    "StoreOpenError",
    "open_store",
    "served",
    "sqlite_path",
]


def sqlite_path(url: str) -> str | None:
    """The SQLite file that ``url`` names (``sqlite:///path`` or a plain path), or None
    for a PostgreSQL URL."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    return url.removeprefix("sqlite:///").removeprefix("sqlite://")


def open_store(url: str, *, synchronous: str = "FULL") -> Store:
    """Return an (unopened) store for ``url``: ``postgresql://user@host/db?schema=NAME``
    (see ``router.store.postgres``; ``synchronous`` does not apply), or
    ``sqlite:///path``, or a plain file path."""
    path = sqlite_path(url)
    if path is None:
        from router.store.postgres import PostgresStore

        return PostgresStore(url)
    from router.store.sqlite import SqliteStore

    return SqliteStore(path, synchronous=synchronous)


def served(url: str) -> contextlib.AbstractContextManager[None]:
    """Held by ``router serve`` while it runs: a SQLite file is served by one process
    at a time (raises ``StoreOpenError`` if another holds it); PostgreSQL is shared by
    replicas, so nothing is held."""
    path = sqlite_path(url)
    if path is None:
        return contextlib.nullcontext()
    from router.store import sqlite

    return sqlite.served(path)
