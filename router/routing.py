"""Routing: turn each accepted event into delivery jobs, one per (rule, channel).

The worker leases unrouted events from the store, evaluates the rules, renders each
message, and records all of an event's jobs, digest memberships, its entity snapshot
and its "routed" mark in one transaction, so a crash at any point neither loses nor
doubles a job. It also flushes digest groups whose wait is over.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.channels import DeliveryOutcome
from router.matching import MISSING, MatchContext, lookup
from router.metrics import Metrics
from router.outbox import (
    NOT_RENDERED,
    UNRENDERABLE,
    Outcomes,
    PluginRaised,
    delivery_key,
    digest_key,
    encode_message,
    renders_message,
)
from router.pacing import IngestPressure
from router.plugins import Plugins
from router.rules import Rule, RuleSet, load_rules
from router.sandbox import bounded
from router.settings import Settings
from router.snapshots import entity_key, merge_snapshot, previous_event
from router.store import DigestEntry, DueDigest, InboxEvent, NewDelivery, RoutedEvent, Store
from router.templates import RenderError, Templates, template_context

log = logging.getLogger(__name__)

BATCH = 64  # small enough not to hold up ingest requests for long
LEASE_SECONDS = 60.0
DIGEST_BATCH = 32
DIGEST_POLL = 1.0  # digests wait minutes: looking for due groups once a second is plenty


@dataclass
class Decision:
    """What routing decided for one event, with the reasons (for ``router test``)."""

    routed: RoutedEvent
    fired: list[Rule]
    skipped: dict[str, str] = field(default_factory=dict)
    rendered: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


class Router:
    """Evaluates rules and renders messages; no I/O, so ``router test`` uses it too."""

    def __init__(self, rules: RuleSet, templates: Templates) -> None:
        self.rules = rules
        self.templates = templates

    def decide(
        self,
        event: InboxEvent,
        payload: dict[str, Any],
        snapshot: dict[str, Any] | None,
        *,
        now: float,
        explain: bool = False,
    ) -> Decision:
        """Route one event (``payload`` is its parsed JSON) given its entity's snapshot."""
        previous = previous_event(payload, snapshot)
        ctx = MatchContext(payload, previous)
        failed: dict[str, str] = {}  # rules whose if: went over a limit
        fired = self.rules.evaluate(event.name, ctx, failed)
        skipped = {}
        if explain:
            selecting = self.rules.selecting(event.name)
            for rule in self.rules.rules:
                if rule in fired:
                    continue
                if not rule.spec.enabled:
                    skipped[rule.name] = "enabled: false"
                elif rule not in selecting:
                    skipped[rule.name] = f"events {rule.spec.events} do not select {event.name!r}"
                else:
                    reason = rule.explain(ctx)
                    skipped[rule.name] = reason or "an earlier rule has continue: false"
        variables = template_context(
            payload,
            event_id=event.id,
            rule="",
            channel="",
            previous=None if previous is None else previous.get("body"),
            default_time_zone=self.rules.defaults.time_zone,
            display_time_zone=self.rules.defaults.display_time_zone,
        )
        deliveries: list[NewDelivery] = []
        digests: list[DigestEntry] = []
        rendered: dict[tuple[str, str], dict[str, Any]] = {}
        for rule in fired:
            if rule.digest is not None:
                group = {path: _plain(lookup(payload, path)) for path in rule.digest.group_by}
                digests.append(
                    DigestEntry(
                        rule.name,
                        orjson.dumps(group, option=orjson.OPT_SORT_KEYS).decode(),
                        now + rule.digest.wait,
                        rule.digest.max,
                    )
                )
                continue
            throttle = self._throttle(rule, variables, now)
            for channel in rule.notify:
                if rule.name in failed:  # its if: went over a limit: born dead
                    key, error = delivery_key(event.id, rule.name, channel), failed[rule.name]
                    job = NewDelivery(key, rule.name, channel, UNRENDERABLE, error, throttle)
                else:
                    job = self._job(event, rule, channel, variables, throttle)
                deliveries.append(job)
                if explain:
                    rendered[(rule.name, channel)] = orjson.loads(job.message) | (
                        {"error": job.error} if job.error else {}
                    )
        key = entity_key(payload)
        new_snapshot = None
        if key is not None:
            merged = merge_snapshot(snapshot, payload)
            new_snapshot = (key, orjson.dumps(merged))
        return Decision(
            RoutedEvent(event, deliveries, digests, new_snapshot), fired, skipped, rendered
        )

    def _throttle(
        self, rule: Rule, variables: dict[str, Any], now: float
    ) -> tuple[str, float] | None:
        if rule.throttle is None:
            return None
        key = ""
        if rule.throttle.key:
            try:
                with bounded(self.rules.defaults.limits):
                    key = self.templates.env.from_string(rule.throttle.key).render(variables)
            except Exception as exc:
                log.warning(
                    "throttle key failed to render", extra={"rule": rule.name, "error": str(exc)}
                )
                key = "(unrenderable key)"
        return (f"{rule.name}:{key}", now + rule.throttle.per)

    def _job(
        self,
        event: InboxEvent,
        rule: Rule,
        channel: str,
        variables: dict[str, Any],
        throttle: tuple[str, float] | None,
    ) -> NewDelivery:
        """One delivery; a message that cannot be rendered is born dead with its error,
        so it lands in the dead letters instead of vanishing."""
        key = delivery_key(event.id, rule.name, channel)
        try:
            definition = self.rules.channels[channel]
            if not renders_message(definition):
                return NewDelivery(key, rule.name, channel, NOT_RENDERED, throttle=throttle)
            name = self.templates.resolve(rule.template, event.name, definition.type.name)
            message = self._render(name, {**variables, "rule": rule.name, "channel": channel})
            return NewDelivery(key, rule.name, channel, message, throttle=throttle)
        except RenderError as exc:
            return NewDelivery(key, rule.name, channel, UNRENDERABLE, str(exc), throttle)
        except PluginRaised as exc:
            log.exception(
                "channel plugin raised",
                extra={"plugin": exc.plugin, "channel": channel, "event_id": event.id},
            )
            return NewDelivery(key, rule.name, channel, UNRENDERABLE, str(exc), throttle)
        except Exception as exc:
            log.exception("routing failed", extra={"event_id": event.id, "rule": rule.name})
            error = f"routing failed: {type(exc).__name__}: {exc}"
            return NewDelivery(key, rule.name, channel, UNRENDERABLE, error, throttle)

    def _render(self, name: str, variables: dict[str, Any]) -> bytes:
        limits = self.rules.defaults.limits
        return encode_message(self.templates.render(name, variables, limits))

    def digest_jobs(self, digest: DueDigest) -> list[NewDelivery]:
        """The deliveries of a due digest group: one message listing all its events."""
        rule = self.rules.rule_named(digest.rule)
        if rule is None or not digest.events:
            log.warning("digest dropped: its rule is gone", extra={"rule": digest.rule})
            return []
        events = [orjson.loads(e.payload) for e in digest.events]
        first = digest.events[0]
        variables = template_context(
            events[0],
            event_id=first.id,
            rule=rule.name,
            channel="",
            previous=None,
            default_time_zone=self.rules.defaults.time_zone,
            display_time_zone=self.rules.defaults.display_time_zone,
        )
        variables.update(events=events, count=len(events), group=orjson.loads(digest.group))
        jobs = []
        for channel in rule.notify:
            key = digest_key(digest.id, rule.name, channel)
            try:
                ctype = self.rules.channels[channel].type.name
                name = self.templates.resolve_digest(rule.template, ctype)
                message = self._render(name, {**variables, "channel": channel})
                jobs.append(NewDelivery(key, rule.name, channel, message))
            except (RenderError, KeyError) as exc:
                jobs.append(NewDelivery(key, rule.name, channel, UNRENDERABLE, str(exc)))
        return jobs


def build_router(settings: Settings, plugins: Plugins) -> Router:
    """Load templates and rules (raises ``ConfigErrors`` listing every problem)."""
    templates = Templates(settings.templates, plugins.filters)
    rules = load_rules(
        settings.rules,
        plugins.channel_types,
        templates=templates,
        max_attempts=settings.max_attempts,
    )
    return Router(rules, templates)


def _plain(value: Any) -> Any:
    return None if value is MISSING else value


class RoutingWorker:
    """Background task: route accepted events as soon as they are stored."""

    def __init__(
        self,
        store: Store,
        router: Callable[[], Router],
        on_routed: Callable[[], None],
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        outcomes: Outcomes | None = None,
        pressure: IngestPressure | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.on_routed = on_routed
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.outcomes = outcomes or Outcomes(self.metrics)
        self.pressure = pressure or IngestPressure(share=1.0)
        self._wake = asyncio.Event()
        self._digests_checked = -DIGEST_POLL  # time.monotonic() of the last full look
        self._joined_digest = False

    def wake(self) -> None:
        """Called after events are accepted."""
        self._wake.set()

    async def run(self) -> None:
        """Route until cancelled."""
        while True:
            self._wake.clear()
            flushed = 0
            try:
                routed = await self.route_once()
                # Not on every round (at a trickle of events, one more store round trip
                # per event): when events joined a group (it may be full), or once a second.
                joined, self._joined_digest = self._joined_digest, False
                if joined or time.monotonic() - self._digests_checked >= DIGEST_POLL:
                    flushed = await self.flush_digests()
                    if flushed < DIGEST_BATCH:
                        self._digests_checked = time.monotonic()
            except Exception:
                log.exception("routing batch failed; retrying in 1s")
                await asyncio.sleep(1.0)
                continue
            if routed or flushed:
                self.on_routed()
            if routed >= BATCH or flushed >= DIGEST_BATCH:
                continue  # a full batch: more may be waiting
            # Else wait to be woken: events accepted meanwhile have set the wake already.
            try:
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def route_once(self) -> int:
        """Route one batch of pending events; return how many were routed."""
        started = time.perf_counter()
        events = await self.store.claim_events(BATCH, lease=LEASE_SECONDS, now=self.clock())
        if not events:
            return 0
        router = self.router()
        payloads = {e.seq: orjson.loads(e.payload) for e in events}
        keys = {seq: entity_key(payload) for seq, payload in payloads.items()}
        stored = await self.store.load_snapshots([k for k in keys.values() if k])
        snapshots: dict[str, dict[str, Any] | None] = {
            k: orjson.loads(v) for k, v in stored.items()
        }
        # Rules and templates run in a worker thread: however long a render takes (up
        # to its render_timeout), the event loop keeps answering requests meanwhile.
        routed = await asyncio.to_thread(self._decide, router, events, payloads, keys, snapshots)
        suppressed = await self.store.record_routing(routed, now=self.clock())
        worked = time.perf_counter() - started  # store round trips included: see pacing
        for rule in suppressed:
            self.metrics.throttled.labels(rule).inc()
            log.info("delivery throttled", extra={"rule": rule})
        throttled = set(suppressed)
        for item in routed:
            self._born_dead(item.event.id, item.deliveries, throttled)
        await self.pressure.give_way(worked)
        return len(events)

    def _decide(
        self,
        router: Router,
        events: list[InboxEvent],
        payloads: dict[int, dict[str, Any]],
        keys: dict[int, str | None],
        snapshots: dict[str, dict[str, Any] | None],
    ) -> list[RoutedEvent]:
        routed = []
        now = self.clock()
        for event in events:
            key = keys[event.seq]
            snapshot = snapshots.get(key) if key else None
            decision = router.decide(event, payloads[event.seq], snapshot, now=now)
            if decision.routed.snapshot is not None and key:
                snapshots[key] = orjson.loads(decision.routed.snapshot[1])
            routed.append(decision.routed)
            for rule in decision.fired:
                self.metrics.rule_matches.labels(rule.name).inc()
            for entry in decision.routed.digests:
                self.metrics.digested.labels(entry.rule).inc()
                self._joined_digest = True
            log.debug(
                "event routed",
                extra={
                    "event_id": event.id,
                    "event_name": event.name,
                    "rules": [r.name for r in decision.fired],
                },
            )
        return routed

    def _born_dead(
        self, event_id: str, jobs: list[NewDelivery], suppressed: Collection[str] = ()
    ) -> None:
        """Count the deliveries that were created dead (their message could not be made)
        and report their outcome: they never reach the dispatcher."""
        for job in jobs:
            if job.error is None:
                continue
            self.metrics.render_errors.labels(job.rule).inc()
            if job.throttle is not None and job.rule in suppressed:
                continue  # maybe throttled away: not necessarily a dead letter
            channel = self.router().rules.channels.get(job.channel)
            self.outcomes.report(
                DeliveryOutcome(
                    key=job.key,
                    event_id=event_id,
                    rule=job.rule,
                    channel=job.channel,
                    channel_type=channel.type.name if channel else "",
                    attempt=0,
                    status="dead",
                    error=job.error,
                )
            )

    async def flush_digests(self) -> int:
        """Send the digest groups that are due; return how many were sent."""
        due = await self.store.claim_due_digests(
            DIGEST_BATCH, lease=LEASE_SECONDS, now=self.clock()
        )
        router = self.router()
        for digest in due:
            jobs = await asyncio.to_thread(router.digest_jobs, digest)
            await self.store.record_digest(digest.id, jobs, now=self.clock())
            self.metrics.digests_sent.labels(digest.rule).inc()
            self._born_dead(digest.events[0].id if digest.events else "", jobs)
            log.info(
                "digest sent",
                extra={"rule": digest.rule, "events": len(digest.events), "deliveries": len(jobs)},
            )
        return len(due)
