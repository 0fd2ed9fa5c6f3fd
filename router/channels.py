"""The channel contract: the base class a channel plugin subclasses, the message it
receives, and the errors it raises to say whether a failed delivery may be retried."""

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cached_property
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "HOST_KEYS",
    "Channel",
    "ChannelConfig",
    "DeliveryError",
    "DeliveryOutcome",
    "Message",
    "PermanentError",
    "RetryableError",
    "retry_after_seconds",
]


class DeliveryError(Exception):
    """Base class of the errors a channel's ``send`` raises on purpose.

    The text (``str(exc)``) is stored with the delivery and shown in the dead-letter
    queue, so make it say what the receiver answered; never put secrets in it.
    """


class RetryableError(DeliveryError):
    """The delivery may succeed later (5xx, 429, timeout, connection refused, SMTP 4xx).

    :param retry_after: seconds the receiver asked us to wait (``Retry-After``), if any.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """Retrying cannot help (4xx, bad address, rejected payload): dead-letter at once."""


#: Keys of a channel in rules.yaml that the router itself reads; a plugin's config
#: model must not declare them (they would never reach it). Optional to use: the router
#: checks this when a plugin registers a channel; a plugin never needs to import it.
HOST_KEYS = (
    "type",
    "concurrency",
    "timeout",
    "max_attempts",
    "log_only",
    "rate_limit",
    "circuit_breaker",
    "mute",
    "during_mute",
)


class ChannelConfig(BaseModel):
    """Base for a channel's config model: unknown keys are errors, so typos surface
    in ``router validate`` instead of being ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Message(BaseModel):
    """One rendered notification for one channel, as handed to ``Channel.send``.

    ``key`` is stable across retries and replays (event id + rule + channel): pass it
    to receivers that can drop repeats (webhooks send it as ``webhook-id``).
    ``blocks`` holds every block the template defined, rendered (``title``, ``text``,
    ``html``, ``json``, ``slack_blocks``, ...); ``text`` is the ``text`` block, or the
    whole template when it defines none.

    The event comes two ways: ``event``, a dict parsed on first use, and
    ``event_json``, the event as the router stored it (compact JSON with sorted keys).
    ``event`` is all a channel needs; ``event_json`` is optional, for speed: a channel
    that forwards the event unchanged sends it (or embeds it with ``orjson.Fragment``)
    and never pays for parsing and serialising it again. Build a message by hand with
    either ``event={...}`` or ``event_json=b"..."``.
    """

    model_config = ConfigDict(frozen=True)

    key: str
    event_id: str
    event_name: str
    rule: str
    channel: str
    attempt: int = 1
    title: str = ""
    text: str = ""
    blocks: dict[str, str] = Field(default_factory=dict)
    event_json: bytes = b"{}"

    @model_validator(mode="before")
    @classmethod
    def _event_as_json(cls, data: Any) -> Any:
        if isinstance(data, dict) and "event" in data:
            if "event_json" in data:
                raise ValueError("give event or event_json, not both")
            data = {**data, "event_json": orjson.dumps(data["event"])}
            del data["event"]
        return data

    @cached_property
    def event(self) -> dict[str, Any]:
        """The event, parsed from ``event_json`` when first asked for."""
        return orjson.loads(self.event_json)  # type: ignore[no-any-return]


class Channel:
    """Base class of every channel type, built-in or third-party.

    Subclasses set ``type`` (the ``type:`` name in rules.yaml) and ``Config`` (a
    ``ChannelConfig`` subclass), and implement ``send``. One instance exists per
    channel declared in rules.yaml; ``open`` and ``close`` bracket its life and are
    the place for a shared HTTP session or client.
    """

    type: ClassVar[str]
    Config: ClassVar[type[ChannelConfig]] = ChannelConfig
    #: The rate limit used when rules.yaml sets none, e.g. "1/s" for Slack's
    #: documented limit of about one message per second per channel.
    default_rate_limit: ClassVar[str | None] = None

    def __init__(self, name: str, config: ChannelConfig, *, timeout: float = 30.0) -> None:
        self.name = name
        self.config = config
        #: Seconds the router allows one ``send`` (the channel's ``timeout:``); a
        #: client library with its own timeouts should use this.
        self.timeout = timeout

    @classmethod
    def renders_message(cls, config: ChannelConfig) -> bool:
        """Whether a channel with this config sends the rendered message.

        Optional, for speed only: the default (True) is always correct. Return False
        when it sends only the raw event (``message.event``): routing then skips the
        template for it, and ``title``, ``text`` and ``blocks`` stay empty. Rendering is
        most of what routing costs, so say so when it is wasted. An exception here makes
        the delivery a dead letter naming the plugin.
        """
        return True

    def log_only_reason(self) -> str | None:
        """Return why this channel cannot really send (e.g. "no url configured"), or None.

        When a reason is given the router logs what it would have sent and records
        the delivery as ``logged`` instead of calling ``send``: the example rules run
        on a fresh machine without any credentials. Asked once, after ``open``; an
        exception here makes the channel's deliveries fail (retried, then dead letters)
        with the plugin named.
        """
        return None

    async def open(self) -> None:
        """Acquire resources (sessions, clients) before the first ``send``. An exception
        here makes the channel's deliveries fail (retried, then dead letters) with the
        plugin named; the other channels keep working."""

    async def close(self) -> None:
        """Release what ``open`` acquired; called once on shutdown or rules reload. An
        exception here is logged with the plugin's name and stops nothing."""

    async def send(self, message: Message) -> None:
        """Deliver ``message`` or raise ``RetryableError`` / ``PermanentError``.

        Any other exception counts as retryable and is logged with the plugin's name.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one delivery attempt (passed to the ``delivery_finished`` hook).

    ``attempt`` is 1 for the first try; 0 for a delivery born dead (status ``dead``):
    its message could not be made (a template error, or the plugin's
    ``renders_message`` raised), so nothing was attempted.
    """

    key: str
    event_id: str
    rule: str
    channel: str
    channel_type: str
    attempt: int
    status: Literal["delivered", "logged", "retry", "dead"]
    error: str | None = None
    retry_in: float | None = None


def retry_after_seconds(value: str | None) -> float | None:
    """Parse an HTTP ``Retry-After`` header (delta-seconds or HTTP-date) into seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())
