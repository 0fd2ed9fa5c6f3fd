"""Prometheus metrics: every metric of the service, defined in one place.

One ``Metrics`` per application, each with its own ``CollectorRegistry`` (never the
global one: tests build many apps in one process). Workers get the object passed in;
the HTTP edge keeps it under the ``METRICS`` app key and serves it on ``GET /metrics``
(``router/http/metrics.py``). Counters and the latency histogram are updated where
things happen; the queue gauges and the store size are read from the store at scrape
time.
"""

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from router.store import Store

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "REJECT_REASONS", "Metrics", "ReloadCounts"]

#: The media type of ``Metrics.exposition()`` (the Prometheus text format).
CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0]

#: Seconds from "event accepted" to "delivered": 1 ms .. 1 h.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)

#: The HTTP status of a refused ``POST /events`` and the reason label it counts under.
REJECT_REASONS = {
    400: "bad_json",
    401: "unauthorized",
    408: "read_timeout",
    413: "too_large",
    415: "unsupported_type",
    422: "invalid",
    503: "draining",
}


class ReloadCounts(Protocol):
    """How many rules reloads succeeded and failed (``router.reload.ReloadStatus``)."""

    succeeded: int
    failed: int


class _ReloadCollector:
    """Reads the reload counts kept by ``ReloadStatus`` at scrape time."""

    def __init__(self, status: Callable[[], ReloadCounts | None]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "router_rules_reloads", "Rules reloads, by outcome (ok, rejected).", labels=["outcome"]
        )
        status = self.status()
        family.add_metric(["ok"], status.succeeded if status else 0)
        family.add_metric(["rejected"], status.failed if status else 0)
        yield family


class Metrics:
    """The service's metrics, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.started_at = time.time()
        self.reload_status: ReloadCounts | None = None
        r = self.registry
        # -- ingest ----------------------------------------------------------------
        self.requests = Counter(
            "router_events_received",
            "POST /events requests received (one request may carry a batch of events).",
            registry=r,
        )
        self.accepted = Counter(
            "router_events_accepted", "Events stored as new (answered 202).", registry=r
        )
        self.duplicates = Counter(
            "router_events_duplicate",
            "Events answered 202 as repeats of an event seen within the dedupe window.",
            registry=r,
        )
        self.rejected_total = Counter(
            "router_events_rejected",
            "POST /events requests refused, by reason; nothing of a refused request is stored.",
            ["reason"],
            registry=r,
        )
        # Children bound once, so refusing a request allocates nothing.
        self.rejected = {
            status: self.rejected_total.labels(reason) for status, reason in REJECT_REASONS.items()
        }
        # Also answered 503, with Retry-After: neither is the sender's fault.
        self.store_failed = self.rejected_total.labels("store_failed")
        self.keys_unavailable = self.rejected_total.labels("keys_unavailable")
        # -- sources (plugins that pull events: SQS, ...) --------------------------
        self.source_messages = Counter(
            "router_source_messages",
            "Messages a source handled, by source and outcome: received, invalid (not an"
            " event; left to the queue's redrive policy), deleted, delete_failed.",
            ["source", "outcome"],
            registry=r,
        )
        self.source_events = Counter(
            "router_source_events",
            "Events a source submitted, by source and outcome: accepted, duplicate.",
            ["source", "outcome"],
            registry=r,
        )
        self.source_running = Gauge(
            "router_source_running",
            "1 while a source is running without errors, 0 while it waits or fails.",
            ["source"],
            registry=r,
        )
        # -- routing ---------------------------------------------------------------
        self.rule_matches = Counter(
            "router_rule_matches", "Events a rule fired for, by rule.", ["rule"], registry=r
        )
        self.throttled = Counter(
            "router_throttled",
            "Deliveries suppressed by a rule's throttle, by rule.",
            ["rule"],
            registry=r,
        )
        self.silenced = Counter(
            "router_silenced",
            "Deliveries recorded as silenced instead of sent, by silence id.",
            ["silence"],
            registry=r,
        )
        self.muted = Counter(
            "router_muted",
            "Deliveries in a quiet-hours window, by rule and what became of them (held, dropped).",
            ["rule", "outcome"],
            registry=r,
        )
        self.released = Counter(
            "router_held_released",
            "Held deliveries released when their quiet-hours window ended.",
            registry=r,
        )
        self.digested = Counter(
            "router_digested_events",
            "Events that joined a digest group instead of notifying at once, by rule.",
            ["rule"],
            registry=r,
        )
        self.digests_sent = Counter(
            "router_digests_sent", "Digest groups sent, by rule.", ["rule"], registry=r
        )
        self.render_errors = Counter(
            "router_render_errors",
            "Deliveries born dead because their message could not be rendered, by rule.",
            ["rule"],
            registry=r,
        )
        # -- delivery --------------------------------------------------------------
        self.attempts = Counter(
            "router_delivery_attempts",
            "Delivery attempts by channel and outcome: delivered, logged (log-only channel),"
            " retried (failed, will be tried again), dead (failed for good).",
            ["channel", "outcome"],
            registry=r,
        )
        self.completed = Counter(
            "router_deliveries_completed",
            "Deliveries that reached a final state, by channel and result:"
            " delivered_first_attempt, delivered_after_retry, logged, failed.",
            ["channel", "result"],
            registry=r,
        )
        self.latency = Histogram(
            "router_delivery_latency_seconds",
            "Seconds from the event being accepted to its delivery, by channel.",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.circuit_open = Gauge(
            "router_channel_circuit_open",
            "1 while a channel's circuit is open: its receiver failed again and again, its"
            " deliveries are held while one probe at a time checks it.",
            ["channel"],
            registry=r,
        )
        self.held = Counter(
            "router_deliveries_held",
            "Deliveries put back untried, their attempts unchanged, because their"
            " channel's circuit was open, by channel.",
            ["channel"],
            registry=r,
        )
        self.plugin_errors = Counter(
            "router_plugin_errors",
            "Unexpected exceptions raised by plugins, by plugin and hook"
            " (send, delivery_finished).",
            ["plugin", "hook"],
            registry=r,
        )
        # -- the Canvas REST API (enrich: in rules) -----------------------------------
        self.canvas_requests = Counter(
            "router_canvas_api_requests",
            "Requests made to the Canvas API, by outcome: ok, not_found (404: the"
            " variable is none), throttled (403 Rate Limit Exceeded), error (down, 5xx,"
            " timeout, refused token).",
            ["outcome"],
            registry=r,
        )
        self.canvas_cache_hits = Counter(
            "router_canvas_api_cache_hits",
            "Canvas API answers reused from the store's cache instead of requested.",
            registry=r,
        )
        self.canvas_rate_limit_remaining = Gauge(
            "router_canvas_api_rate_limit_remaining",
            "X-Rate-Limit-Remaining of the latest Canvas API answer (-1 until one says).",
            registry=r,
        )
        self.canvas_rate_limit_remaining.set(-1)
        self.canvas_events_waiting = Counter(
            "router_canvas_api_events_held",
            "Times an event's routing was put off because the Canvas API was unavailable.",
            registry=r,
        )
        self.canvas_routed_without = Counter(
            "router_canvas_api_routed_without_data",
            "Events routed without some Canvas data after canvas.max_wait.",
            registry=r,
        )
        # -- store (refreshed at scrape time) ---------------------------------------
        self.events_pending = Gauge(
            "router_events_pending", "Accepted events not yet routed.", registry=r
        )
        self.deliveries_pending = Gauge(
            "router_deliveries_pending",
            "Deliveries waiting for an attempt (new or retrying).",
            registry=r,
        )
        self.oldest_pending_age = Gauge(
            "router_oldest_pending_delivery_age_seconds",
            "Age of the oldest pending delivery (0 when none is pending).",
            registry=r,
        )
        self.dead_letters = Gauge(
            "router_dead_letters", "Deliveries in the dead-letter queue.", registry=r
        )
        self.store_size = Gauge(
            "router_store_size_bytes", "Size of the store on disk (SQLite file + WAL).", registry=r
        )
        self.pruned = Counter(
            "router_retention_pruned",
            "Rows removed by retention, by kind (events, deliveries, digests, throttles).",
            ["kind"],
            registry=r,
        )
        r.register(_ReloadCollector(lambda: self.reload_status))
        self._delivery_children: dict[tuple[str, str, bool], tuple[Any, Any, Any]] = {}

    # -- recording helpers (cheap: one dict lookup or labels() call and an increment) --

    def delivery(self, channel: str, status: str, attempt: int, latency: float | None) -> None:
        """Count one attempt's outcome (``delivered``, ``logged``, ``retry``, ``dead``)."""
        key = (channel, status, attempt == 1)
        children = self._delivery_children.get(key)
        if children is None:
            children = self._delivery_children[key] = self._children_of(*key)
        attempts, completed, latency_of = children
        attempts.inc()
        if completed is not None:
            completed.inc()
        if latency_of is not None and latency is not None:
            latency_of.observe(max(0.0, latency))

    def _children_of(self, channel: str, status: str, first: bool) -> tuple[Any, Any, Any]:
        # labels() validates and locks on every call: the dispatcher looks its three
        # children up once per (channel, outcome) instead of once per delivery.
        if status == "retry":
            return self.attempts.labels(channel, "retried"), None, None
        result = {
            "delivered": "delivered_first_attempt" if first else "delivered_after_retry",
            "dead": "failed",
        }.get(status, "logged")
        latency = self.latency.labels(channel) if status == "delivered" else None
        attempts = self.attempts.labels(channel, status)
        return attempts, self.completed.labels(channel, result), latency

    def circuits(self, open_by_channel: dict[str, bool]) -> None:
        """Set the circuit gauge of every channel loaded now (and of no other)."""
        self.circuit_open.clear()
        for channel, is_open in open_by_channel.items():
            self.circuit_open.labels(channel).set(1 if is_open else 0)

    async def refresh(self, store: Store, *, now: float) -> dict[str, float]:
        """Read the queue gauges and the store size from the store; return them."""
        counts = await store.counts()
        oldest = await store.oldest_pending()
        state = {
            "events_pending": counts.events_pending,
            "deliveries_pending": counts.deliveries_pending,
            "dead": counts.dead,
            "oldest_pending_age": 0.0 if oldest is None else max(0.0, now - oldest),
            "store_size": await store.size_bytes(),
        }
        self.events_pending.set(state["events_pending"])
        self.deliveries_pending.set(state["deliveries_pending"])
        self.dead_letters.set(state["dead"])
        self.oldest_pending_age.set(state["oldest_pending_age"])
        self.store_size.set(state["store_size"])
        return state

    def totals(self) -> dict[str, float]:
        """Every sample summed over its labels, by sample name (for the status page)."""
        sums: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return sums

    def by_label(self, sample_name: str, *labels: str) -> dict[tuple[str, ...], float]:
        """The values of one sample name keyed by the given labels (summing the rest)."""
        found: dict[tuple[str, ...], float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == sample_name:
                    key = tuple(sample.labels.get(label, "") for label in labels)
                    found[key] = found.get(key, 0.0) + sample.value
        return found

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
