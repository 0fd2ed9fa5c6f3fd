"""The source contract: the base class a source plugin subclasses, and the host it is
handed to put events into the router's durable inbox.

A source pulls events from somewhere (an SQS queue, a message bus) and submits them
with ``await host.submit(events)``, which returns only once they are committed (the
guarantee ``POST /events`` gives with its 202), answering accepted or duplicate per
event. Only then may the source acknowledge them upstream (delete the SQS messages).
When the router cannot take events (the store fails, the service is draining),
``submit`` raises ``IngestUnavailable``: leave the events upstream and wait with
``await host.wait_until_ready()`` before receiving more.
"""

import logging
from dataclasses import dataclass
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

__all__ = [
    "BadRequest",
    "IngestUnavailable",
    "InvalidEvents",
    "ItemError",
    "ParsedEvent",
    "Source",
    "SourceConfig",
    "SourceHost",
    "Submitted",
]


# What a source submits and what parsing raises. They live here, in the plugin
# contract, and ``router.events`` (the parser) uses them: the contract imports nothing
# of the engine.


@dataclass(slots=True)
class ParsedEvent:
    """An accepted event, ready to store: its identity, name and canonical JSON.
    (Built once per event on the hot path, after validation: a plain dataclass, not a
    frozen one, which would cost several times as much to build.)"""

    id: str
    name: str
    payload: bytes


class ItemError(BaseModel):
    """One problem with one item of a request body."""

    index: int
    field: str
    message: str


class BadRequest(Exception):
    """The body cannot be read at all (HTTP 400): malformed JSON or NDJSON."""


class InvalidEvents(Exception):
    """Valid JSON that is not a valid event or batch (HTTP 422), every problem listed."""

    def __init__(self, errors: list[ItemError]) -> None:
        super().__init__("; ".join(f"[{e.index}] {e.field}: {e.message}" for e in errors))
        self.errors = errors


class SourceConfig(BaseModel):
    """Base for a source's config model: unknown keys are errors, so typos surface in
    ``router validate``. Declare credentials as ``SecretStr``: the router masks them."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Submitted:
    """The router's answer for one submitted event: its id and whether it was a repeat."""

    id: str
    duplicate: bool


class IngestUnavailable(Exception):
    """The router cannot take events now (store failing, draining): keep them upstream.

    :param retry_after: seconds after which trying again makes sense.
    """

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SourceHost(Protocol):
    """What the router hands a running source (one host per source)."""

    #: The source's name in rules.yaml.
    name: str
    #: A logger named after the source; its lines carry the source's name.
    log: logging.Logger

    def parse(self, data: bytes) -> list[ParsedEvent]:
        """Parse one payload (JSON: a Canvas event, an array of them, or a Caliper
        envelope) into events. Raises ``BadRequest`` (not JSON) or ``InvalidEvents``
        (JSON, but not events; every problem listed)."""
        ...

    async def submit(self, events: list[ParsedEvent]) -> list[Submitted]:
        """Commit events to the inbox; returns once they are durable, one answer per
        event in order. Raises ``IngestUnavailable`` when the router cannot take them."""
        ...

    async def wait_until_ready(self) -> None:
        """Return once ``submit`` may succeed again (back-pressure); at once if it may."""
        ...

    def count(self, outcome: str, n: int = 1) -> None:
        """Count messages by outcome (``received``, ``invalid``, ``deleted``, ...) in
        ``router_source_messages_total{source, outcome}``."""
        ...

    def set_state(self, state: str, detail: str = "") -> None:
        """Report the source's state (``running``, ``waiting``, ``failing``, ...) for
        ``/readyz`` and the status page; ``detail`` says why. Never put secrets in it."""
        ...


class Source:
    """Base class of every source type, built-in or third-party.

    Subclasses set ``type`` (the ``type:`` name under ``sources:`` in rules.yaml) and
    ``Config`` (a ``SourceConfig`` subclass), and implement ``run``. One instance
    exists per source declared in rules.yaml; a reload that changes its config stops
    it (``run`` is cancelled) and starts a new one.
    """

    type: ClassVar[str]
    Config: ClassVar[type[SourceConfig]] = SourceConfig

    def __init__(self, name: str, config: SourceConfig) -> None:
        self.name = name
        self.config = config

    @classmethod
    def warnings(cls, config: SourceConfig) -> list[str]:
        """What ``router validate`` should warn about in this config (not errors)."""
        return []

    async def run(self, host: SourceHost) -> None:
        """Receive events and ``host.submit`` them until cancelled.

        Handle what you expect (a network error: report it with ``host.set_state``,
        wait and retry). If ``run`` raises, the router logs it with the source's name,
        marks the source ``failed`` and starts ``run`` again after a pause; the other
        sources and ``POST /events`` never notice.
        """
        raise NotImplementedError
