"""Incoming events: the tolerant envelope model, request-body parsing and event identity.

Canvas Live Events are ``{"metadata": {...}, "body": {...}}``. Fields come and go,
so the models keep every unknown field; only a payload that is not a JSON object or
has no ``metadata.event_name`` is rejected. Canvas' other format, IMS Caliper 1.1,
comes as an envelope ``{"sensor", "sendTime", "dataVersion", "data": [...]}``: each
item of ``data`` is stored as an event of its own, named by ``router.caliper``.
"""

import hashlib
import json
import re
from datetime import datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from router.caliper import caliper_name, is_caliper_envelope
from router.sources import BadRequest, InvalidEvents, ItemError, ParsedEvent

__all__ = [
    "BadRequest",
    "Event",
    "EventMetadata",
    "InvalidEvents",
    "ItemError",
    "ParsedEvent",
    "TooManyItems",
    "event_identity",
    "parse_body",
    "parse_timestamp",
]

_SPACED_OFFSET = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:\.\d+)?) ?([+-]\d{2}):?(\d{2})$"
)


def parse_timestamp(value: Any) -> datetime | None:
    """Parse every timestamp form Canvas emits; return None for null or unparsable input.

    Handles ISO 8601 with ``Z`` or any offset and Canvas' ``2019-11-05 07:38:00 -0800``.
    Never raises: a strange timestamp must not cost us the event.
    """
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        pass
    match = _SPACED_OFFSET.match(text)
    if match:
        date, time, hours, minutes = match.groups()
        try:
            return datetime.fromisoformat(f"{date}T{time}{hours}:{minutes}")
        except ValueError:
            return None
    return None


LenientTimestamp = Annotated[datetime | None, BeforeValidator(parse_timestamp)]

#: The longest event name accepted: a name is part of template file names and metric
#: labels, and no real event name comes near it.
MAX_EVENT_NAME = 255


class EventMetadata(BaseModel):
    """Canvas event metadata. Only ``event_name`` is required; unknown fields are kept."""

    model_config = ConfigDict(extra="allow")

    event_name: str = Field(min_length=1, max_length=MAX_EVENT_NAME)
    event_time: LenientTimestamp = None


class Event(BaseModel):
    """A Canvas-style event envelope. ``body`` may be absent or null (treated as empty)."""

    model_config = ConfigDict(extra="allow")

    metadata: EventMetadata
    body: Annotated[dict[str, Any], BeforeValidator(lambda v: {} if v is None else v)] = Field(
        default_factory=dict
    )

    @property
    def name(self) -> str:
        """The event name (``metadata.event_name``)."""
        return self.metadata.event_name


class TooManyItems(Exception):
    """A batch with more items than allowed (HTTP 413)."""


def canonical_json(event: dict[str, Any]) -> bytes:
    """Serialise an event with sorted keys and no whitespace: equal events, equal bytes."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def event_identity(canonical: bytes) -> str:
    """The event id: a hash of the canonical event (Canvas' request_id is not unique)."""
    return hashlib.sha256(canonical).hexdigest()[:32]


def _loads(data: bytes, where: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"malformed JSON{where} at line {exc.lineno} column {exc.colno} (char {exc.pos}): "
            f"{exc.msg}"
        ) from None


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(event)"


def _is_event(item: Any) -> bool:
    """The hot path's check, equivalent to validating ``Event`` (which explains failures)."""
    if not isinstance(item, dict):
        return False
    metadata, body = item.get("metadata"), item.get("body")
    name = metadata.get("event_name") if isinstance(metadata, dict) else None
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_EVENT_NAME
        and (body is None or isinstance(body, dict))
    )


# An integer of 20 digits or more may not fit 64 bits, which is all orjson keeps exact
# (it reads a bigger one as a float). Rare: such bodies are read again, exactly. The
# check maps every digit to "0" and anything else to "." and looks for twenty zeros:
# several times cheaper than a regular expression on the ingest path.
_DIGITS_ONLY = bytes(ord("0") if 48 <= b <= 57 else ord(".") for b in range(256))
_TWENTY_DIGITS = b"0" * 20
_INT_RANGE = (-(2**63), 2**64 - 1)


def _big_integers(value: Any, loc: tuple[int | str, ...] = ()) -> list[str]:
    """The fields of an exactly parsed item holding integers beyond 64 bits."""
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in _big_integers(v, (*loc, k))]
    if isinstance(value, list):
        return [f for i, v in enumerate(value) for f in _big_integers(v, (*loc, i))]
    if type(value) is int and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        return [_field(loc)]
    return []


def _exact_items(data: bytes, ndjson: bool) -> list[Any]:
    if ndjson:
        return [json.loads(line) for line in data.splitlines() if line.strip()]
    parsed = json.loads(data)
    return parsed if isinstance(parsed, list) else [parsed]


def _integer_errors(data: bytes, ndjson: bool) -> list[ItemError]:
    """An integer beyond 64 bits would be stored and forwarded as a float, not as
    received: such an event is refused, naming the field."""
    if _TWENTY_DIGITS not in data.translate(_DIGITS_ONLY):
        return []
    return [
        ItemError(
            index=index,
            field=field,
            message="integer beyond 64 bits; send it as a string to keep it exact",
        )
        for index, item in enumerate(_exact_items(data, ndjson))
        for field in _big_integers(item)
    ]


def _problems(index: int, item: Any) -> list[ItemError]:
    """Why ``item`` is not an event, field by field (the slow path, for error answers)."""
    if not isinstance(item, dict):
        message = f"an event must be a JSON object, got {type(item).__name__}"
        return [ItemError(index=index, field="(event)", message=message)]
    try:
        Event.model_validate(item)
    except ValidationError as exc:
        return [
            ItemError(
                index=index,
                field=_field(err["loc"]),
                message="is required" if err["type"] == "missing" else err["msg"],
            )
            for err in exc.errors(include_input=False, include_url=False)
        ]
    return []


def _accept(item: dict[str, Any]) -> ParsedEvent:
    canonical = canonical_json(item)
    return ParsedEvent(
        id=event_identity(canonical), name=item["metadata"]["event_name"], payload=canonical
    )


def _caliper_problems(index: int, position: int, item: Any) -> list[ItemError]:
    """Why one item of a Caliper envelope's ``data`` is not an event."""
    where = f"data[{position}]"
    if not isinstance(item, dict):
        message = f"a Caliper event must be a JSON object, got {type(item).__name__}"
        return [ItemError(index=index, field=where, message=message)]
    return [
        ItemError(index=index, field=f"{where}.{key}", message=message)
        for key in ("type", "action")
        for message in [_caliper_field_problem(item.get(key))]
        if message
    ]


def _caliper_field_problem(value: Any) -> str | None:
    if value is None:
        return "is required"
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    return None


def _accept_caliper(item: dict[str, Any]) -> ParsedEvent:
    canonical = canonical_json(item)
    return ParsedEvent(id=event_identity(canonical), name=caliper_name(item), payload=canonical)


def _events_of(index: int, item: Any) -> tuple[list[ParsedEvent], list[ItemError]]:
    """The events one item of a body holds: itself, or each event of a Caliper envelope."""
    if not is_caliper_envelope(item):
        if _is_event(item):
            return [_accept(item)], []
        return [], _problems(index, item)
    data = item["data"]
    if not data:
        return [], [ItemError(index=index, field="data", message="no events in envelope")]
    errors = [
        e for position, sub in enumerate(data) for e in _caliper_problems(index, position, sub)
    ]
    if errors:
        return [], errors
    return [_accept_caliper(sub) for sub in data], []


def parse_body(data: bytes, *, ndjson: bool, max_items: int) -> list[ParsedEvent]:
    """Parse a request body: one event, a JSON array of events, or NDJSON; any item
    may be a Caliper envelope, which stands for each event in its ``data``.

    All or nothing: raises ``BadRequest`` (unreadable), ``TooManyItems`` or
    ``InvalidEvents`` listing every bad item by index and field.
    """
    if ndjson:
        lines = [line for line in data.splitlines() if line.strip()]
        items = [_loads(line, f" on line {n}") for n, line in enumerate(lines, start=1)]
    else:
        parsed = _loads(data, "")
        items = parsed if isinstance(parsed, list) else [parsed]
    if not items:
        raise InvalidEvents([ItemError(index=0, field="(body)", message="no events in body")])
    if len(items) > max_items:
        raise TooManyItems(f"batch has {len(items)} events; the limit is {max_items}")
    accepted: list[ParsedEvent] = []
    errors: list[ItemError] = []
    for index, item in enumerate(items):
        # The hot path: a plain Canvas event, checked without building a model.
        if not errors and _is_event(item):
            accepted.append(_accept(item))
            continue
        events, problems = _events_of(index, item)
        errors.extend(problems)
        if not errors:
            accepted.extend(events)
    errors.extend(_integer_errors(data, ndjson))
    if errors:
        raise InvalidEvents(sorted(errors, key=lambda e: e.index))
    if len(accepted) > max_items:
        raise TooManyItems(f"batch has {len(accepted)} events; the limit is {max_items}")
    return accepted
