"""Retention: a background task that deletes what nobody needs any more.

Every ``ROUTER_RETENTION_INTERVAL`` seconds it removes delivered and logged
deliveries, routed and duplicate events (with their payloads), sent digest groups
and ended throttle windows older than ``ROUTER_RETENTION`` (default 7 days). An
event that still has a pending or dead delivery, or sits in an open digest, stays.
Entity snapshots stay too: they are what ``changed`` compares with, one per entity.
"""

import asyncio
import logging
import time

from router.metrics import Metrics
from router.store import Pruned, Store

log = logging.getLogger(__name__)

__all__ = ["retention_loop", "run_retention"]

BATCH = 1000
MAX_PASSES = 100  # at most BATCH * MAX_PASSES rows of each kind per run


async def run_retention(
    store: Store, *, keep: float, now: float, metrics: Metrics | None = None
) -> Pruned:
    """Delete what is older than ``now - keep``, in small passes (each pass is one
    short transaction, so ingest keeps flowing). Returns the totals."""
    before = now - keep
    total = Pruned()
    for _ in range(MAX_PASSES):
        pruned = await store.prune(before=before, limit=BATCH)
        total = Pruned(
            total.deliveries + pruned.deliveries,
            total.events + pruned.events,
            total.digests + pruned.digests,
            total.throttles + pruned.throttles,
        )
        if pruned.total == 0:
            break
        await asyncio.sleep(0)
    if metrics is not None:
        for kind in ("deliveries", "events", "digests", "throttles"):
            if getattr(total, kind):
                metrics.pruned.labels(kind).inc(getattr(total, kind))
    return total


async def retention_loop(store: Store, keep: float, every: float, metrics: Metrics) -> None:
    """Run retention every ``every`` seconds until cancelled; a failed pass is logged
    and tried again at the next interval."""
    while True:
        try:
            pruned = await run_retention(store, keep=keep, now=time.time(), metrics=metrics)
            if pruned.total:
                log.info(
                    "retention pruned",
                    extra={
                        "deliveries": pruned.deliveries,
                        "events": pruned.events,
                        "digests": pruned.digests,
                        "throttles": pruned.throttles,
                    },
                )
        except Exception:
            log.exception("retention pass failed; trying again later")
        await asyncio.sleep(every)
