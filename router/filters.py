"""Jinja2 filters for Canvas data, available in every template.

Each filter is a plain function; ``builtin_filters`` names them. Plugins add their own
through the ``register_template_filters`` hook.
"""

import functools
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2

from router.events import parse_timestamp

__all__ = ["builtin_filters", "local_id", "localtime"]


def local_id(value: Any) -> str:
    """Canvas global id to local id: ``21070000000000565`` -> ``565`` (shard * 10^13 + id)."""
    text = str(value)
    if text.isdigit() and len(text) > 13:
        return str(int(text) % 10**13)
    return text


@jinja2.pass_context
def localtime(
    context: jinja2.runtime.Context,
    value: Any,
    zone: str | None = None,
    fmt: str = "%Y-%m-%d %H:%M %Z",
) -> str:
    """Format a Canvas timestamp in ``zone`` (an IANA name), by default the event's
    ``metadata.time_zone``; unparsable input is shown as it is."""
    zone = zone or context.get("time_zone")
    moment = parse_timestamp(value)
    if moment is None:
        return "" if value is None else str(value)
    tz = _zone(zone) if zone else None
    return (moment.astimezone(tz) if tz else moment).strftime(fmt)


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def builtin_filters() -> dict[str, Callable[..., Any]]:
    """The filters every template gets before plugins add theirs."""
    return {"local_id": local_id, "localtime": localtime}
