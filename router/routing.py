"""Routing: turn each accepted event into delivery jobs, one per (rule, channel).

The worker leases unrouted events from the store, evaluates the rules, renders each
message, and records all of an event's jobs, digest memberships, its entity snapshot
and its "routed" mark in one transaction, so a crash at any point neither loses nor
doubles a job. It also flushes digest groups whose wait is over.
"""

import asyncio
import dataclasses
import html
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from router.caliper import is_caliper_event
from router.canvas_api import CanvasClient, Enrichment
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
from router.rules import ChannelDef, Rule, RuleSet, load_rules
from router.sandbox import bounded
from router.settings import Settings
from router.silences import SilenceMatcher, compile_matchers
from router.snapshots import entity_key, merge_snapshot, previous_event
from router.store import (
    DigestEntry,
    DueDigest,
    InboxEvent,
    NewDelivery,
    RoutedEvent,
    Silence,
    Store,
)
from router.templates import RenderError, Templates, template_context

log = logging.getLogger(__name__)

BATCH = 64  # small enough not to hold up ingest requests for long
LEASE_SECONDS = 60.0
DIGEST_BATCH = 32
DIGEST_POLL = 1.0  # digests wait minutes: looking for due groups once a second is plenty
CANVAS_BACKOFF = 1.0  # first wait of an event whose Canvas data is unavailable; doubles
CANVAS_BACKOFF_CAP = 300.0
#: Silences are read from the store this often, so one made by ``router silence add``
#: in another process (or by another replica) applies within about this long.
SILENCE_POLL = 1.0

#: The active silences as routing uses them: each stored silence with its matchers.
ActiveSilences = Sequence[tuple[Silence, SilenceMatcher]]


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
        canvas: Enrichment | None = None,
        silences: ActiveSilences = (),
    ) -> Decision:
        """Route one event (``payload`` is its parsed JSON) given its entity's snapshot
        and what ``enrich:`` fetched for it from Canvas.

        A delivery that an active silence selects is recorded ``silenced``; one whose
        rule or channel is in a quiet-hours window is ``held`` until the window ends
        (``during_mute: hold``) or ``muted`` (``drop``). A digest rule in a holding
        window collects its events until the window ends."""
        previous = previous_event(payload, snapshot)
        canvas = canvas or Enrichment()
        values = canvas.values
        ctx = MatchContext({**payload, **values} if values else payload, previous, values)
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
        variables.update(values)
        variables["canvas_missing"] = canvas.missing
        # A Caliper event looks for its own templates (course_created.caliper.j2) before
        # the defaults: the Canvas form's templates read fields it does not have.
        template_key = f"{event.name}.caliper" if is_caliper_event(payload) else event.name
        deliveries: list[NewDelivery] = []
        digests: list[DigestEntry] = []
        rendered: dict[tuple[str, str], dict[str, Any]] = {}
        for rule in fired:
            rule_quiet = rule.mutes.until(now) if rule.mutes else None
            if rule.digest is not None and not (
                rule_quiet is not None and rule.spec.during_mute == "drop"
            ):
                group = {path: _plain(lookup(payload, path)) for path in rule.digest.group_by}
                due = now + rule.digest.wait
                digests.append(
                    DigestEntry(
                        rule.name,
                        orjson.dumps(group, option=orjson.OPT_SORT_KEYS).decode(),
                        due if rule_quiet is None else max(due, rule_quiet),
                        rule.digest.max,
                    )
                )
                continue
            throttle = self._throttle(rule, variables, now)
            people = self._recipients(event, rule, canvas)
            for channel in rule.notify:
                if rule.name in failed:  # its if: went over a limit: born dead
                    key, error = delivery_key(event.id, rule.name, channel), failed[rule.name]
                    jobs = [NewDelivery(key, rule.name, channel, UNRENDERABLE, error, throttle)]
                elif people is None:
                    jobs = [
                        self._job(event, rule, channel, variables, throttle, template_key, canvas)
                    ]
                else:
                    jobs = [
                        self._job(
                            event, rule, channel, variables, throttle, template_key, canvas, person
                        )
                        for person in people
                    ]
                    if not people and rule.spec.recipients in canvas.missing:
                        # Nobody to send to because Canvas did not say who: a dead
                        # letter that says so, not silence.
                        reason = canvas.missing[rule.spec.recipients]
                        error = f"no recipients: {rule.spec.recipients} unknown ({reason})"
                        key = delivery_key(event.id, rule.name, channel, "unknown")
                        jobs = [NewDelivery(key, rule.name, channel, UNRENDERABLE, error)]
                jobs = [self._quieted(j, rule, event.name, ctx, silences, now) for j in jobs]
                deliveries.extend(jobs)
                if explain:
                    for job in jobs:
                        rendered[(rule.name, channel)] = (
                            orjson.loads(job.message)
                            | ({"error": job.error} if job.error else {})
                            | _quiet_note(job)
                        )
        key = entity_key(payload)
        new_snapshot = None
        if key is not None:
            merged = merge_snapshot(snapshot, payload)
            new_snapshot = (key, orjson.dumps(merged))
        return Decision(
            RoutedEvent(event, deliveries, digests, new_snapshot), fired, skipped, rendered
        )

    def _quieted(
        self,
        job: NewDelivery,
        rule: Rule,
        event_name: str,
        ctx: MatchContext,
        silences: ActiveSilences,
        now: float,
    ) -> NewDelivery:
        """The job as silences and quiet hours leave it: silenced (the first active
        silence that selects it), muted or held, or unchanged. A job born dead stays
        dead; a silenced or muted one takes no throttle window (it is not sent)."""
        if job.error is not None:
            return job
        for silence, matcher in silences:
            if silence.active(now) and matcher.matches(rule.name, job.channel, event_name, ctx):
                return replace(job, state="silenced", silence=silence.id, throttle=None)
        quiet = quiet_period(rule, self.rules.channels.get(job.channel), now)
        if quiet is None:
            return job
        until, during = quiet
        if during == "drop":
            return replace(job, state="muted", throttle=None)
        return replace(job, state="held", release_at=until)

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

    @staticmethod
    def _recipients(
        event: InboxEvent, rule: Rule, canvas: Enrichment
    ) -> list[dict[str, Any]] | None:
        """The people a rule with ``recipients:`` fans out to (None: it has none)."""
        name = rule.spec.recipients
        if name is None:
            return None
        found = canvas.values.get(name)
        people = [found] if isinstance(found, dict) else list(found or [])
        people = [p for p in people if isinstance(p, dict) and p.get("id")]
        if not people and name not in canvas.missing:
            log.info(
                "no recipients: the list is empty",
                extra={"event_id": event.id, "rule": rule.name, "recipients": name},
            )
        return people

    def _job(
        self,
        event: InboxEvent,
        rule: Rule,
        channel: str,
        variables: dict[str, Any],
        throttle: tuple[str, float] | None,
        template_key: str,
        canvas: Enrichment | None = None,
        recipient: dict[str, Any] | None = None,
    ) -> NewDelivery:
        """One delivery; a message that cannot be rendered is born dead with its error,
        so it lands in the dead letters instead of vanishing."""
        person = None if recipient is None else str(recipient["id"])
        key = delivery_key(event.id, rule.name, channel, person)
        try:
            definition = self.rules.channels[channel]
            if not renders_message(definition):
                return NewDelivery(key, rule.name, channel, NOT_RENDERED, throttle=throttle)
            name = self.templates.resolve(rule.template, template_key, definition.type.name)
            local = {**variables, "rule": rule.name, "channel": channel}
            if recipient is not None:
                local["recipient"] = recipient
            message = self._render(name, local, rule, canvas, recipient)
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

    def _render(
        self,
        name: str,
        variables: dict[str, Any],
        rule: Rule | None = None,
        canvas: Enrichment | None = None,
        recipient: dict[str, Any] | None = None,
    ) -> bytes:
        rendered = self.templates.render(name, variables, self.rules.defaults.limits)
        if rule is None or canvas is None or not rule.enrich:
            return encode_message(rendered, recipient=recipient)
        # What the rule fetched is stored with the message (a list it fans out to is
        # stored as the one recipient, not copied into every person's delivery).
        used = {n: canvas.values.get(n) for n in rule.enrich if n != rule.spec.recipients}
        missing = {n: why for n, why in canvas.missing.items() if n in rule.enrich}
        if missing:
            rendered = _say_missing(rendered, missing)
            used["missing"] = missing
        return encode_message(rendered, canvas=used, recipient=recipient)

    def digest_jobs(
        self, digest: DueDigest, *, now: float | None = None, silences: ActiveSilences = ()
    ) -> list[NewDelivery]:
        """The deliveries of a due digest group: one message listing all its events,
        silenced, muted or held as its first event's deliveries would be at ``now``."""
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
                job = NewDelivery(key, rule.name, channel, message)
                if now is not None:
                    ctx = MatchContext(events[0], None)
                    job = self._quieted(job, rule, first.name, ctx, silences, now)
                jobs.append(job)
            except (RenderError, KeyError) as exc:
                jobs.append(NewDelivery(key, rule.name, channel, UNRENDERABLE, str(exc)))
        return jobs


def quiet_period(rule: Rule, channel: ChannelDef | None, now: float) -> tuple[float, str] | None:
    """Whether a delivery of ``rule`` to ``channel`` falls in quiet hours at ``now``:
    None, or when the quiet period ends and what happens meanwhile (``hold`` or
    ``drop``). With both the rule and the channel quiet, ``drop`` wins over ``hold``,
    and a hold lasts until both have ended."""
    found = []
    for owner in (rule, channel):
        mutes = owner.mutes if owner is not None else None
        until = mutes.until(now) if mutes is not None else None
        if mutes is not None and until is not None:
            found.append((until, mutes.during_mute))
    if not found:
        return None
    during = "drop" if any(mode == "drop" for _, mode in found) else "hold"
    return max(until for until, _ in found), during


def _quiet_note(job: NewDelivery) -> dict[str, Any]:
    """What ``router test`` says of a silenced, muted or held delivery."""
    if job.state == "silenced":
        return {"silenced": job.silence}
    if job.state == "muted":
        return {"muted": {"during_mute": "drop"}}
    if job.state == "held":
        return {"muted": {"during_mute": "hold", "until": job.release_at}}
    return {}


def build_router(settings: Settings, plugins: Plugins) -> Router:
    """Load templates and rules (raises ``ConfigErrors`` listing every problem)."""
    templates = Templates(settings.templates, plugins.filters)
    rules = load_rules(
        settings.rules,
        plugins.channel_types,
        templates=templates,
        max_attempts=settings.max_attempts,
        source_types=plugins.source_types,
    )
    return Router(rules, templates)


def _plain(value: Any) -> Any:
    return None if value is MISSING else value


def _say_missing(rendered: Any, missing: dict[str, str]) -> Any:
    """The message, saying which Canvas data it was sent without and why."""
    note = "Sent without Canvas data: " + "; ".join(f"{n} ({why})" for n, why in missing.items())
    blocks = dict(rendered.blocks)
    if "text" in blocks:
        blocks["text"] = f"{blocks['text']}\n\n{note}"
    if "html" in blocks:
        blocks["html"] = f"{blocks['html']}\n<p><em>{html.escape(note)}</em></p>"
    return dataclasses.replace(rendered, text=f"{rendered.text}\n\n{note}", blocks=blocks)


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
        self.canvas: CanvasClient | None = None  # made for the rules' canvas: section
        self._canvas_tries: dict[int, int] = {}  # event seq -> enrichments that failed
        self.silences: list[tuple[Silence, SilenceMatcher]] = []
        self._silences_checked = -SILENCE_POLL
        self._bad_silences: set[str] = set()  # logged once each

    async def close(self) -> None:
        """Close the Canvas API client (after the worker stopped)."""
        if self.canvas is not None:
            await self.canvas.close()
            self.canvas = None

    async def _canvas_client(self, router: Router) -> CanvasClient | None:
        """The client for the loaded rules' ``canvas:`` (a reload may change it)."""
        config = router.rules.canvas
        if self.canvas is not None and (config is None or self.canvas.config != config):
            await self.close()
        if config is not None and self.canvas is None:
            self.canvas = CanvasClient(config, self.store, self.metrics, clock=self.clock)
        return self.canvas

    async def _enrich(
        self, router: Router, events: list[InboxEvent], payloads: dict[int, Any]
    ) -> tuple[dict[int, Enrichment], set[int]]:
        """Fetch what the rules selecting each event enrich it with. An event whose data
        is unavailable (API down, 5xx, throttled) is held and tried again with backoff,
        until ``canvas.max_wait`` after its acceptance; then it is routed without."""
        client = await self._canvas_client(router)
        wanted = {e.seq: router.rules.enrich_names(e.name) for e in events}
        todo = [e for e in events if wanted[e.seq]]
        if client is None or not todo:
            return {}, set()
        results = await asyncio.gather(
            *(client.enrich(wanted[e.seq], payloads[e.seq]) for e in todo)
        )
        enriched: dict[int, Enrichment] = {}
        held: set[int] = set()
        now = self.clock()
        for event, result in zip(todo, results, strict=True):
            failure = result.unavailable
            deadline = event.received_at + client.config.max_wait
            if failure is not None and now < deadline:
                tries = self._canvas_tries[event.seq] = self._canvas_tries.get(event.seq, 0) + 1
                wait = min(CANVAS_BACKOFF_CAP, CANVAS_BACKOFF * 2 ** (tries - 1))
                wait = min(max(wait, failure.retry_after or 0.0), deadline - now)
                await self.store.hold_event(event.seq, until=now + max(wait, 0.05))
                held.add(event.seq)
                self.metrics.canvas_events_waiting.inc()
                log.warning(
                    "routing waits for the Canvas API",
                    extra={
                        "event_id": event.id,
                        "error": str(failure),
                        "retry_in": round(wait, 3),
                        "attempt": tries,
                    },
                )
                continue
            self._canvas_tries.pop(event.seq, None)
            if failure is not None:
                self.metrics.canvas_routed_without.inc()
                log.warning(
                    "routed without Canvas data after canvas.max_wait",
                    extra={"event_id": event.id, "missing": sorted(result.missing)},
                )
            enriched[event.seq] = result
        return enriched, held

    def wake(self) -> None:
        """Called after events are accepted."""
        self._wake.set()

    async def run(self) -> None:
        """Route until cancelled."""
        while True:
            self._wake.clear()
            flushed = 0
            try:
                if time.monotonic() - self._silences_checked >= SILENCE_POLL:
                    await self.refresh_silences()
                routed = await self.route_once()
                # Not on every round (at a trickle of events, one more store round trip
                # per event): when events joined a group (it may be full), or once a second.
                joined, self._joined_digest = self._joined_digest, False
                if joined or time.monotonic() - self._digests_checked >= DIGEST_POLL:
                    flushed = await self.flush_digests()
                    if flushed < DIGEST_BATCH:
                        self._digests_checked = time.monotonic()
                        flushed += await self.release_held()
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

    async def refresh_silences(self) -> None:
        """Read the active silences from the store (made by the admin API, the CLI in
        another process, or another replica)."""
        self._silences_checked = time.monotonic()
        try:
            stored = await self.store.list_silences(active_at=self.clock())
        except Exception:
            # Routing goes on with the silences it knew; the next look tries again.
            log.exception("reading silences failed; keeping the last ones read")
            return
        found = []
        for silence in stored:
            try:
                found.append((silence, compile_matchers(silence.matchers)))
            except ValueError as exc:
                if silence.id not in self._bad_silences:
                    self._bad_silences.add(silence.id)
                    log.error("silence ignored", extra={"silence": silence.id, "error": str(exc)})
        self.silences = found

    async def release_held(self) -> int:
        """Make the held deliveries whose quiet hours ended pending; return how many."""
        released = await self.store.release_held(now=self.clock())
        if released:
            self.metrics.released.inc(released)
            log.info("held deliveries released", extra={"deliveries": released})
        return released

    def _count_quieted(self, jobs: list[NewDelivery]) -> None:
        for job in jobs:
            if job.state == "silenced" and job.silence is not None:
                self.metrics.silenced.labels(job.silence).inc()
            elif job.state in ("muted", "held"):
                outcome = "dropped" if job.state == "muted" else "held"
                self.metrics.muted.labels(job.rule, outcome).inc()

    async def route_once(self) -> int:
        """Route one batch of pending events; return how many were routed."""
        started = time.perf_counter()
        events = await self.store.claim_events(BATCH, lease=LEASE_SECONDS, now=self.clock())
        if not events:
            return 0
        router = self.router()
        payloads = {e.seq: orjson.loads(e.payload) for e in events}
        enriched, held = await self._enrich(router, events, payloads)
        events = [e for e in events if e.seq not in held]
        if not events:
            return 0
        keys = {seq: entity_key(payload) for seq, payload in payloads.items()}
        stored = await self.store.load_snapshots([k for k in keys.values() if k])
        snapshots: dict[str, dict[str, Any] | None] = {
            k: orjson.loads(v) for k, v in stored.items()
        }
        # Rules and templates run in a worker thread: however long a render takes (up
        # to its render_timeout), the event loop keeps answering requests meanwhile.
        routed = await asyncio.to_thread(
            self._decide, router, events, payloads, keys, snapshots, enriched
        )
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
        enriched: dict[int, Enrichment],
    ) -> list[RoutedEvent]:
        routed = []
        now = self.clock()
        for event in events:
            key = keys[event.seq]
            snapshot = snapshots.get(key) if key else None
            decision = router.decide(
                event,
                payloads[event.seq],
                snapshot,
                now=now,
                silences=self.silences,
                canvas=enriched.get(event.seq),
            )
            self._count_quieted(decision.routed.deliveries)
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
            jobs = await asyncio.to_thread(
                router.digest_jobs, digest, now=self.clock(), silences=self.silences
            )
            await self.store.record_digest(digest.id, jobs, now=self.clock())
            self._count_quieted(jobs)
            self.metrics.digests_sent.labels(digest.rule).inc()
            self._born_dead(digest.events[0].id if digest.events else "", jobs)
            log.info(
                "digest sent",
                extra={"rule": digest.rule, "events": len(digest.events), "deliveries": len(jobs)},
            )
        return len(due)
