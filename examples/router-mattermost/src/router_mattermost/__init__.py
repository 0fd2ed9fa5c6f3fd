"""router-mattermost: a ``mattermost`` channel for router, posting to an incoming webhook.

A third-party plugin: installed as its own package, found through the ``router``
entry-point group, written against the public ``router`` API only.

    channels:
      team-chat:
        type: mattermost
        url: "${MATTERMOST_WEBHOOK_URL:-}"   # empty: log what would be sent
        channel: town-square                 # optional overrides of the webhook's defaults
        username: canvas
        icon_url: https://example.edu/canvas.png
"""

from collections.abc import Callable
from typing import Any

import aiohttp
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

__all__ = ["MattermostChannel", "MattermostConfig", "register_channels"]


class MattermostConfig(ChannelConfig):
    """Settings of a ``type: mattermost`` channel (unknown keys are errors)."""

    # The webhook URL is its own credential (https://host/hooks/<key>): a SecretStr, so
    # router masks it in logs, errors and dead letters.
    url: SecretStr = Field(
        SecretStr(""), description="incoming webhook URL; empty means log what would be sent"
    )
    channel: str | None = Field(None, description="post to this channel instead of the default")
    username: str | None = Field(None, description="display name (if the server allows it)")
    icon_url: str | None = Field(None, description="profile picture URL for the post")


class MattermostChannel(Channel):
    """POSTs ``{"text", "username", "icon_url", "channel"}``; 2xx is delivered, 429 and
    5xx are retried (after ``Retry-After``), connection errors are retried, other 4xx
    are permanent."""

    type = "mattermost"
    Config = MattermostConfig
    config: MattermostConfig
    # Mattermost's API rate limiting (RateLimitSettings, when a server turns it on)
    # allows 10 requests per second: stay under it unless rules.yaml says otherwise.
    default_rate_limit = "10/s"

    def log_only_reason(self) -> str | None:
        return None if self.config.url.get_secret_value() else "no url configured"

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def close(self) -> None:
        await self._session.close()

    def payload(self, message: Message) -> dict[str, Any]:
        """The request body. Mattermost renders ``text`` as Markdown: the title, if the
        template has one, becomes a bold first line."""
        text = message.text
        if message.title and not text.startswith(message.title):
            text = f"**{message.title}**\n{text}" if text else f"**{message.title}**"
        body: dict[str, Any] = {"text": text}
        for key in ("username", "icon_url", "channel"):
            value = getattr(self.config, key)
            if value:
                body[key] = value
        return body

    def _mask_key(self, text: str) -> str:
        """router masks the whole URL wherever it appears; a receiver may echo just the
        key (``/hooks/<key>``), so mask that too before it reaches a dead letter."""
        key = self.config.url.get_secret_value().rstrip("/").rsplit("/", 1)[-1]
        return text.replace(key, "***") if len(key) >= 8 else text

    async def send(self, message: Message) -> None:
        url = self.config.url.get_secret_value()
        try:
            async with self._session.post(url, json=self.payload(message)) as resp:
                if 200 <= resp.status < 300:
                    return
                detail = self._mask_key((await resp.text(errors="replace"))[:200].strip())
                error = f"HTTP {resp.status} {resp.reason or ''}".strip()
                error = f"{error}: {detail}" if detail else error
                if resp.status == 429 or resp.status >= 500:
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise RetryableError(error, retry_after=retry_after)
                raise PermanentError(error)
        except aiohttp.ClientError as exc:  # refused, reset, DNS: the server may come back
            raise RetryableError(f"{type(exc).__name__}: {exc}") from None


@hookimpl
def register_channels(register: Callable[[type[Channel]], None]) -> None:
    """Provide the ``mattermost`` channel type."""
    register(MattermostChannel)
