"""Routing: turn each accepted event into delivery jobs, one per (rule, channel).

The worker leases unrouted events from the store, matches them against the rules,
renders each message, and records all of an event's jobs and its "routed" mark in
one transaction, so a crash at any point neither loses nor doubles a job.
"""

import asyncio
import logging
import time
from collections.abc import Callable

import orjson

from router.rules import RuleSet
from router.store import InboxEvent, NewDelivery, Store
from router.templates import RenderError, Templates, template_context

log = logging.getLogger(__name__)

BATCH = 256
LEASE_SECONDS = 60.0


def delivery_key(event_id: str, rule: str, channel: str) -> str:
    """The idempotency key of a delivery: stable across retries, replays and restarts."""
    return f"{event_id}:{rule}:{channel}"


class Router:
    """Matches events to rules and renders their messages (no I/O: usable by ``router test``)."""

    def __init__(self, rules: RuleSet, templates: Templates) -> None:
        self.rules = rules
        self.templates = templates

    def route(self, event: InboxEvent) -> list[NewDelivery]:
        """The delivery jobs for one event; a job whose message cannot be rendered is
        returned with its error so it lands in the dead letters instead of vanishing."""
        payload = orjson.loads(event.payload)
        jobs = []
        for rule in self.rules.match(event.name):
            for channel in rule.notify:
                key = delivery_key(event.id, rule.name, channel)
                message, error = b"{}", None
                try:
                    ctype = self.rules.channels[channel].type.name
                    name = self.templates.resolve(rule.template, event.name, ctype)
                    context = template_context(
                        payload, event_id=event.id, rule=rule.name, channel=channel
                    )
                    rendered = self.templates.render(name, context)
                    message = orjson.dumps(
                        {
                            "template": rendered.template,
                            "title": rendered.title,
                            "text": rendered.text,
                            "blocks": rendered.blocks,
                        }
                    )
                except RenderError as exc:
                    error = str(exc)
                except Exception as exc:
                    log.exception("routing failed", extra={"event_id": event.id, "rule": rule.name})
                    error = f"routing failed: {type(exc).__name__}: {exc}"
                jobs.append(NewDelivery(key, rule.name, channel, message, error))
        return jobs


class RoutingWorker:
    """Background task: route accepted events as soon as they are stored."""

    def __init__(
        self,
        store: Store,
        router: Callable[[], Router],
        on_routed: Callable[[], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.router = router
        self.on_routed = on_routed
        self.clock = clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Called after events are accepted."""
        self._wake.set()

    async def run(self) -> None:
        """Route until cancelled."""
        while True:
            self._wake.clear()
            try:
                routed = await self.route_once()
            except Exception:
                log.exception("routing batch failed; retrying in 1s")
                await asyncio.sleep(1.0)
                continue
            if routed:
                self.on_routed()
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def route_once(self) -> int:
        """Route one batch of pending events; return how many were routed."""
        events = await self.store.claim_events(BATCH, lease=LEASE_SECONDS, now=self.clock())
        if not events:
            return 0
        router = self.router()
        routed = [(event, router.route(event)) for event in events]
        await self.store.record_routing(routed, now=self.clock())
        for event, jobs in routed:
            log.debug(
                "event routed",
                extra={"event_id": event.id, "event_name": event.name, "deliveries": len(jobs)},
            )
        return len(events)
