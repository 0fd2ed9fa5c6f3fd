"""The built-in ``canvas_inbox`` channel: send each person a Canvas Inbox message
through the Conversations API (``POST /api/v1/conversations``).

It sends to ``Message.recipient``, so it goes with a rule that has ``recipients:``
(one delivery per person). Written exactly as a third-party plugin would be: it
registers through the ``router`` entry-point group and uses only the public ``router``
API.

Canvas' answers: 201 (or 202 with ``mode=async``) is sent; ``403 Forbidden (Rate Limit
Exceeded)`` is Canvas throttling, retried (``Retry-After`` honoured); 5xx, 429 and
connection failures are retried; a 400 (invalid recipients, a concluded course, a
missing body, ...) is permanent, with Canvas' own words and the person named; a 401
(the token was refused) and any other 4xx are permanent too.

Conversations have no idempotency key: a delivery retried after a lost answer may send
the message twice (``force_new`` keeps each in its own conversation).
"""

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from pydantic import Field, SecretStr

from router import (
    Channel,
    ChannelConfig,
    Message,
    PermanentError,
    RetryableError,
    hookimpl,
    retry_after_seconds,
)

__version__ = "0.1.0"

log = logging.getLogger(__name__)

SUBJECT_MAX = 255  # Canvas' limit on a conversation's subject
_ID = re.compile(r"\d{1,20}|\d{1,6}~\d{1,15}")


class CanvasInboxConfig(ChannelConfig):
    """Settings of a ``type: canvas_inbox`` channel."""

    url: str = Field(
        "",
        pattern=r"^(https?://[^/?#\s]+/?)?$",
        description="the Canvas instance, e.g. https://canvas.example.edu; empty: log only",
    )
    token: SecretStr = Field(description="an access token allowed to send conversations")
    context: bool = Field(
        True,
        description="send in the event's course (context_code course_<id>) when the event"
        " names one",
    )
    force_new: bool = Field(True, description="a new conversation for every message")


def _course_of(event: Mapping[str, Any]) -> str | None:
    """The event's course id: body.course_id, else a context that is a course."""
    body = event.get("body") if isinstance(event.get("body"), Mapping) else {}
    metadata = event.get("metadata") if isinstance(event.get("metadata"), Mapping) else {}
    candidates = [body.get("course_id")]
    for part in (body, metadata):
        if part.get("context_type") == "Course":
            candidates.append(part.get("context_id"))
    for value in candidates:
        if value is not None and _ID.fullmatch(str(value)):
            return str(value)
    return None


def _who(person: Mapping[str, Any]) -> str:
    return f"{person.get('name') or '(no name)'} (Canvas user {person.get('id')})"


def _canvas_errors(text: str) -> str:
    """Canvas' error answer as one line: ``[{attribute, message}]`` or ``{errors: ...}``."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text[:200].strip()
    if isinstance(data, Mapping):
        data = data.get("errors", [data])
    if isinstance(data, Mapping):  # {"errors": {"field": [...]}}
        data = [{"attribute": k, "message": v} for k, v in data.items()]
    parts = []
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, Mapping):
            attribute, message = item.get("attribute"), item.get("message")
            parts.append(f"{attribute}: {message}" if attribute else str(message))
        else:
            parts.append(str(item))
    return "; ".join(parts)[:300]


class CanvasInboxChannel(Channel):
    """Sends one Canvas conversation per message to the message's recipient."""

    type = "canvas_inbox"
    Config = CanvasInboxConfig
    config: CanvasInboxConfig
    default_rate_limit = "5/s"  # Canvas throttles per token: stay well inside its bucket

    def log_only_reason(self) -> str | None:
        return None if self.config.url else "no Canvas url configured"

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def close(self) -> None:
        await self.session.close()

    def form(self, message: Message) -> list[tuple[str, str]]:
        """The request's form fields (raises ``PermanentError`` without a recipient)."""
        person = message.recipient
        if not person or not _ID.fullmatch(str(person.get("id", ""))):
            raise PermanentError(
                "canvas_inbox sends to a person: use it in a rule with `recipients:`"
            )
        subject = " ".join((message.title or message.event_name).split())[:SUBJECT_MAX]
        fields = [
            ("recipients[]", str(person["id"])),
            ("subject", subject),
            ("body", message.text or subject),
            ("force_new", "true" if self.config.force_new else "false"),
            ("group_conversation", "false"),
        ]
        course = _course_of(message.event) if self.config.context else None
        if course is not None:
            fields.append(("context_code", f"course_{course}"))
        return fields

    async def send(self, message: Message) -> None:
        fields = self.form(message)
        person = message.recipient or {}
        url = self.config.url.rstrip("/") + "/api/v1/conversations"
        headers = {"Authorization": f"Bearer {self.config.token.get_secret_value()}"}
        try:
            async with self.session.post(url, data=fields, headers=headers) as resp:
                if resp.status in (200, 201, 202):
                    return
                text = await resp.text(errors="replace")
                if resp.status == 403 and "rate limit exceeded" in text.lower():
                    wait = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise RetryableError(
                        "Canvas throttled: 403 Rate Limit Exceeded", retry_after=wait
                    )
                if resp.status == 429 or resp.status >= 500:
                    wait = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise RetryableError(f"Canvas answered HTTP {resp.status}", retry_after=wait)
                if resp.status == 401:
                    raise PermanentError("Canvas refused the token (HTTP 401)")
                raise PermanentError(
                    f"Canvas refused the message to {_who(person)}: HTTP {resp.status}:"
                    f" {_canvas_errors(text)}"
                )
        except aiohttp.ClientError as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from None


@hookimpl
def register_channels(register: Callable[[type[Channel]], None]) -> None:
    """Provide the ``canvas_inbox`` channel type."""
    register(CanvasInboxChannel)
