"""The built-in ``teams`` channel: post an Adaptive Card to a Microsoft Teams Workflows
webhook (the "When a Teams webhook request is received" flow that replaced Office 365
connectors).

Written exactly as a third-party plugin would be: it registers through the ``router``
entry-point group and uses only the public ``router`` API.
"""

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator
from yarl import URL

from router import (
    Channel,
    ChannelConfig,
    DeliveryError,
    Message,
    PermanentError,
    RetryableError,
    hookimpl,
    retry_after_seconds,
)

__version__ = "0.1.0"

#: Teams refuses a message over about 28 KB; stay a little under it.
MAX_BYTES = 28_000
CARD_VERSION = "1.4"
TITLE_CHARS = 1_000


class TeamsConfig(ChannelConfig):
    """Settings of a ``type: teams`` channel."""

    url: SecretStr = Field(
        SecretStr(""), description="the Workflows webhook URL (a credential); empty: log only"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("'url' must be an http(s):// Workflows webhook URL")
        return SecretStr(url)


def link_of(message: Message) -> str | None:
    """The template's ``link`` block when it is an http(s) URL (the event's object in
    Canvas), else None: a broken link must not cost the whole message."""
    link = message.blocks.get("link", "").strip()
    return link if urlsplit(link).scheme in ("http", "https") and " " not in link else None


def default_card(title: str, text: str, link: str | None) -> dict[str, Any]:
    """A card with the title, the text and an "Open in Canvas" button when there is a link."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": True}
    ]
    if text:
        body.append({"type": "TextBlock", "text": text, "wrap": True})
    card: dict[str, Any] = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": CARD_VERSION,
        "body": body,
    }
    if link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in Canvas", "url": link}]
    return card


def envelope(card: dict[str, Any]) -> bytes:
    """The request body Workflows webhooks take: a message with one Adaptive Card."""
    attachment = {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "contentUrl": None,
        "content": card,
    }
    return orjson.dumps({"type": "message", "attachments": [attachment]})


def fit(build: Callable[[str], bytes], text: str, limit: int) -> bytes:
    """``build(prefix)`` for the longest prefix of ``text`` whose result is at most
    ``limit`` bytes (a binary search: JSON escaping makes sizes uneven)."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if len(build(text[:middle])) <= limit:
            low = middle
        else:
            high = middle - 1
    return build(text[:low])


def service_error(status: int, reason: str, body: str) -> str:
    """``HTTP 400 Bad Request: <code>: <message>`` from a Logic Apps / Power Automate
    error body (``{"error": {"code", "message"}}``), else the body's first 200 characters."""
    head = f"HTTP {status} {reason}".strip()
    detail = body.strip()[:200]
    try:
        error = orjson.loads(body).get("error")
        if isinstance(error, dict):
            parts = [str(error[k]) for k in ("code", "message") if error.get(k)]
            detail = ": ".join(parts)[:300] or detail
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return f"{head}: {detail}" if detail else head


class TeamsChannel(Channel):
    """Posts one Adaptive Card per message: the template's ``teams_card`` block, else a
    card built from the title, the text and the ``link`` block. A message over Teams'
    28 KB is shortened (title and link kept), never refused. 429 waits for
    ``Retry-After``, 408/5xx and network errors retry, other 4xx are dead letters."""

    type = "teams"
    Config = TeamsConfig
    default_rate_limit = "4/s"  # Teams throttles a webhook above about 4 requests a second
    config: TeamsConfig

    def log_only_reason(self) -> str | None:
        return None if self.config.url.get_secret_value() else "no Teams webhook url configured"

    async def open(self) -> None:
        url = self.config.url.get_secret_value()
        parts = urlsplit(url)
        # Kept out of error texts: the URL, its path and its query (the signature).
        self._secrets = sorted({url, parts.path, parts.query} - {"", "/"}, key=len, reverse=True)
        # Sent exactly as given: the query holds the signed ``sp=%2Ftriggers...`` and ``sig``.
        self._target = URL(url, encoded=True)
        # No cookie jar (nothing carries over between deliveries) and no timeout of its
        # own: the router bounds every send with the channel's ``timeout:``.
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout()
        )

    async def close(self) -> None:
        await self._session.close()

    def card(self, message: Message) -> dict[str, Any]:
        """The template's ``teams_card`` block (an Adaptive Card), else the default card."""
        raw = message.blocks.get("teams_card", "").strip()
        if not raw:
            title = message.title or message.event_name
            return default_card(title[:TITLE_CHARS], message.text, link_of(message))
        try:
            card = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(f"template block 'teams_card' is not valid JSON: {exc}") from None
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            raise PermanentError(
                "template block 'teams_card' must be an Adaptive Card:"
                ' an object with "type": "AdaptiveCard"'
            )
        return card

    def payload(self, message: Message) -> bytes:
        """The request body, shortened to fit Teams' size limit when it is too large."""
        body = envelope(self.card(message))
        if len(body) <= MAX_BYTES:
            return body
        title = (message.title or message.event_name)[:TITLE_CHARS]
        link = link_of(message)
        note = f"\n\n… (shortened: the whole message was {len(body) // 1024} KB)"
        return fit(
            lambda text: envelope(default_card(title, text + note, link)),
            message.text,
            MAX_BYTES,
        )

    async def send(self, message: Message) -> None:
        payload = self.payload(message)
        headers = {"Content-Type": "application/json"}
        try:
            async with self._session.post(self._target, data=payload, headers=headers) as resp:
                # Workflows answer 202 with an empty body, even if the flow fails later.
                if 200 <= resp.status < 300:
                    return
                text = service_error(
                    resp.status, resp.reason or "", await resp.text("utf-8", "replace")
                )
                if resp.status in (408, 429) or resp.status >= 500:
                    wait = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise self._clean(RetryableError(text, retry_after=wait))
                raise self._clean(PermanentError(text))
        except aiohttp.InvalidURL as exc:
            raise self._clean(PermanentError(f"{type(exc).__name__}: {exc}")) from None
        except aiohttp.ClientError as exc:
            raise self._clean(RetryableError(f"{type(exc).__name__}: {exc}")) from None

    def _clean(self, error: DeliveryError) -> DeliveryError:
        """Never let the webhook URL (or its signature) reach the stored error text."""
        text = str(error)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        error.args = (text,)
        return error


@hookimpl
def register_channels(register: Callable[[type[Channel]], None]) -> None:
    """Provide the ``teams`` channel type."""
    register(TeamsChannel)
