"""The built-in ``webhook`` channel: POST JSON to a URL, signed per Standard Webhooks.

Written exactly as a third-party plugin would be: it registers through the
``router`` entry-point group and uses only the public ``router`` API.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator
from standardwebhooks import Webhook

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


class WebhookConfig(ChannelConfig):
    """Settings of a ``type: webhook`` channel."""

    url: str = Field("", description="receiver URL; empty means log what would be sent")
    secret: SecretStr | None = Field(None, description="Standard Webhooks secret (whsec_...)")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")
    body: Literal["message", "event"] = Field(
        "message", description="send the rendered message (default) or the raw event"
    )

    @field_validator("secret")
    @classmethod
    def _usable_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # "${SECRET:-}" left empty: send unsigned
        try:
            Webhook(value.get_secret_value())
        except Exception:
            raise ValueError("must be a base64 Standard Webhooks secret (whsec_...)") from None
        return value


class WebhookChannel(Channel):
    """POSTs JSON; 2xx is delivered, 408/429/5xx and network errors retry, other 4xx fail."""

    type = "webhook"
    Config = WebhookConfig
    config: WebhookConfig

    def log_only_reason(self) -> str | None:
        return None if self.config.url else "no url configured"

    async def open(self) -> None:
        self._signer = (
            Webhook(self.config.secret.get_secret_value()) if self.config.secret else None
        )
        # No cookie jar: a receiver's cookie must not follow one delivery to the next.
        # No timeout of the session's own: the router bounds every send with the
        # channel's ``timeout:``, and a second timer per request cost 5 % of a send.
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout()
        )

    async def close(self) -> None:
        await self._session.close()

    @classmethod
    def renders_message(cls, config: ChannelConfig) -> bool:
        return not (isinstance(config, WebhookConfig) and config.body == "event")

    def payload(self, message: Message) -> bytes:
        """The request body: the raw event (``body: event``), else the template's
        ``json`` block if it has one, else an envelope."""
        if self.config.body == "event":
            return message.event_json
        if "json" in message.blocks:
            try:
                orjson.loads(message.blocks["json"])
            except orjson.JSONDecodeError as exc:
                raise PermanentError(f"template block 'json' is not valid JSON: {exc}") from None
            return message.blocks["json"].encode()
        return orjson.dumps(
            {
                "id": message.key,
                "event_id": message.event_id,
                "event_name": message.event_name,
                "rule": message.rule,
                "channel": message.channel,
                "title": message.title,
                "text": message.text,
                "event": orjson.Fragment(message.event_json),  # as stored: not re-encoded
            }
        )

    async def send(self, message: Message) -> None:
        payload = self.payload(message)
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            **self.config.headers,
            "webhook-id": message.key,
            "webhook-timestamp": str(int(now.timestamp())),
        }
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(message.key, now, payload.decode())
        try:
            async with self._session.post(self.config.url, data=payload, headers=headers) as resp:
                if 200 <= resp.status < 300:
                    return
                detail = (await resp.text(errors="replace"))[:200].strip()
                error = f"HTTP {resp.status} {resp.reason or ''}".strip()
                error = f"{error}: {detail}" if detail else error
                if resp.status in (408, 429) or resp.status >= 500:
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise RetryableError(error, retry_after=retry_after)
                raise PermanentError(error)
        except aiohttp.ClientError as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from None


@hookimpl
def register_channels(register: Callable[[type[Channel]], None]) -> None:
    """Provide the ``webhook`` channel type."""
    register(WebhookChannel)
