"""The built-in ``google_chat`` channel: post to a Google Chat space's incoming webhook.

Written exactly as a third-party plugin would be: it registers through the ``router``
entry-point group and uses only the public ``router`` API.
"""

import functools
import html
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import jinja2
import orjson
from jinja2.sandbox import SandboxedEnvironment
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

#: Google Chat refuses a message over 32,000 bytes (text and cards included).
MAX_BYTES = 32_000
THREAD_KEY_CHARS = 4_000
TITLE_CHARS = 1_000
#: The namespace of the request ids: uuid5(namespace, delivery key).
REQUEST_IDS = uuid.UUID("6d1b3c7e-8a43-5f0e-9c57-2f1d0b6a4e21")

_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
_compile = functools.lru_cache(maxsize=256)(_ENV.from_string)


class GoogleChatConfig(ChannelConfig):
    """Settings of a ``type: google_chat`` channel."""

    url: SecretStr = Field(
        SecretStr(""), description="the space's webhook URL (a credential); empty: log only"
    )
    thread_key: str | None = Field(
        None,
        description="a template over event, metadata and body; messages with the same key"
        " go to the same thread (e.g. one thread per course)",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("'url' must be an http(s):// Google Chat webhook URL")
        return SecretStr(url)

    @field_validator("thread_key")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _compile(value)
            except jinja2.TemplateSyntaxError as exc:
                raise ValueError(f"template syntax error: {exc.message}") from None
        return value or None


def request_id(key: str) -> str:
    """The delivery key as a Google Chat ``requestId``: a UUID derived from it, the
    same for every retry and replay. (Google recommends UUIDs for request ids; the
    key itself holds ``:`` and whatever characters a rule's name has.)"""
    return str(uuid.uuid5(REQUEST_IDS, key))


def link_of(message: Message) -> str | None:
    """The template's ``link`` block when it is an http(s) URL, else None."""
    link = message.blocks.get("link", "").strip()
    return link if urlsplit(link).scheme in ("http", "https") and " " not in link else None


def plain(text: str) -> str:
    """Event text for a Chat ``text`` field: ``<users/all>`` and the like would
    mention people, so a zero-width space breaks them up."""
    return text.replace("<users/", "<\u200busers/")


def text_message(title: str, text: str, link: str | None) -> dict[str, Any]:
    """A plain text message: the title in bold, the text, the link."""
    lines = [f"*{plain(title)}*"] if title else []
    if text:
        lines.append(plain(text))
    if link and link not in text:  # unless the text already shows it
        lines.append(f"<{link}|Open in Canvas>")
    return {"text": "\n".join(lines)}


def card_message(title: str, text: str, link: str) -> dict[str, Any]:
    """A card: the title as header, the text, and an "Open in Canvas" button."""
    widgets: list[dict[str, Any]] = []
    if text:
        # Card text takes a little HTML: escape the event's, keep its line breaks.
        widgets.append({"textParagraph": {"text": html.escape(text).replace("\n", "<br>")}})
    button = {"text": "Open in Canvas", "onClick": {"openLink": {"url": link}}}
    widgets.append({"buttonList": {"buttons": [button]}})
    card = {"header": {"title": title}, "sections": [{"widgets": widgets}]}
    return {"fallbackText": title, "cardsV2": [{"cardId": "message", "card": card}]}


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
    """``HTTP 400 Bad Request: INVALID_ARGUMENT: <message>`` from a Google API error
    (``{"error": {"code", "message", "status"}}``), else the body's first 200 characters."""
    head = f"HTTP {status} {reason}".strip()
    detail = body.strip()[:200]
    try:
        error = orjson.loads(body).get("error")
        if isinstance(error, dict):
            parts = [str(error[k]) for k in ("status", "message") if error.get(k)]
            detail = ": ".join(parts)[:300] or detail
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return f"{head}: {detail}" if detail else head


class GoogleChatChannel(Channel):
    """Creates one message per delivery: the template's ``google_chat_cards`` block
    (``cardsV2``), else a card with an "Open in Canvas" button when the template has a
    ``link`` block, else text. The delivery key goes as ``requestId``, so a retry after
    a lost answer returns the message already created instead of posting it twice.
    With ``thread_key``, replies go to that thread (or start it). A message over
    32,000 bytes is shortened to text. 429 and 5xx retry; other 4xx are dead letters."""

    type = "google_chat"
    Config = GoogleChatConfig
    default_rate_limit = "1/s"  # Google Chat takes about one message a second per space
    config: GoogleChatConfig

    def log_only_reason(self) -> str | None:
        if self.config.url.get_secret_value():
            return None
        return "no Google Chat webhook url configured"

    async def open(self) -> None:
        url = self.config.url.get_secret_value()
        parts = urlsplit(url)
        self._separator = "&" if parts.query else "?"
        # Kept out of error texts: the URL, its path and its query (key and token).
        self._secrets = sorted({url, parts.path, parts.query} - {"", "/"}, key=len, reverse=True)
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout()
        )

    async def close(self) -> None:
        await self._session.close()

    def thread_key(self, message: Message) -> str | None:
        """The rendered ``thread_key``, or None (no key, or it rendered empty)."""
        if not self.config.thread_key:
            return None
        event = message.event
        context = {
            "event": event,
            "metadata": event.get("metadata") or {},
            "body": event.get("body") or {},
            "event_id": message.event_id,
            "event_name": message.event_name,
            "rule": message.rule,
            "channel": message.channel,
        }
        try:
            key = _compile(self.config.thread_key).render(context).strip()
        except Exception as exc:
            raise PermanentError(f"cannot render thread_key: {type(exc).__name__}: {exc}") from None
        if len(key) > THREAD_KEY_CHARS:
            raise PermanentError(
                f"thread_key rendered to {len(key)} characters; Google Chat takes at most"
                f" {THREAD_KEY_CHARS:,}"
            )
        return key or None

    def content(self, message: Message) -> dict[str, Any]:
        """The message fields: the template's ``google_chat_cards``, else a default."""
        title = (message.title or message.event_name)[:TITLE_CHARS]
        raw = message.blocks.get("google_chat_cards", "").strip()
        if not raw:
            link = link_of(message)
            if link:
                return card_message(title, message.text, link)
            return text_message(title, message.text, None)
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(
                f"template block 'google_chat_cards' is not valid JSON: {exc}"
            ) from None
        fields: dict[str, Any] = {"fallbackText": title}
        if isinstance(value, dict) and isinstance(value.get("cardsV2"), list):
            if isinstance(value.get("text"), str) and value["text"]:
                fields["text"] = value["text"]
            value = value["cardsV2"]
        if not isinstance(value, list) or not value:
            raise PermanentError(
                "template block 'google_chat_cards' must be a non-empty list of cardsV2"
                ' entries or {"text": "...", "cardsV2": [...]}'
            )
        fields["cardsV2"] = value
        return fields

    def payload(self, message: Message) -> tuple[bytes, str | None]:
        """The request body (at most 32,000 bytes) and the thread key, if any."""
        thread = self.thread_key(message)
        extra = {"thread": {"threadKey": thread}} if thread else {}
        body = orjson.dumps({**self.content(message), **extra})
        if len(body) <= MAX_BYTES:
            return body, thread
        title = (message.title or message.event_name)[:TITLE_CHARS]
        link = link_of(message)
        note = f"\n… (shortened: the whole message was {len(body) // 1024} KB)"
        shortened = fit(
            lambda text: orjson.dumps({**text_message(title, text + note, link), **extra}),
            message.text,
            MAX_BYTES,
        )
        return shortened, thread

    def target(self, message: Message, thread: str | None) -> URL:
        """The webhook URL with ``requestId`` (and the reply option for threads)."""
        query = {"requestId": request_id(message.key)}
        if thread:
            query["messageReplyOption"] = "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"
        url = self.config.url.get_secret_value()
        # Built as text and sent as is: the key and token are never re-encoded.
        return URL(f"{url}{self._separator}{urlencode(query)}", encoded=True)

    async def send(self, message: Message) -> None:
        payload, thread = self.payload(message)
        headers = {"Content-Type": "application/json; charset=UTF-8"}
        try:
            async with self._session.post(
                self.target(message, thread), data=payload, headers=headers
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                body = await resp.text("utf-8", "replace")
                text = service_error(resp.status, resp.reason or "", body)
                if resp.status in (408, 429) or resp.status >= 500:
                    wait = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise self._clean(RetryableError(text, retry_after=wait))
                raise self._clean(PermanentError(text))
        except aiohttp.InvalidURL as exc:
            raise self._clean(PermanentError(f"{type(exc).__name__}: {exc}")) from None
        except aiohttp.ClientError as exc:
            raise self._clean(RetryableError(f"{type(exc).__name__}: {exc}")) from None

    def _clean(self, error: DeliveryError) -> DeliveryError:
        """Never let the webhook URL (its key and token) reach the stored error text."""
        text = str(error)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        error.args = (text,)
        return error


@hookimpl
def register_channels(register: Callable[[type[Channel]], None]) -> None:
    """Provide the ``google_chat`` channel type."""
    register(GoogleChatChannel)
