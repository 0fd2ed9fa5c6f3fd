"""Running the sources declared in rules.yaml: one supervised task per source, the host
each is handed (``router.sources.SourceHost``), and the gate to the durable inbox
they share with its back-pressure.

The HTTP edge starts a ``SourceManager`` with the service and calls ``apply`` after
every reload; nothing here knows about HTTP.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from router.events import ParsedEvent, parse_body
from router.metrics import Metrics
from router.rules import SourceDef
from router.sources import IngestUnavailable, Source, Submitted
from router.store import Store

log = logging.getLogger(__name__)

__all__ = ["IngestGate", "SourceManager", "SourceStatus"]

#: Seconds sources hold back after the store failed, before trying again.
STORE_PAUSE = 5.0
#: Longest pause between restarts of a source whose ``run`` keeps raising.
MAX_RESTART_DELAY = 60.0


class IngestGate:
    """Commits the events sources submit, as ``POST /events`` does, and holds them back
    (``IngestUnavailable``) while the service drains or the store fails."""

    def __init__(
        self,
        store: Store,
        *,
        dedupe_window: float,
        wake: Callable[[], None],
        draining: asyncio.Event,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.dedupe_window = dedupe_window
        self.wake = wake
        self.draining = draining
        self.metrics = metrics
        self._paused_until = 0.0

    def unavailable(self) -> IngestUnavailable | None:
        """Why events cannot be taken now, or None."""
        if self.draining.is_set():
            return IngestUnavailable("the router is draining", retry_after=STORE_PAUSE)
        left = self._paused_until - time.monotonic()
        if left > 0:
            return IngestUnavailable("the store failed; holding back", retry_after=left)
        return None

    async def submit(self, source: str, events: list[ParsedEvent]) -> list[Submitted]:
        refusal = self.unavailable()
        if refusal is not None:
            raise refusal
        try:
            answers = await self.store.accept_events(
                [(e.id, e.name, e.payload) for e in events],
                dedupe_window=self.dedupe_window,
                now=time.time(),
            )
        except Exception as exc:  # a full disk, a lost database: hold every source back
            log.error("events of source %r not stored: %s: %s", source, type(exc).__name__, exc)
            self.metrics.store_failed.inc()
            self._paused_until = time.monotonic() + STORE_PAUSE
            raise IngestUnavailable(
                f"the store failed ({type(exc).__name__})", retry_after=STORE_PAUSE
            ) from None
        self.wake()
        duplicates = sum(answer.duplicate for answer in answers)
        counter = self.metrics.source_events
        counter.labels(source, "accepted").inc(len(answers) - duplicates)
        if duplicates:
            counter.labels(source, "duplicate").inc(duplicates)
        if log.isEnabledFor(logging.INFO):
            for event, answer in zip(events, answers, strict=True):
                log.info(
                    "event duplicate" if answer.duplicate else "event accepted",
                    extra={"event_id": answer.id, "event_name": event.name, "source": source},
                )
        return [Submitted(answer.id, answer.duplicate) for answer in answers]

    async def wait_until_ready(self) -> None:
        # Polled: the store's pause is a deadline, not an event anyone sets.
        while (refusal := self.unavailable()) is not None:  # noqa: ASYNC110
            await asyncio.sleep(min(refusal.retry_after, 1.0))


@dataclass
class SourceStatus:
    """What ``/readyz`` and the status page show about one source."""

    name: str
    type: str
    state: str = "starting"
    detail: str = ""
    since: float = field(default_factory=time.time)
    restarts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "state": self.state,
            "detail": self.detail,
            "since": self.since,
            "restarts": self.restarts,
        }


class _Host:
    """The ``SourceHost`` one source is handed."""

    def __init__(
        self, status: SourceStatus, gate: IngestGate, metrics: Metrics, max_items: int
    ) -> None:
        self.name = status.name
        self.log = logging.getLogger(f"router.source.{status.name}")
        self._status = status
        self._gate = gate
        self._metrics = metrics
        self._max_items = max_items

    def parse(self, data: bytes) -> list[ParsedEvent]:
        return parse_body(data, ndjson=False, max_items=self._max_items)

    async def submit(self, events: list[ParsedEvent]) -> list[Submitted]:
        return await self._gate.submit(self.name, events)

    async def wait_until_ready(self) -> None:
        await self._gate.wait_until_ready()

    def count(self, outcome: str, n: int = 1) -> None:
        self._metrics.source_messages.labels(self.name, outcome).inc(n)

    def set_state(self, state: str, detail: str = "") -> None:
        status = self._status
        if (state, detail) == (status.state, status.detail):
            return
        level = logging.INFO if state in ("running", "waiting", "stopped") else logging.WARNING
        self.log.log(level, "source %r is %s%s", self.name, state, f": {detail}" if detail else "")
        status.state, status.detail, status.since = state, detail, time.time()
        self._metrics.source_running.labels(self.name).set(1 if state == "running" else 0)


@dataclass
class _Running:
    definition: SourceDef
    status: SourceStatus
    task: asyncio.Task[None] | None


class SourceManager:
    """Starts, supervises and stops the sources; ``apply`` makes the running set match
    the rules file, touching only the sources that were added, removed or changed."""

    def __init__(self, gate: IngestGate, metrics: Metrics, *, max_items: int) -> None:
        self.gate = gate
        self.metrics = metrics
        self.max_items = max_items
        self._running: dict[str, _Running] = {}

    def status(self) -> dict[str, dict[str, Any]]:
        """Each source's state, by name."""
        return {name: r.status.as_dict() for name, r in sorted(self._running.items())}

    async def apply(self, definitions: Mapping[str, SourceDef]) -> None:
        """Stop sources that are gone or changed, start new and changed ones."""
        for name in list(self._running):
            running = self._running[name]
            if definitions.get(name) != running.definition or running.task is None:
                await self._stop(name)
        for name, definition in definitions.items():
            if name not in self._running:
                self._start(name, definition)

    async def stop_all(self) -> None:
        for name in list(self._running):
            await self._stop(name)

    def _start(self, name: str, definition: SourceDef) -> None:
        status = SourceStatus(name, definition.type.name)
        host = _Host(status, self.gate, self.metrics, self.max_items)
        try:
            source = definition.type.cls(name, definition.config)
        except Exception as exc:  # the plugin's own code: it never stops the others
            log.exception("source %r (plugin %r) failed to start", name, definition.type.plugin)
            host.set_state("failed", f"cannot start: {type(exc).__name__}: {exc}")
            self._running[name] = _Running(definition, status, None)
            return
        task = asyncio.get_running_loop().create_task(
            self._supervise(source, host, definition), name=f"router-source-{name}"
        )
        self._running[name] = _Running(definition, status, task)
        log.info("source %r (%s) started", name, definition.type.name)

    async def _supervise(self, source: Source, host: _Host, definition: SourceDef) -> None:
        status = host._status
        while True:
            try:
                await source.run(host)
                host.set_state("stopped", "run returned")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status.restarts += 1
                delay = min(MAX_RESTART_DELAY, 2.0 ** min(status.restarts, 6))
                log.exception(
                    "source %r (plugin %r) failed; restarting in %g s",
                    source.name,
                    definition.type.plugin,
                    delay,
                )
                host.set_state("failed", f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)

    async def _stop(self, name: str) -> None:
        running = self._running.pop(name)
        if running.task is not None:
            running.task.cancel()
            await asyncio.gather(running.task, return_exceptions=True)
        # Set once running: a source that never ran has no child to remove.
        with contextlib.suppress(KeyError):
            self.metrics.source_running.remove(name)
        log.info("source %r stopped", name)
