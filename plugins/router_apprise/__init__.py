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

from pydantic import Field, SecretStr, field_validator

from router import Channel, ChannelConfig, Message, RetryableError, hookimpl

__version__ = "0.1.0"

MISSING = "the apprise package is not installed: pip install 'router[apprise]'"


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
        # Apprise's debug lines, and those of urllib3 under it (requests), name the URLs
        # they post to, tokens in the path included: keep both above debug.
        for name in ("apprise", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._apprise = apprise.Apprise()
        for url in self.config.urls:
            self._apprise.add(url.get_secret_value())

    def body(self, message: Message) -> str:
        """The text, with the ``link`` block as an "Open in Canvas" line."""
        text = message.text or message.title or message.event_name
        link = message.blocks.get("link", "").strip()
        return f"{text}\n\nOpen in Canvas: {link}" if link else text

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
