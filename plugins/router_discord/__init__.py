"""The built-in ``discord`` channel: execute a Discord webhook with an embed.

Written exactly as a third-party plugin would be: it registers through the ``router``
entry-point group and uses only the public ``router`` API.
"""

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

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

# Discord's documented limits (discord-api-docs: Execute Webhook, Embed Limits).
CONTENT_CHARS = 2000
TITLE_CHARS = 256
DESCRIPTION_CHARS = 4096


class DiscordConfig(ChannelConfig):
    """Settings of a ``type: discord`` channel."""

    url: SecretStr = Field(
        SecretStr(""), description="the webhook URL (a credential); empty: log only"
    )
    username: str | None = Field(None, min_length=1, max_length=80, description="post as")
    avatar_url: str | None = Field(None, description="avatar image URL")
    thread_id: str | None = Field(
        None, pattern=r"^[0-9]{1,20}$", description="post in this thread of the channel"
    )
    mentions: list[Literal["users", "roles", "everyone"]] = Field(
        default_factory=list,
        description="mention kinds Discord may act on; none by default, so no event pings",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("'url' must be an http(s):// Discord webhook URL")
        return SecretStr(url)

    @field_validator("username")
    @classmethod
    def _allowed_name(cls, value: str | None) -> str | None:
        for word in ("discord", "clyde"):  # Discord refuses webhook names holding these
            if value and word in value.lower():
                raise ValueError(f"Discord refuses webhook usernames containing {word!r}")
        return value

    @field_validator("avatar_url")
    @classmethod
    def _http_avatar(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("'avatar_url' must be an http(s):// URL")
        return value or None


def link_of(message: Message) -> str | None:
    """The template's ``link`` block when it is an http(s) URL, else None."""
    link = message.blocks.get("link", "").strip()
    return link if urlsplit(link).scheme in ("http", "https") and " " not in link else None


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def default_embed(message: Message) -> dict[str, Any]:
    """One embed: the title (a link to Canvas when there is one) and the text, ending
    with an "Open in Canvas" link when the text does not show the link already."""
    link = link_of(message)
    # The link goes at the end, unless the text already shows it.
    after = f"\n\n[Open in Canvas]({link})" if link and link not in message.text else ""
    description = shorten(message.text, DESCRIPTION_CHARS - len(after)) + after
    embed: dict[str, Any] = {"title": shorten(message.title or message.event_name, TITLE_CHARS)}
    if description.strip():
        embed["description"] = description.strip()
    if link:
        embed["url"] = link
    return embed


def _field_errors(errors: Any, path: str = "") -> Iterator[str]:
    """``embeds.0.description: Must be 4096 or fewer in length.`` from Discord's nested
    ``errors`` object (``{"embeds": {"0": {"description": {"_errors": [...]}}}}``)."""
    if not isinstance(errors, dict):
        return
    for key, value in errors.items():
        if key == "_errors" and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    yield f"{path or 'body'}: {item.get('message') or item.get('code')}"
        else:
            yield from _field_errors(value, f"{path}.{key}" if path else str(key))


def service_error(status: int, reason: str, body: str) -> tuple[str, dict[str, Any]]:
    """The error text (``HTTP 400 Bad Request: Discord 50035 Invalid Form Body: ...``)
    and the parsed JSON body (empty when it is not JSON)."""
    head = f"HTTP {status} {reason}".strip()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        detail = body.strip()[:200]
        return (f"{head}: {detail}" if detail else head), {}
    parts = ("Discord", data.get("code"), data.get("message"))
    detail = " ".join(str(part) for part in parts if part is not None and part != "")
    fields = list(_field_errors(data.get("errors")))
    if fields:
        detail += ": " + "; ".join(fields)
    return f"{head}: {detail[:500]}", data


class DiscordChannel(Channel):
    """Executes the webhook with ``wait=true`` (so Discord validates the message before
    answering): the template's ``discord_embeds`` block, else one embed built from the
    title, the text and the ``link`` block; ``allowed_mentions`` parses nothing unless
    ``mentions`` says otherwise. 429 waits exactly Discord's ``retry_after``; 5xx and
    network errors retry; 404 (webhook deleted), 400 (50035, invalid form body) and
    other 4xx are dead letters with Discord's message. After an answer saying the
    webhook's bucket is empty (``X-RateLimit-Remaining: 0``), the next send waits for
    ``X-RateLimit-Reset-After`` rather than earn a 429."""

    type = "discord"
    Config = DiscordConfig
    # Discord says not to hard-code its limits: every 429 says how long to wait. This
    # only spaces sends out to about the per-channel rate webhooks are held to.
    default_rate_limit = "30/min"
    config: DiscordConfig

    def log_only_reason(self) -> str | None:
        return None if self.config.url.get_secret_value() else "no Discord webhook url configured"

    async def open(self) -> None:
        url = self.config.url.get_secret_value()
        query = {"wait": "true"}
        if self.config.thread_id:
            query["thread_id"] = self.config.thread_id
        separator = "&" if urlsplit(url).query else "?"
        # Built as text and sent as is: the token in the path is never re-encoded.
        self._target = URL(f"{url}{separator}{urlencode(query)}", encoded=True)
        parts = urlsplit(url)
        # Kept out of error texts: the URL and its path (the webhook id and token).
        self._secrets = sorted({url, parts.path, parts.query} - {"", "/"}, key=len, reverse=True)
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout()
        )
        #: When the webhook's bucket, empty after the last answer, refills (monotonic).
        self._bucket_resets = 0.0

    async def close(self) -> None:
        await self._session.close()

    def _note_bucket(self, headers: Mapping[str, str]) -> None:
        """Remember an empty bucket (``X-RateLimit-Remaining: 0``) until it resets, so
        the next send waits for it instead of earning a 429."""
        if headers.get("X-RateLimit-Remaining") == "0":
            reset_after = retry_after_seconds(headers.get("X-RateLimit-Reset-After"))
            if reset_after:
                self._bucket_resets = max(self._bucket_resets, time.monotonic() + reset_after)

    def payload(self, message: Message) -> dict[str, Any]:
        """The JSON body: content and embeds, identity overrides, allowed mentions."""
        body: dict[str, Any] = {}
        raw = message.blocks.get("discord_embeds", "").strip()
        if raw:
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise PermanentError(
                    f"template block 'discord_embeds' is not valid JSON: {exc}"
                ) from None
            if isinstance(value, dict) and isinstance(value.get("embeds"), list):
                if isinstance(value.get("content"), str) and value["content"]:
                    body["content"] = shorten(value["content"], CONTENT_CHARS)
                value = value["embeds"]
            if not isinstance(value, list):
                raise PermanentError(
                    "template block 'discord_embeds' must be a list of embeds"
                    ' or {"content": "...", "embeds": [...]}'
                )
            body["embeds"] = value
        else:
            body["embeds"] = [default_embed(message)]
        if self.config.username:
            body["username"] = self.config.username
        if self.config.avatar_url:
            body["avatar_url"] = self.config.avatar_url
        body["allowed_mentions"] = {"parse": list(self.config.mentions)}
        return body

    async def send(self, message: Message) -> None:
        payload = orjson.dumps(self.payload(message))
        headers = {"Content-Type": "application/json"}
        wait = self._bucket_resets - time.monotonic()
        if wait > 0:  # bounded: a wait past the send's timeout is a 429's business
            await asyncio.sleep(min(wait, self.timeout / 2))
        try:
            async with self._session.post(self._target, data=payload, headers=headers) as resp:
                self._note_bucket(resp.headers)
                if 200 <= resp.status < 300:
                    return
                body = await resp.text("utf-8", "replace")
                text, data = service_error(resp.status, resp.reason or "", body)
                if resp.status == 429:
                    raise self._clean(RetryableError(text, retry_after=self._wait(resp, data)))
                if resp.status == 408 or resp.status >= 500:
                    wait = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise self._clean(RetryableError(text, retry_after=wait))
                raise self._clean(PermanentError(text))
        except aiohttp.InvalidURL as exc:
            raise self._clean(PermanentError(f"{type(exc).__name__}: {exc}")) from None
        except aiohttp.ClientError as exc:
            raise self._clean(RetryableError(f"{type(exc).__name__}: {exc}")) from None

    @staticmethod
    def _wait(resp: aiohttp.ClientResponse, data: dict[str, Any]) -> float | None:
        """Seconds to wait after a 429: the body's ``retry_after`` (fractional), else
        ``X-RateLimit-Reset-After``, else ``Retry-After`` (whole seconds)."""
        value = data.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
        for header in ("X-RateLimit-Reset-After", "Retry-After"):
            wait = retry_after_seconds(resp.headers.get(header))
            if wait is not None:
                return wait
        return None

    def _clean(self, error: DeliveryError) -> DeliveryError:
        """Never let the webhook URL (its id and token) reach the stored error text."""
        text = str(error)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        error.args = (text,)
        return error


@hookimpl
def register_channels(register: Callable[[type[Channel]], None]) -> None:
    """Provide the ``discord`` channel type."""
    register(DiscordChannel)
