"""The built-in ``slack`` channel: post with a bot token (``chat.postMessage``) or
to an incoming webhook, through slack-sdk.

Written as a third-party plugin would be: only the public ``router`` API. slack-sdk's
own retry handlers are disabled, so every retry is a durable one in the router's store.
"""

import re
from collections.abc import Callable, Mapping
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import Field, SecretStr, model_validator
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

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

RETRYABLE_CODES = frozenset(
    ("ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout")
)
_CODE = re.compile(r"[a-z0-9_]{1,64}")  # incoming webhooks answer e.g. "no_service"


class SlackConfig(ChannelConfig):
    """Settings of a ``type: slack`` channel: ``token`` + ``channel``, or ``url``."""

    token: SecretStr | None = Field(None, description="bot token (xoxb-...); empty: log only")
    channel: str | None = Field(None, description="channel name (#courses) or id")
    url: SecretStr | None = Field(None, description="incoming webhook URL; empty: log only")
    base_url: str = Field(AsyncWebClient.BASE_URL, description="Slack Web API base URL")
    thread_ts: str | None = Field(None, description="post as a reply in this thread")
    username: str | None = None
    icon_emoji: str | None = None
    unfurl_links: bool = False

    @model_validator(mode="after")
    def _one_mode(self) -> Self:
        bot = [k for k in ("token", "channel") if getattr(self, k) is not None]
        url = self.url.get_secret_value() if self.url else ""
        if url and not url.startswith(("https://", "http://")):
            raise ValueError("'url' must be an http(s):// incoming webhook URL")
        if self.url is not None:
            extra = bot + [k for k in ("thread_ts", "username", "icon_emoji") if getattr(self, k)]
            if extra:
                keys = ", ".join(repr(k) for k in extra)
                raise ValueError(f"'url' (incoming webhook) cannot be combined with {keys}")
        elif not bot:
            raise ValueError("set 'token' and 'channel' (bot token) or 'url' (incoming webhook)")
        elif len(bot) == 1:
            missing = "channel" if bot == ["token"] else "token"
            raise ValueError(
                f"bot-token mode needs both 'token' and 'channel': {missing!r} is missing"
            )
        return self


def _error(status: int, code: str, headers: Mapping[str, str]) -> DeliveryError:
    """Map an HTTP status and a Slack error code to a retryable or permanent error."""
    text = f"slack error: {code}" if code else "slack error"
    if status != 200 or not code:
        text += f" (HTTP {status})"
    if status == 429 or status >= 500 or code in RETRYABLE_CODES:
        return RetryableError(text, retry_after=retry_after_seconds(headers.get("Retry-After")))
    return PermanentError(text)


class SlackChannel(Channel):
    """Posts ``text`` (or the title) plus Block Kit blocks from the ``slack_blocks``
    template block; 429/5xx/transient Slack errors and network errors retry, any other
    Slack error (channel_not_found, invalid_auth, ...) is permanent."""

    type = "slack"
    Config = SlackConfig
    default_rate_limit = "1/s"  # Slack allows about one message per second per channel
    config: SlackConfig

    def log_only_reason(self) -> str | None:
        if self.config.url is not None:
            return None if self.config.url.get_secret_value() else "no Slack webhook url configured"
        if not self.config.token or not self.config.token.get_secret_value():
            return "no Slack token configured"
        return None if self.config.channel else "no Slack channel configured"

    async def open(self) -> None:
        self._session = aiohttp.ClientSession()  # no timeout of its own: the router's applies
        token = self.config.token.get_secret_value() if self.config.token else ""
        url = self.config.url.get_secret_value() if self.config.url else ""
        # Kept out of error texts: the token, the webhook URL and its path (the secret part).
        self._secrets = sorted({token, url, urlsplit(url).path} - {"", "/"}, key=len, reverse=True)
        if self.config.url is not None:
            self._hook = AsyncWebhookClient(url, session=self._session, retry_handlers=[])
        else:
            self._client = AsyncWebClient(
                token, base_url=self.config.base_url, session=self._session, retry_handlers=[]
            )

    async def close(self) -> None:
        await self._session.close()

    def blocks(self, message: Message) -> list[Any] | None:
        """The Block Kit blocks from the ``slack_blocks`` template block, if any."""
        raw = message.blocks.get("slack_blocks", "").strip()
        if not raw:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise PermanentError(
                f"template block 'slack_blocks' is not valid JSON: {exc}"
            ) from None
        if isinstance(value, dict):
            value = value.get("blocks")
        if not isinstance(value, list):
            raise PermanentError(
                "template block 'slack_blocks' must be a list or {\"blocks\": [...]}"
            )
        return value

    async def send(self, message: Message) -> None:
        text, blocks = message.text or message.title, self.blocks(message)
        try:
            if self.config.url is None:
                await self._client.chat_postMessage(
                    channel=self.config.channel or "",
                    text=text,
                    blocks=blocks,
                    thread_ts=self.config.thread_ts,
                    username=self.config.username,
                    icon_emoji=self.config.icon_emoji,
                    unfurl_links=self.config.unfurl_links,
                )
                return
            resp = await self._hook.send(
                text=text, blocks=blocks, unfurl_links=self.config.unfurl_links
            )
        except SlackApiError as exc:
            response = exc.response  # a SlackResponse, or aiohttp's on an unparsable body
            data = getattr(response, "data", None)
            code = str(data.get("error") or "") if isinstance(data, dict) else ""
            status = getattr(response, "status_code", None) or getattr(response, "status", 0)
            raise self._clean(_error(status, code, getattr(response, "headers", {}))) from None
        except aiohttp.InvalidURL as exc:
            raise self._clean(PermanentError(f"{type(exc).__name__}: {exc}")) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._clean(RetryableError(f"{type(exc).__name__}: {exc}")) from None
        if not 200 <= resp.status_code < 300:
            body = (resp.body or "").strip()
            code = body if _CODE.fullmatch(body) else ""
            raise self._clean(_error(resp.status_code, code, resp.headers))

    def _clean(self, error: DeliveryError) -> DeliveryError:
        """Never let the token or webhook URL reach the stored error text."""
        text = str(error)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        error.args = (text,)
        return error


@hookimpl
def register_channels(register: Callable[[type[Channel]], None]) -> None:
    """Provide the ``slack`` channel type."""
    register(SlackChannel)
