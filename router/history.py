"""Rules tried on history: what a rules file would have sent for the events already in
the store (``router test rules.yaml --db ... --since 7d``, and the status page's
preview of the loaded rules over the last day).

Nothing is sent and nothing is written: the events are read, routed in memory in the
order they arrived, each at the time it was received, and the outcome counted per rule
and channel. The store's state is replayed in memory as it was then: entity snapshots
("what changed") are built from the stored events in order, starting with the events
older than the window; throttle windows and digest groups are simulated with the same
policies the stores apply. Silences are not applied (they are operations, not rules);
quiet hours are: a delivery a window drops is counted apart, a held one as sent.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

import router.store.policies as policies
from router.routing import Router
from router.snapshots import entity_key
from router.store import InboxEvent, Store

__all__ = ["MAX_EVENTS", "Preview", "diff", "preview", "read_history"]

#: The most events one preview reads (older ones are skipped first).
MAX_EVENTS = 100_000


@dataclass
class Preview:
    """What a rules file would have sent for the events of a window."""

    since: float
    events: int = 0  # events in the window that were routed
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, channel)
    throttled: Counter[tuple[str, str]] = field(default_factory=Counter)
    muted: Counter[tuple[str, str]] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # render errors
    digested: Counter[str] = field(default_factory=Counter)  # events joining digests
    messages: list[dict[str, Any]] = field(default_factory=list)  # the first --show N
    truncated: bool = False  # the store held more events than were read

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``: counts as lists of ``{rule, channel, count}``."""

        def rows(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
            return [
                {"rule": rule, "channel": channel, "count": count}
                for (rule, channel), count in sorted(counter.items())
            ]

        return {
            "since": self.since,
            "events": self.events,
            "sent": rows(self.sent),
            "throttled": rows(self.throttled),
            "muted": rows(self.muted),
            "errors": rows(self.errors),
            "digested": dict(sorted(self.digested.items())),
            "messages": self.messages,
            "truncated": self.truncated,
        }


async def read_history(store: Store, *, since: float) -> tuple[list[InboxEvent], bool]:
    """The stored events (oldest first) a preview from ``since`` needs: the older ones
    too, for the snapshots. Returns them and whether the store held more."""
    events = await store.stored_events(since=0.0, limit=MAX_EVENTS + 1)
    truncated = len(events) > MAX_EVENTS
    return events[-MAX_EVENTS:], truncated


@dataclass
class _Group:
    """A simulated open digest group."""

    size: int
    due_at: float


def preview(router: Router, events: list[InboxEvent], *, since: float, show: int = 0) -> Preview:
    """Route ``events`` (oldest first) with ``router``; count what the ones received at
    or after ``since`` would have sent. ``show``: keep the first N rendered messages."""
    result = Preview(since=since)
    snapshots: dict[str, Any] = {}
    windows: dict[str, float | None] = {}
    groups: dict[tuple[str, str], _Group] = {}
    for event in events:
        try:
            payload = orjson.loads(event.payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(payload, dict):
            continue
        key = entity_key(payload)
        now = event.received_at
        decision = router.decide(
            event, payload, snapshots.get(key) if key else None, now=now, explain=show > 0
        )
        if decision.routed.snapshot is not None and key:
            snapshots[key] = orjson.loads(decision.routed.snapshot[1])
        if now < since:
            continue  # older: only its snapshot counts
        result.events += 1
        batch = [(event.seq, decision.routed.deliveries)]
        for name in policies.throttle_keys(batch):
            windows.setdefault(name, None)
        verdicts = policies.decide_throttles(batch, windows, now)
        windows.update(verdicts.windows)
        kept = {id(delivery) for _, delivery in verdicts.kept}
        for delivery in decision.routed.deliveries:
            pair = (delivery.rule, delivery.channel)
            if id(delivery) not in kept:
                result.throttled[pair] += 1
            elif delivery.error is not None:
                result.errors[pair] += 1
            elif delivery.state == "muted":
                result.muted[pair] += 1
            else:
                result.sent[pair] += 1
                if len(result.messages) < show:
                    message = decision.rendered.get(pair, {})
                    result.messages.append(
                        {
                            "event_id": event.id,
                            "event_name": event.name,
                            "received_at": now,
                            "rule": delivery.rule,
                            "channel": delivery.channel,
                            **message,
                        }
                    )
        for entry in decision.routed.digests:
            result.digested[entry.rule] += 1
            group = groups.get((entry.rule, entry.group))
            if group is None or group.due_at <= now:
                # A new group: one message per channel when it is sent.
                group = groups[(entry.rule, entry.group)] = _Group(0, entry.due_at)
                rule = router.rules.rule_named(entry.rule)
                for channel in rule.notify if rule else ():
                    result.sent[(entry.rule, channel)] += 1
            group.size += 1
            if group.size >= entry.max:
                group.due_at = now  # full: sent now; the next event opens another
    return result


def diff(new: Preview, current: Preview) -> list[dict[str, Any]]:
    """Per rule and channel, what ``new`` would send against ``current``: every pair
    either sends to, with the change (positive: more)."""
    pairs = sorted(set(new.sent) | set(current.sent))
    return [
        {
            "rule": rule,
            "channel": channel,
            "current": current.sent[(rule, channel)],
            "new": new.sent[(rule, channel)],
            "change": new.sent[(rule, channel)] - current.sent[(rule, channel)],
        }
        for rule, channel in pairs
    ]
