"""The outbox: one owner of a delivery from the moment routing creates it to its outcome.

- The stored message: what routing writes for each delivery (``encode_message``;
  ``NOT_RENDERED`` for a channel that sends the raw event; ``UNRENDERABLE`` for one born
  dead) and how the dispatcher, the CLI and the admin API read it back
  (``message_for``, ``is_raw_event``).
- Delivery keys, stable across retries, replays and restarts (``delivery_key``,
  ``digest_key``).
- The log-only decision (``log_only_reason``) and the other question routing asks a
  channel plugin (``renders_message``); a plugin that raises in either is named by
  ``PluginRaised``.
- ``Outcomes.report``: the one place where every outcome, attempted by the dispatcher or
  born dead in routing, is logged, counted and passed to ``delivery_finished``.
"""

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from pydantic import ValidationError

from router.channels import Channel, DeliveryOutcome, Message
from router.metrics import Metrics
from router.rules import ChannelDef
from router.store import DeliveryJob
from router.templates import Rendered

log = logging.getLogger(__name__)

__all__ = [
    "NOT_RENDERED",
    "UNRENDERABLE",
    "DamagedMessage",
    "Outcomes",
    "PluginRaised",
    "delivery_key",
    "digest_key",
    "encode_message",
    "is_raw_event",
    "log_only_reason",
    "message_for",
    "renders_message",
]

#: The stored message of a channel that sends the raw event (no template rendered).
NOT_RENDERED = b'{"template":null}'
#: The stored message of a delivery born dead: its error says why there is none.
UNRENDERABLE = b"{}"


# -- keys ------------------------------------------------------------------------------


def delivery_key(event_id: str, rule: str, channel: str) -> str:
    """The idempotency key of a delivery: stable across retries, replays and restarts."""
    return f"{event_id}:{rule}:{channel}"


def digest_key(digest_id: int, rule: str, channel: str) -> str:
    """The idempotency key of a digest group's delivery."""
    return f"digest-{digest_id}:{rule}:{channel}"


# -- the stored message ------------------------------------------------------------------


def encode_message(rendered: Rendered) -> bytes:
    """The stored form of a rendered message."""
    return orjson.dumps(
        {
            "template": rendered.template,
            "title": rendered.title,
            "text": rendered.text,
            "blocks": rendered.blocks,
        }
    )


def is_raw_event(message: Mapping[str, Any]) -> bool:
    """Whether a stored message (parsed) is ``NOT_RENDERED``: its channel sends the
    raw event."""
    return "template" in message and message["template"] is None


class DamagedMessage(ValueError):
    """A stored delivery that cannot make a ``Message``: no retry can mend it."""


def message_for(job: DeliveryJob, attempt: int) -> tuple[Message, bool]:
    """The ``Message`` of attempt number ``attempt`` at ``job``, and whether its channel
    sends the raw event. Raises ``DamagedMessage``."""
    try:
        stored = orjson.loads(job.message)
        # Validated, though the router wrote these records itself: pydantic-core
        # checks ten fields in less time than model_construct copies them.
        message = Message(
            key=job.key,
            event_id=job.event_id,
            event_name=job.event_name,
            rule=job.rule,
            channel=job.channel,
            attempt=attempt,
            title=stored.get("title", ""),
            text=stored.get("text", ""),
            blocks=stored.get("blocks", {}),
            event_json=job.event,
        )
    except orjson.JSONDecodeError as exc:
        raise DamagedMessage(f"stored message is damaged: {exc}") from None
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise DamagedMessage(f"stored message is damaged: {fields}") from None
    return message, is_raw_event(stored)


# -- what the router asks a channel plugin -------------------------------------------------


class PluginRaised(Exception):
    """A channel plugin raised in one of its own methods; the text names both."""

    def __init__(self, plugin: str, method: str, exc: BaseException) -> None:
        super().__init__(
            f"channel plugin {plugin!r} raised {type(exc).__name__} in {method}(): {exc}"
        )
        self.plugin = plugin
        self.method = method


def log_only_reason(definition: ChannelDef, instance: Channel) -> str | None:
    """Why this channel logs what it would send instead of sending it, or None when it
    sends for real: ``log_only: true`` in rules.yaml, else the plugin's own
    ``log_only_reason()``. Raises ``PluginRaised`` when that raises."""
    if definition.options.log_only:
        return "log_only: true"
    try:
        return instance.log_only_reason()
    except Exception as exc:
        raise PluginRaised(definition.type.plugin, "log_only_reason", exc) from exc


def renders_message(definition: ChannelDef) -> bool:
    """Whether routing renders a template for this channel (False: it sends the raw
    event). Raises ``PluginRaised`` when the plugin's ``renders_message`` raises."""
    try:
        return definition.type.cls.renders_message(definition.config)
    except Exception as exc:
        raise PluginRaised(definition.type.plugin, "renders_message", exc) from exc


# -- outcomes ------------------------------------------------------------------------------


class Outcomes:
    """Where every delivery outcome goes: one log line, the delivery metrics, and every
    plugin's ``delivery_finished`` (``observe`` returns the plugins that raised)."""

    def __init__(
        self,
        metrics: Metrics,
        observe: Callable[[DeliveryOutcome], list[str]] | None = None,
    ) -> None:
        self.metrics = metrics
        self.observe = observe

    def report(self, outcome: DeliveryOutcome, *, latency: float | None = None) -> None:
        """Log, count and tell the plugins what became of one delivery attempt, once its
        outcome is durable. Attempt 0: the delivery was born dead (nothing attempted).
        ``latency``: seconds from the event's acceptance to its delivery."""
        status = outcome.status
        level = logging.WARNING if status in ("retry", "dead") else logging.INFO
        if log.isEnabledFor(level):  # building the fields costs more than this check
            log.log(
                level,
                f"delivery {status}",
                extra={
                    "event_id": outcome.event_id,
                    "rule": outcome.rule,
                    "channel": outcome.channel,
                    "key": outcome.key,
                    "attempt": outcome.attempt,
                    "error": outcome.error,
                    "retry_in": None if outcome.retry_in is None else round(outcome.retry_in, 3),
                },
            )
        if outcome.attempt:  # born dead: no attempt to count (router_render_errors does)
            self.metrics.delivery(outcome.channel, status, outcome.attempt, latency)
        if self.observe is not None:
            for plugin in self.observe(outcome):
                self.metrics.plugin_errors.labels(plugin, "delivery_finished").inc()
