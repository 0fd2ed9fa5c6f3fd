"""The Canvas REST API client behind ``enrich:``: bearer token, bounded concurrency,
timeouts, ``Link`` pagination with a page cap, Canvas throttling, and a cache of
answers in the store (shared by replicas), so a burst of events about one course costs
one request.

Canvas throttles with a leaky bucket per token (canvas-lms ``doc/api/throttling.md``):
an answer over quota is ``403 Forbidden (Rate Limit Exceeded)``, and every answer
carries ``X-Request-Cost`` and, where throttling applies, ``X-Rate-Limit-Remaining``.
The client spaces its requests out when the remaining quota runs low, and after a
throttled answer pauses every request (for ``Retry-After`` when given) instead of
adding to the bucket.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from yarl import URL

from router.canvas_lookups import LOOKUPS, Request
from router.channels import retry_after_seconds
from router.metrics import Metrics
from router.rules import CanvasConfig
from router.store import Store

__all__ = ["CanvasClient", "CanvasRefused", "CanvasUnavailable", "Enrichment"]

log = logging.getLogger(__name__)

#: Below this remaining quota the client spaces requests out (Canvas' default bucket
#: holds 700 and refills faster than real time: one request at a time rarely drains it).
LOW_QUOTA = 100.0
#: The longest gap put between two requests when the quota is nearly gone.
MAX_SPACING = 2.0
#: How long requests pause after a throttled answer without Retry-After.
THROTTLE_PAUSE = 10.0
_NOT_FOUND = b"null"


class CanvasUnavailable(Exception):
    """The API cannot answer now (down, 5xx, timeout, throttled, refused token): the
    event waits and its routing is tried again. The text never holds the token."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CanvasRefused(Exception):
    """The API refused one lookup for good (a 4xx other than 401, 404 and throttling):
    that variable is none and the message says why."""


@dataclass
class Enrichment:
    """What the API gave for one event: a value per name (None: not found, or the event
    carries no id for it), why a name is missing though the API should have given it
    (unavailable, refused), and the retryable failure if any."""

    values: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    unavailable: CanvasUnavailable | None = None


class CanvasClient:
    """One per ``canvas:`` section; ``enrich`` is what routing calls."""

    def __init__(
        self,
        config: CanvasConfig,
        store: Store,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(config.concurrency)
        self._inflight: dict[str, asyncio.Future[bytes]] = {}
        self._paused_until = 0.0  # time.monotonic(): throttled, no requests before
        self._not_before = 0.0  # time.monotonic(): spacing while the quota is low
        self.last_error: str | None = None
        self._hosts = {host.lower() for host in config.hosts}

    async def close(self) -> None:
        """Close the HTTP session (requests in flight fail)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def base_url(self, event: Mapping[str, Any]) -> str | None:
        """The instance to ask about this event: ``canvas.url``, else the event's
        ``metadata.hostname`` if ``canvas.hosts`` lists it (None otherwise)."""
        if self.config.url:
            return self.config.url.rstrip("/")
        metadata = event.get("metadata")
        host = metadata.get("hostname") if isinstance(metadata, Mapping) else None
        if isinstance(host, str) and host.lower() in self._hosts:
            return f"https://{host.lower()}"
        return None

    async def enrich(self, names: list[str], event: Mapping[str, Any]) -> Enrichment:
        """Fetch every name for this event (concurrently, through the cache)."""
        found = Enrichment()
        base = self.base_url(event)
        requests: dict[str, Request] = {}
        for name in names:
            lookup = LOOKUPS[name]
            request = lookup.request(event)
            found.values[name] = None
            if request is None:
                continue  # nothing to look up: the variable is none, as for a 404
            if base is None:
                found.missing[name] = "the event's metadata.hostname is not in canvas.hosts"
            else:
                requests[name] = request
        if not requests or base is None:
            return found
        results = await asyncio.gather(
            *(self.get(base, request) for request in requests.values()), return_exceptions=True
        )
        for name, result in zip(requests, results, strict=True):
            if isinstance(result, CanvasUnavailable):
                found.missing[name] = f"Canvas API unavailable: {result}"
                found.unavailable = found.unavailable or result
            elif isinstance(result, CanvasRefused):
                found.missing[name] = f"Canvas API refused: {result}"
            elif isinstance(result, BaseException):
                log.error(
                    "canvas lookup failed",
                    extra={"lookup": name, "error": f"{type(result).__name__}: {result}"},
                )
                found.missing[name] = f"lookup failed: {type(result).__name__}"
                found.unavailable = found.unavailable or CanvasUnavailable(
                    f"{type(result).__name__}: {result}"
                )
            else:
                found.values[name] = LOOKUPS[name].shape(result)
        return found

    async def get(self, base: str, request: Request) -> Any:
        """The API's answer (all pages of a list), None for a 404. Concurrent asks for
        one key share one request; answers are cached in the store for ``cache``."""
        key = request.cache_key(base)
        pending = self._inflight.get(key)
        if pending is not None:
            self.metrics.canvas_cache_hits.inc()
            return orjson.loads(await asyncio.shield(pending))
        # Registered before the first await: every concurrent ask for this key waits
        # for this one, whether it is answered from the store's cache or the API.
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            cached = await self.store.load_cached([key], now=self.clock())
            if key in cached:
                self.metrics.canvas_cache_hits.inc()
                body = cached[key]
            else:
                body = await self._fetch(base, request)
                now = self.clock()
                await self.store.save_cached(key, body, expires_at=now + self.config.cache, now=now)
            future.set_result(body)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            del self._inflight[key]
        return orjson.loads(body)

    async def _fetch(self, base: str, request: Request) -> bytes:
        url: URL | None = URL(base + request.path).with_query(list(request.params))
        origin = URL(base).origin()
        items: list[Any] = []
        pages = 0
        while url is not None:
            status, data, next_url = await self._request(url)
            if status == 404:
                return _NOT_FOUND
            if not request.paginated:
                return orjson.dumps(data)
            if not isinstance(data, list):
                raise CanvasRefused(f"GET {request.path}: expected a list")
            items.extend(data)
            pages += 1
            url = None
            if next_url is not None:
                # The token goes only to the instance it belongs to.
                candidate = URL(next_url)
                if candidate.origin() != origin:
                    raise CanvasRefused(f"GET {request.path}: next page on another host")
                if pages >= self.config.max_pages:
                    log.warning(
                        "canvas list cut at the page cap",
                        extra={"path": request.path, "pages": pages},
                    )
                else:
                    url = candidate
        return orjson.dumps(items)

    async def _request(self, url: URL) -> tuple[int, Any, str | None]:
        """One GET: (status, parsed JSON, next page URL). Raises ``CanvasUnavailable``
        or ``CanvasRefused``."""
        async with self._slots:
            now = time.monotonic()
            if now < self._paused_until:  # not sent: Canvas asked us to wait
                raise CanvasUnavailable(
                    "throttled (403 Rate Limit Exceeded)", retry_after=self._paused_until - now
                )
            if now < self._not_before:
                await asyncio.sleep(self._not_before - now)
            try:
                return await self._send(url)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.metrics.canvas_requests.labels("error").inc()
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self.last_error = error
                raise CanvasUnavailable(error) from None

    async def _send(self, url: URL) -> tuple[int, Any, str | None]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                headers={"Accept": "application/json"},
            )
        headers = {"Authorization": f"Bearer {self.config.token.get_secret_value()}"}
        async with self._session.get(url, headers=headers, allow_redirects=False) as resp:
            self._pace(resp.headers.get("X-Rate-Limit-Remaining"))
            path = url.path
            if resp.status == 403 and "rate limit exceeded" in (await resp.text()).lower():
                wait = retry_after_seconds(resp.headers.get("Retry-After"))
                pause = wait if wait is not None else THROTTLE_PAUSE
                self._paused_until = max(self._paused_until, time.monotonic() + pause)
                self.metrics.canvas_requests.labels("throttled").inc()
                self.last_error = "403 Forbidden (Rate Limit Exceeded)"
                raise CanvasUnavailable("throttled (403 Rate Limit Exceeded)", retry_after=pause)
            if resp.status == 404:
                self.metrics.canvas_requests.labels("not_found").inc()
                return 404, None, None
            if resp.status == 401 or resp.status == 429 or resp.status >= 500:
                self.metrics.canvas_requests.labels("error").inc()
                hint = ": check canvas.token" if resp.status == 401 else ""
                self.last_error = f"GET {path}: HTTP {resp.status}{hint}"
                raise CanvasUnavailable(
                    f"HTTP {resp.status}{hint}",
                    retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
                )
            if resp.status >= 300:
                self.metrics.canvas_requests.labels("error").inc()
                self.last_error = f"GET {path}: HTTP {resp.status}"
                raise CanvasRefused(f"GET {path}: HTTP {resp.status}")
            try:
                data = orjson.loads(await resp.read())
            except orjson.JSONDecodeError:
                self.metrics.canvas_requests.labels("error").inc()
                self.last_error = f"GET {path}: not JSON"
                raise CanvasUnavailable(f"GET {path}: the answer is not JSON") from None
            self.metrics.canvas_requests.labels("ok").inc()
            following = resp.links.get("next")
            next_url = str(following["url"]) if following else None
            return resp.status, data, next_url

    def _pace(self, remaining: str | None) -> None:
        """Space requests out as the quota runs low: the bucket refills over time, and
        a client that waits a little is not throttled."""
        if remaining is None:
            return
        try:
            left = float(remaining)
        except ValueError:
            return
        self.metrics.canvas_rate_limit_remaining.set(left)
        if left < LOW_QUOTA:
            gap = MAX_SPACING * (LOW_QUOTA - max(left, 0.0)) / LOW_QUOTA
            self._not_before = max(self._not_before, time.monotonic() + gap)
