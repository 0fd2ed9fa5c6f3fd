"""What an operator asks of silences, shared by the admin API (``/-/silences``), the
status page's form and ``router silence``: a new silence from its fields, and a
silence as JSON or as one line of a listing."""

import time
from datetime import UTC, datetime
from typing import Any

from router.delivery_queries import BadQuery, parse_since
from router.rules import parse_duration
from router.silences import compile_matchers, describe, new_silence_id
from router.store import Silence

__all__ = ["new_silence", "silence_dict", "silence_state"]


def _time(value: Any, name: str, now: float) -> float:
    """A time given as unix seconds or ISO 8601 (a duration means from now)."""
    text = str(value).strip()
    try:
        return now + parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_since(text, now=now)
    except BadQuery:
        raise BadQuery(f"{name}: {text!r} is not a time (ISO 8601, unix seconds)") from None


def new_silence(data: dict[str, Any], *, now: float | None = None) -> Silence:
    """A silence from a request: matchers (``rule``, ``channel``, ``event``, ``match``),
    ``for`` (a duration) or ``ends_at``, optional ``starts_at`` (default now),
    ``author`` and ``comment``. Raises ``BadQuery`` naming what is wrong."""
    now = time.time() if now is None else now
    unknown = set(data) - {
        "rule",
        "channel",
        "event",
        "match",
        "for",
        "starts_at",
        "ends_at",
        "author",
        "comment",
        "csrf",
    }
    if unknown:
        raise BadQuery(f"unknown field(s): {', '.join(sorted(unknown))}")
    matchers = {
        key: data[key]
        for key in ("rule", "channel", "event", "match")
        if data.get(key) not in (None, "")
    }
    try:
        compile_matchers(matchers)
    except ValueError as exc:
        raise BadQuery(f"matchers: {exc}") from None
    starts = _time(data["starts_at"], "starts_at", now) if data.get("starts_at") else now
    if data.get("for") and data.get("ends_at"):
        raise BadQuery("give 'for' or 'ends_at', not both")
    if data.get("for"):
        try:
            ends = starts + parse_duration(str(data["for"]))
        except ValueError as exc:
            raise BadQuery(f"for: {exc}") from None
    elif data.get("ends_at"):
        ends = _time(data["ends_at"], "ends_at", now)
    else:
        raise BadQuery("say how long: 'for' (2h) or 'ends_at'")
    if ends <= starts:
        raise BadQuery("a silence must end after it starts")
    return Silence(
        id=new_silence_id(),
        matchers=matchers,
        starts_at=starts,
        ends_at=ends,
        author=str(data.get("author") or "unknown")[:200],
        comment=str(data.get("comment") or "")[:2000],
        created_at=now,
    )


def silence_state(silence: Silence, now: float) -> str:
    """``active``, ``pending`` (starts later) or ``expired``."""
    if silence.active(now):
        return "active"
    return "pending" if now < silence.starts_at else "expired"


def _iso(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def silence_dict(silence: Silence, now: float) -> dict[str, Any]:
    """A silence as JSON."""
    return {
        "id": silence.id,
        "state": silence_state(silence, now),
        "matchers": silence.matchers,
        "matches": describe(silence.matchers),
        "starts_at": _iso(silence.starts_at),
        "ends_at": _iso(silence.ends_at),
        "author": silence.author,
        "comment": silence.comment,
        "created_at": _iso(silence.created_at),
    }
