"""The built-in ``apprise`` channel: send through Apprise to any of the 100+ services it
knows (``pip install 'router[apprise]'``).

Written exactly as a third-party plugin would be: it registers through the ``router``
entry-point group and uses only the public ``router`` API. Without the apprise package
the plugin still loads; a rules file using ``type: apprise`` then fails validation,
saying what to install.
"""

import asyncio
import functools
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from router import Channel, ChannelConfig, Message, RetryableError, hookimpl

__version__ = "0.1.0"

MISSING = "the apprise package is not installed: pip install 'router[apprise]'"


class HideURLs(logging.Filter):
    """Masks the configured Apprise URLs, and their parts, in Apprise's own log lines
    (it logs on the one ``apprise`` logger, and some lines name a URL it was given)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def add(self, url: str) -> None:
        """Mask ``url``, its user, password, host, path and query from now on."""
        parts = urlsplit(url)
        found = {url, parts.netloc, parts.path, parts.query, parts.username, parts.password}
        found = {s for s in found - {None} if len(s) >= 4 and s.strip("/")} | set(self.secrets)
        self.secrets = sorted(found, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            for secret in self.secrets:
                text = text.replace(secret, "***")
            record.msg, record.args = text, ()
        return True


HIDE_URLS = HideURLs()
logging.getLogger("apprise").addFilter(HIDE_URLS)


@functools.cache
def load_apprise() -> ModuleType | None:
    """The apprise module, or None when the optional extra is not installed. Imported
    on first use, not with the plugin: it takes a while, and most rules never use it."""
    try:
        import apprise
    except ImportError:
        return None
    return apprise


class AppriseConfig(ChannelConfig):
    """Settings of a ``type: apprise`` channel."""

    urls: list[SecretStr] = Field(
        default_factory=list,
        validate_default=True,  # say that apprise is missing even with no urls
        description="Apprise URLs (credentials: each may hold tokens); empty ones are skipped,"
        " none left: log only",
    )

    @field_validator("urls", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("urls")
    @classmethod
    def _understood(cls, value: list[SecretStr]) -> list[SecretStr]:
        apprise = load_apprise()
        if apprise is None:
            raise ValueError(MISSING)
        urls = [SecretStr(url.get_secret_value().strip()) for url in value]
        for index, url in enumerate(urls):
            text = url.get_secret_value()
            HIDE_URLS.add(text)  # before Apprise parses it: it may log what it cannot parse
            if text and apprise.Apprise.instantiate(text) is None:
                scheme = text.split("://", 1)[0] if "://" in text else "(none)"
                # Never the URL itself: it is a credential.
                raise ValueError(
                    f"urls[{index}]: Apprise does not understand it (scheme {scheme!r})"
                )
        return [url for url in urls if url.get_secret_value()]


class AppriseChannel(Channel):
    """Sends the title and text (plus the ``link`` block) to every URL with
    ``Apprise.notify``, in a worker thread (Apprise blocks). Apprise answers only
    "some failed": every failure is retryable, and a retry sends to every URL again."""

    type = "apprise"
    Config = AppriseConfig
    config: AppriseConfig

    def log_only_reason(self) -> str | None:
        return None if self.config.urls else "no Apprise urls configured"

    async def open(self) -> None:
        apprise = load_apprise()
        if apprise is None:  # validation already refused this; kept for direct use
            raise RuntimeError(MISSING)
        # urllib3 (under requests, under Apprise) logs every URL it posts to at debug,
        # tokens in the path included, on loggers of its own: keep it above debug.
        logging.getLogger("urllib3").setLevel(logging.INFO)
        self._apprise = apprise.Apprise()
        for url in self.config.urls:
            HIDE_URLS.add(url.get_secret_value())
            self._apprise.add(url.get_secret_value())

    def body(self, message: Message) -> str:
        """The text, with the ``link`` block as an "Open in Canvas" line when the text
        does not show it already."""
        text = message.text or message.title or message.event_name
        link = message.blocks.get("link", "").strip()
        usable = urlsplit(link).scheme in ("http", "https") and " " not in link
        if usable and link not in text:  # unless the text already shows it
            return f"{text}\n\nOpen in Canvas: {link}"
        return text

    async def send(self, message: Message) -> None:
        ok = await asyncio.to_thread(
            self._apprise.notify, body=self.body(message), title=message.title
        )
        if not ok:
            count = len(self.config.urls)
            raise RetryableError(
                f"Apprise could not deliver to every one of its {count} URL(s)"
                " (it does not say which or why)"
            )


@hookimpl
def register_channels(register: Callable[[type[Channel]], None]) -> None:
    """Provide the ``apprise`` channel type (usable once apprise is installed)."""
    register(AppriseChannel)
