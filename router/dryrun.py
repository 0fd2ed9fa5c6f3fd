"""``router test``: what the rules would do with some events, without sending anything."""

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from router.events import (
    BadRequest,
    InvalidEvents,
    ParsedEvent,
    TooManyItems,
    parse_body,
    parse_timestamp,
)
from router.routing import Router
from router.store import InboxEvent

__all__ = ["DryRunError", "EventReport", "dry_run", "read_events"]


class DryRunError(Exception):
    """An event file that cannot be read or holds no valid event."""


@dataclass
class EventReport:
    """The verdict for one event: rules that fired and what each channel would get."""

    file: str
    index: int
    event_id: str
    event_name: str
    fired: list[str]
    messages: list[dict[str, Any]] = field(default_factory=list)
    digests: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_events(path: Path) -> list[ParsedEvent]:
    """Events from a file: one JSON event, a JSON array, or NDJSON (``.ndjson``/``.jsonl``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DryRunError(f"{path}: cannot read: {exc.strerror}") from None
    ndjson = path.suffix in (".ndjson", ".jsonl")
    try:
        return parse_body(data, ndjson=ndjson, max_items=100_000)
    except (BadRequest, TooManyItems) as exc:
        raise DryRunError(f"{path}: {exc}") from None
    except InvalidEvents as exc:
        problems = "; ".join(f"[{e.index}] {e.field}: {e.message}" for e in exc.errors)
        raise DryRunError(f"{path}: not an event: {problems}") from None


def event_time(payload: Any, default: float) -> float:
    """The event's ``metadata.event_time`` as unix seconds, else ``default``."""
    metadata = payload.get("metadata") if isinstance(payload, dict) else None
    moment = parse_timestamp(metadata.get("event_time")) if isinstance(metadata, dict) else None
    return moment.timestamp() if moment is not None else default


def dry_run(router: Router, files: list[Path]) -> list[EventReport]:
    """Route every event in ``files`` as the service would (without stored snapshots),
    at the event's own time (``metadata.event_time``, else now): quiet hours are those
    that would hold then."""
    reports = []
    started = time.time()
    for path in files:
        for index, parsed in enumerate(read_events(path)):
            payload = orjson.loads(parsed.payload)
            now = event_time(payload, started)
            event = InboxEvent(index, parsed.id, parsed.name, parsed.payload, now)
            decision = router.decide(event, payload, None, now=now, explain=True)
            messages = [
                {"rule": rule, "channel": channel, **message}
                for (rule, channel), message in decision.rendered.items()
            ]
            digests = [
                {"rule": d.rule, "group": orjson.loads(d.group)} for d in decision.routed.digests
            ]
            reports.append(
                EventReport(
                    file=str(path),
                    index=index,
                    event_id=parsed.id,
                    event_name=parsed.name,
                    fired=[rule.name for rule in decision.fired],
                    messages=messages,
                    digests=digests,
                    skipped=decision.skipped,
                )
            )
    return reports
