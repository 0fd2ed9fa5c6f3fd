"""What an operator asks about deliveries, and how one is shown: shared by the admin
API (``router/http/admin.py``) and the ``router deliveries`` / ``router dlq`` commands.

Parsing of ``since``, ``limit`` and ``state``; the ``Selector`` of dead letters a replay
or purge is about; a delivery as JSON, its error and payloads redacted.
"""

import re
from datetime import UTC, datetime
from typing import Any, get_args

import orjson

from router.redact import Redactor
from router.rules import parse_duration
from router.store import DeliveryRecord
from router.store.base import DeliveryState

__all__ = [
    "MAX_LIMIT",
    "REPLAYABLE",
    "STATES",
    "BadQuery",
    "Selector",
    "empty_dlq",
    "loads_redacted",
    "parse_limit",
    "parse_since",
    "parse_state",
    "record_dict",
    "redact_tree",
]

MAX_LIMIT = 1000
STATES: tuple[str, ...] = get_args(DeliveryState)
#: What a replay may select: dead letters, and silenced or muted deliveries.
REPLAYABLE = ("dead", "silenced", "muted")
_DURATION_AGO = re.compile(r"\d+(?:\.\d+)?\s*[smhd]")


class BadQuery(ValueError):
    """A query parameter, option or body that cannot be understood (the admin API
    answers 400 with its text, the CLI names the option)."""


def parse_since(value: str, *, now: float) -> float:
    """``1h`` / ``30m`` / ``2d`` ago, unix seconds, or an ISO 8601 time (UTC if naive)."""
    value = value.strip()
    if _DURATION_AGO.fullmatch(value):
        return now - parse_duration(value)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(
            f"since: {value!r} is not a duration (1h), unix seconds or an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_limit(value: str | None, default: int = 100) -> int:
    """How many deliveries to list: 1 to ``MAX_LIMIT`` (``default`` when not given)."""
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except ValueError:
        raise BadQuery(f"limit: {value!r} is not a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def parse_state(value: str | None) -> DeliveryState | None:
    """A delivery state (one of ``STATES``), or None when not given."""
    if not value:
        return None
    if value not in STATES:
        raise BadQuery(f"state: {value!r} is not one of {', '.join(STATES)}")
    return value  # type: ignore[return-value]


class Selector:
    """Which dead letters a replay or purge is about: ids, all, and/or filters."""

    def __init__(
        self,
        ids: list[int] | None = None,
        *,
        all: bool = False,
        channel: str | None = None,
        rule: str | None = None,
        since: float | None = None,
        state: str = "dead",
    ) -> None:
        if state not in REPLAYABLE:
            raise BadQuery(f"state: {state!r} is not one of {', '.join(REPLAYABLE)}")
        self.state = state
        self.ids = ids
        self.all = all
        self.channel = channel
        self.rule = rule
        self.since = since

    @property
    def empty(self) -> bool:
        return (
            not self.ids
            and not self.all
            and self.channel is None
            and self.rule is None
            and self.since is None
        )

    def store_args(self) -> dict[str, Any]:
        """Keyword arguments for ``Store.replay`` / ``Store.purge``."""
        return {
            "delivery_ids": self.ids or None,
            "channel": self.channel,
            "rule": self.rule,
            "since": self.since,
        }

    @classmethod
    def parse(cls, data: dict[str, Any], *, now: float) -> "Selector":
        """From a JSON body or a form: ``ids``, ``all``, ``channel``, ``rule``, ``since``."""
        unknown = set(data) - {"ids", "all", "channel", "rule", "since", "state", "csrf"}
        if unknown:
            raise BadQuery(f"unknown field(s): {', '.join(sorted(unknown))}")
        ids = data.get("ids")
        if ids is not None:
            if isinstance(ids, str | int):
                ids = [ids]
            try:
                ids = [int(i) for i in ids]
            except (TypeError, ValueError):
                raise BadQuery("ids must be a list of delivery ids (numbers)") from None
            if not all(0 <= i < 2**63 for i in ids):  # the stores' integer range
                raise BadQuery("ids must be a list of delivery ids (numbers)")
        everything = data.get("all", False)
        if isinstance(everything, str):
            everything = everything.lower() in ("1", "true", "yes", "on")
        if not isinstance(everything, bool):
            raise BadQuery("all must be true or false")
        for name in ("channel", "rule"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise BadQuery(f"{name} must be a string")
        since = data.get("since")
        selector = cls(
            ids,
            all=everything,
            channel=data.get("channel") or None,
            rule=data.get("rule") or None,
            since=None if since in (None, "") else parse_since(str(since), now=now),
            state=str(data.get("state") or "dead"),
        )
        if selector.empty:
            raise BadQuery('say which dead letters: {"ids": [...]}, {"all": true} or filters')
        return selector


def empty_dlq(total: int) -> str:
    """What an empty dead-letter listing says: the queue is empty, or the filters
    matched none of the ``total`` dead letters it holds."""
    if total == 0:
        return "no dead letters: the dead-letter queue is empty"
    return f"no dead letters match; the queue holds {total}"


def record_dict(record: DeliveryRecord, redact: Redactor) -> dict[str, Any]:
    """A delivery as JSON, its error redacted."""
    return {
        "id": record.id,
        "key": record.key,
        "event_id": record.event_id,
        "event_name": record.event_name,
        "rule": record.rule,
        "channel": record.channel,
        "state": record.state,
        "attempts": record.attempts,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "next_attempt_at": record.next_attempt_at,
        "last_error": None if record.last_error is None else redact(record.last_error),
        "silence": record.silence,
    }


def redact_tree(value: Any, redact: Redactor) -> Any:
    """Every string in a JSON value redacted (Canvas URLs carry ``access_token=``), and
    every field named like a credential (``access_token``, ``password``...) masked."""
    return redact.tree(value)


def loads_redacted(data: bytes | None, redact: Redactor) -> Any:
    """A stored JSON payload (a message, an event) parsed and redacted; text that is
    not JSON comes back as redacted text."""
    if data is None:
        return None
    try:
        return redact_tree(orjson.loads(data), redact)
    except orjson.JSONDecodeError:
        return redact(data.decode("utf-8", "replace"))
