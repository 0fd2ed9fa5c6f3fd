"""The dispatcher: attempts due deliveries through their channels, with a concurrency
limit per channel, timeouts, retries with exponential backoff and full jitter
(honouring ``Retry-After``), and dead letters for what cannot be delivered."""

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from router.breaker import CircuitBreaker
from router.channels import Channel, DeliveryOutcome, PermanentError, RetryableError
from router.metrics import Metrics
from router.outbox import DamagedMessage, Outcomes, PluginRaised, log_only_reason, message_for
from router.pacing import IngestPressure
from router.plugins import Plugins
from router.ratelimit import RateLimiter, parse_rate
from router.redact import Redactor
from router.rules import ChannelDef
from router.store import DeliveryJob, Store

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# Claim up to this many times a channel's concurrency at once: fewer, larger claims
# keep the store's commit latency off the delivery path.
PREFETCH = 4
RETRY_SLACK = 0.005


class Unknown(enum.Enum):
    """Not known yet: ask the store."""

    UNKNOWN = enum.auto()


UNKNOWN = Unknown.UNKNOWN


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again and when to give up."""

    max_attempts: int = 10
    max_age: float = 86400.0
    base: float = 1.0
    cap: float = 600.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))], but never sooner
        than the receiver's ``Retry-After``."""
        backoff = rng.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))
        if retry_after is not None:
            return max(backoff, min(retry_after, self.max_age))
        return backoff


@dataclass(slots=True)
class Attempted:
    """What one attempt came to, before it is recorded."""

    attempt: int
    error: str | None
    retry_after: float | None
    permanent: bool
    logged: bool


@dataclass
class ChannelRuntime:
    """A live channel: its definition, its instance and how many sends are in flight.

    ``broken``: why the channel cannot work (its plugin raised while it was set up);
    its deliveries fail with that error. ``log_only``: why it logs what it would send
    instead of sending (``outbox.log_only_reason``, decided once when it opens).
    """

    definition: ChannelDef
    instance: Channel
    broken: str | None = None
    log_only: str | None = None
    claimed: int = 0
    #: The last claim took every due job: claim again only when woken from outside
    #: (new jobs) or when the poll interval has passed (retries come due).
    drained: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    slots: asyncio.Semaphore = field(init=False)
    breaker: CircuitBreaker = field(init=False)
    limiter: RateLimiter | None = field(init=False)

    def __post_init__(self) -> None:
        options = self.definition.options
        self.slots = asyncio.Semaphore(options.concurrency)
        self.breaker = CircuitBreaker(options.circuit_breaker)
        rate = options.rate_limit
        default = self.definition.type.cls.default_rate_limit
        if "rate_limit" not in options.model_fields_set and default:
            rate = parse_rate(default)
        self.limiter = RateLimiter(rate) if rate else None

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def free(self) -> int:
        """How many more jobs may be claimed: a window of PREFETCH x concurrency."""
        return self.definition.options.concurrency * PREFETCH - self.claimed

    @property
    def wants_jobs(self) -> bool:
        """Whether a claim is worth a round trip: at least ``concurrency`` free."""
        return self.free >= self.definition.options.concurrency


async def open_channels(definitions: dict[str, ChannelDef]) -> dict[str, ChannelRuntime]:
    """Instantiate and open every channel, and decide whether it only logs. A plugin that
    raises here is isolated: its deliveries fail (and are retried, then dead-lettered)
    with the plugin named, while the other channels work."""
    runtimes = {}
    for name, definition in definitions.items():
        plugin = definition.type.plugin
        try:
            instance = definition.type.cls(
                name, definition.config, timeout=definition.options.timeout
            )
            await instance.open()
        except Exception as exc:
            log.exception("channel failed to open", extra={"channel": name, "plugin": plugin})
            runtimes[name] = ChannelRuntime(
                definition,
                Channel(name, definition.config),
                broken=f"channel plugin {plugin!r} failed to open: {type(exc).__name__}: {exc}",
            )
            continue
        try:
            runtimes[name] = ChannelRuntime(
                definition, instance, log_only=log_only_reason(definition, instance)
            )
        except PluginRaised as exc:
            log.exception("channel plugin raised", extra={"channel": name, "plugin": plugin})
            runtimes[name] = ChannelRuntime(definition, instance, broken=str(exc))
            await _close(runtimes[name])
    return runtimes


async def _close(runtime: ChannelRuntime) -> None:
    try:
        await runtime.instance.close()
    except Exception:
        log.exception(
            "channel failed to close",
            extra={"channel": runtime.name, "plugin": runtime.definition.type.plugin},
        )


async def close_channels(runtimes: dict[str, ChannelRuntime]) -> None:
    """Close every channel, logging (not raising) plugin failures."""
    for runtime in runtimes.values():
        if not runtime.broken:
            await _close(runtime)


class Dispatcher:
    """Background task that drives every delivery to an outcome."""

    def __init__(
        self,
        store: Store,
        plugins: Plugins,
        policy: RetryPolicy,
        redactor: Callable[[], Redactor],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        pressure: IngestPressure | None = None,
        outcomes: Outcomes | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.redactor = redactor
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics or Metrics()
        self.outcomes = outcomes or Outcomes(self.metrics, plugins.delivery_finished)
        self.pressure = pressure or IngestPressure(share=1.0)
        self.channels: dict[str, ChannelRuntime] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._next_retry: float | Unknown | None = UNKNOWN  # when the next retry is due
        # Time with at least one attempt in progress, for pacing (router/pacing.py).
        self._active = 0
        self._busy_since = 0.0
        self._worked = 0.0

    def wake(self) -> None:
        """Called when deliveries were created (or another replica says so)."""
        self._undrain()
        self._wake.set()

    def _undrain(self) -> None:
        for runtime in self.channels.values():
            runtime.drained = False

    async def run(self) -> None:
        """Claim and attempt due deliveries until ``drain`` is called.

        Store round trips are kept to what can find work: at a trickle of events,
        an empty claim after every delivery and a look for the next retry after every
        idle round would double the store traffic per delivery.
        """
        while not self._stopping:
            await self.pressure.give_way(self._take_worked())  # a burst: ingest first
            self._wake.clear()
            try:
                await self._claim_round()
                # The store is asked for the next retry once; later retries are the
                # ones this dispatcher records (_record keeps _next_retry).
                idle = not any(runtime.claimed for runtime in self.channels.values())
                if idle and self._next_retry is UNKNOWN:
                    self._next_retry = await self.store.next_due(list(self.channels))
            except Exception:
                log.exception("dispatcher round failed; retrying in 1s")
            timeout = POLL_SECONDS
            retry = self._next_retry
            now = self.clock()
            if isinstance(retry, float) and retry > now:
                # A little past it: a timer that fires a hair early would find the job
                # not yet due, and the next look would be a whole poll later.
                timeout = min(POLL_SECONDS, retry - now + RETRY_SLACK)
            for runtime in self.channels.values():
                probe_in = runtime.breaker.probe_in(now)
                if probe_in:  # (0: due now, and the claim round just looked)
                    timeout = min(timeout, probe_in + RETRY_SLACK)
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                self._undrain()  # time passed: retries may have come due
                if isinstance(retry, float) and retry <= self.clock():
                    self._next_retry = UNKNOWN

    async def _claim_round(self) -> None:
        for runtime in list(self.channels.values()):
            breaker = runtime.breaker
            if self._stopping:
                return
            probing = breaker.open
            if probing:
                # One probe at a time, and only once the jobs in hand went back.
                if runtime.claimed or not breaker.wants_probe(self.clock()):
                    continue
                limit = 1
            elif runtime.wants_jobs and not runtime.drained:
                limit = runtime.free
            else:
                continue
            lease = runtime.definition.options.timeout * PREFETCH + 30.0
            jobs = await self.store.claim_deliveries(
                runtime.name, limit, lease=lease, now=self.clock()
            )
            runtime.drained = len(jobs) < limit
            # (A claim made while the circuit was closed is no probe, even if the circuit
            # opened while the store answered: its jobs are held.)
            if probing and breaker.open and jobs:
                breaker.probe_id = jobs[0].id
            for job in jobs:
                runtime.claimed += 1
                task = asyncio.create_task(self._attempt(runtime, job))
                runtime.tasks.add(task)
                task.add_done_callback(runtime.tasks.discard)

    async def drain(self, grace: float) -> None:
        """Stop claiming, give in-flight sends ``grace`` seconds, then cancel the rest:
        their jobs stay in the store and resume on the next start."""
        self._stopping = True
        self._wake.set()
        tasks = [task for runtime in self.channels.values() for task in runtime.tasks]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning("shutdown: %d deliveries left for the next start", len(pending))

    async def _attempt(self, runtime: ChannelRuntime, job: DeliveryJob) -> None:
        working = False
        try:
            # The slot bounds sends to the channel, not the wait for the store: the
            # next send starts while this outcome is being committed.
            async with runtime.slots:
                if self._stopping:
                    return  # claimed but not started: left for the next start
                result = None
                if not runtime.breaker.holds(job.id):
                    self._started_work()
                    working = True
                    result = await self._send(runtime, job)
            if result is None:  # the channel's circuit is open: back to the store untried
                until = runtime.breaker.probe_at
                await self.store.hold_delivery(job.id, until=until, now=self.clock())
                self.metrics.held.labels(runtime.name).inc()
                return
            await self._record(runtime, job, result)  # work too, for the pacing
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recording a delivery outcome failed", extra={"key": job.key})
        finally:
            if working:
                self._finished_work()
            runtime.claimed -= 1
            # Not after every job (claims come in batches), and not when the last
            # claim found nothing more.
            if runtime.wants_jobs and not runtime.drained:
                self._wake.set()

    def _started_work(self) -> None:
        if self._active == 0:
            self._busy_since = time.perf_counter()
        self._active += 1

    def _finished_work(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._worked += time.perf_counter() - self._busy_since

    def _take_worked(self) -> float:
        """Seconds with attempts in progress since the last call (overlapping attempts
        count once)."""
        now = time.perf_counter()
        worked, self._worked = self._worked, 0.0
        if self._active:
            worked += now - self._busy_since
            self._busy_since = now
        return worked

    async def _watch_circuit(
        self, runtime: ChannelRuntime, job: DeliveryJob, result: Attempted, now: float
    ) -> None:
        """Open the channel's circuit after failures in a row; close it on a success and
        make the retries that were waiting out their backoff due at once."""
        breaker, channel = runtime.breaker, runtime.name
        if result.error is None:
            if breaker.succeeded():
                released = await self.store.release_retries(channel, now=now)
                log.info(
                    "channel circuit closed: a delivery went through",
                    extra={"channel": channel, "released": released},
                )
                self._undrain()
                self._wake.set()
        elif result.permanent:
            breaker.finished(job.id)
        elif breaker.failed(
            job.id,
            now,
            longest_wait=self.policy.cap,
            retry_after=result.retry_after,
        ):
            log.warning(
                "channel circuit open: deliveries held, one probe at a time",
                extra={
                    "channel": channel,
                    "failures": breaker.failures,
                    "error": self.redactor()(result.error),
                },
            )

    async def _send(self, runtime: ChannelRuntime, job: DeliveryJob) -> Attempted | None:
        """One attempt through the channel (or the log, for a log-only channel); None
        when the channel's circuit opened while the send waited for its rate limit."""
        definition = runtime.definition
        plugin = definition.type.plugin
        attempt = job.attempts + 1
        try:
            message, raw_event = message_for(job, attempt)
        except DamagedMessage as exc:  # no retry can mend it
            return Attempted(attempt, str(exc), None, True, False)
        error: str | None = None
        retry_after: float | None = None
        permanent = False
        log_only = runtime.log_only
        if runtime.broken:
            error = runtime.broken
        elif log_only:
            # What the channel would send: its message, or the event itself.
            if raw_event:
                sent: dict[str, Any] = {"event": message.event}
            else:
                sent = {"title": message.title, "text": message.text}
            log.info(
                "log-only channel: would send",
                extra={
                    "channel": job.channel,
                    "rule": job.rule,
                    "key": job.key,
                    "reason": log_only,
                    **sent,
                },
            )
        else:
            if runtime.limiter is not None:
                await runtime.limiter.acquire()
                if runtime.breaker.holds(job.id):  # other sends failed meanwhile
                    return None
            try:
                # asyncio.timeout, not wait_for: no extra task per send.
                async with asyncio.timeout(definition.options.timeout):
                    await runtime.instance.send(message)
            except RetryableError as exc:
                error, retry_after = str(exc) or type(exc).__name__, exc.retry_after
            except PermanentError as exc:
                error, permanent = str(exc) or type(exc).__name__, True
            except TimeoutError:
                error = f"timed out after {definition.options.timeout:g}s"
            except Exception as exc:
                log.exception(
                    "channel plugin raised", extra={"plugin": plugin, "channel": job.channel}
                )
                self.metrics.plugin_errors.labels(plugin, "send").inc()
                error = f"channel plugin {plugin!r} raised {type(exc).__name__}: {exc}"
        return Attempted(attempt, error, retry_after, permanent, logged=bool(log_only))

    async def _record(self, runtime: ChannelRuntime, job: DeliveryJob, result: Attempted) -> None:
        attempt, error = result.attempt, result.error
        now = self.clock()
        if error is not None or runtime.breaker.failures:  # else nothing changes
            await self._watch_circuit(runtime, job, result, now)
        retry_in = None
        if error is None:
            status = "logged" if result.logged else "delivered"
            await self.store.finish_delivery(job.id, status, attempts=attempt, now=now)
        else:
            error = self.redactor()(error)
            max_attempts = runtime.definition.options.max_attempts or self.policy.max_attempts
            retry_in = self.policy.delay(attempt, result.retry_after, self.rng)
            too_old = now + retry_in - job.created_at > self.policy.max_age
            if result.permanent or attempt >= max_attempts or too_old:
                status = "dead"
                if not result.permanent:
                    error = f"gave up after {attempt} attempt(s): {error}"
                retry_in = None
                await self.store.finish_delivery(
                    job.id, "dead", attempts=attempt, now=now, error=error
                )
            else:
                status = "retry"
                due = now + retry_in
                known = self._next_retry
                self._next_retry = min(due, known) if isinstance(known, float) else due
                self._wake.set()  # the loop may be waiting past ``due``: it recomputes
                await self.store.finish_delivery(
                    job.id,
                    "pending",
                    attempts=attempt,
                    now=now,
                    next_attempt_at=now + retry_in,
                    error=error,
                )
        outcome = DeliveryOutcome(
            key=job.key,
            event_id=job.event_id,
            rule=job.rule,
            channel=job.channel,
            channel_type=runtime.definition.type.name,
            attempt=attempt,
            status=status,  # type: ignore[arg-type]
            error=error,
            retry_in=retry_in,
        )
        latency = now - (job.received_at or job.created_at) if status == "delivered" else None
        self.outcomes.report(outcome, latency=latency)
