"""``POST /events``: authenticate, read, parse, store durably, then answer 202.

Accepted bodies: one event object, a JSON array of events, NDJSON
(``application/x-ndjson``), or a Canvas signed delivery (a JWT, RS256) whose claims
are the event. Every rejection says exactly what was wrong.
"""

import asyncio
import hmac
import logging
import math
import time
from typing import Any

import orjson
from aiohttp import web

from router.canvas_jwt import JwksVerifier, JwtError, KeysUnavailable
from router.events import (
    BadRequest,
    InvalidEvents,
    ParsedEvent,
    TooManyItems,
    parse_body,
)
from router.http.keys import (
    DRAINING,
    JWKS,
    METRICS,
    PRESSURE,
    ROUTING,
    SETTINGS,
    STORE,
    STORE_HEALTH,
)
from router.routing import RoutingWorker
from router.store import Store

log = logging.getLogger(__name__)

JSON_TYPES = {"application/json", "text/json", ""}
NDJSON_TYPES = {"application/x-ndjson", "application/ndjson", "application/jsonl"}
JWT_TYPES = {"application/jwt", "application/jose"}
# What a sender that does not label its body may use; the body says which it is.
PLAIN_TYPES = {"text/plain"}
# What aiohttp decodes without optional packages ("" and identity: not encoded).
CONTENT_ENCODINGS = {"", "identity", "gzip", "deflate"}


def problem(status: int, message: str, **extra: object) -> web.Response:
    """A JSON error answer: ``{"error": message, ...}``."""
    return web.json_response({"error": message, **extra}, status=status)


def _looks_like_jwt(data: bytes) -> bool:
    # The prefix test first: a JSON body fails it without copying or scanning.
    return data[:3] == b"eyJ" and data.strip().count(b".") == 2 and b"{" not in data


def _is_signed(ctype: str, data: bytes) -> bool:
    """Whether a body is a signed (JWT) delivery: labelled so, or a JSON or plain-text
    body that is a JWT. A plain-text body that starts as JSON does (``{`` or ``[``) is
    JSON, not a token."""
    if ctype in JWT_TYPES:
        return True
    if ctype in PLAIN_TYPES:
        return data.lstrip()[:1] not in (b"{", b"[")
    return ctype in JSON_TYPES and _looks_like_jwt(data)


def _claims_bytes(claims: dict[str, Any]) -> bytes:
    # Registered JWT claims are transport, not part of the event.
    event = {k: v for k, v in claims.items() if k not in {"iat", "exp", "nbf", "iss", "aud", "jti"}}
    return orjson.dumps(event)


def parse_body_or_error(
    data: bytes, *, ndjson: bool, max_items: int
) -> list[ParsedEvent] | web.Response:
    """Parse a body, turning each failure into its HTTP answer."""
    try:
        return parse_body(data, ndjson=ndjson, max_items=max_items)
    except BadRequest as exc:
        return problem(400, str(exc))
    except TooManyItems as exc:
        return problem(413, str(exc))
    except InvalidEvents as exc:
        return problem(
            422,
            "invalid event(s); nothing was stored",
            errors=[error.model_dump() for error in exc.errors],
        )


class Ingest:
    """The ``POST /events`` handler. It holds what every request needs; what starts
    with the service (the store, the routing worker, the JWKS verifier) is bound by
    ``bind``, an ``on_startup`` hook that runs once they are up."""

    store: Store
    routing: RoutingWorker
    jwks: JwksVerifier | None

    def __init__(self, app: web.Application) -> None:
        settings = app[SETTINGS]
        self.settings = settings
        self.metrics = app[METRICS]
        self.pressure = app[PRESSURE]
        self.draining = app[DRAINING]
        self.store_health = app[STORE_HEALTH]
        token = settings.ingest_token
        self._token = None if token is None else token.get_secret_value().encode()

    async def bind(self, app: web.Application) -> None:
        """Take the collaborators that the app's contexts have started."""
        self.store = app[STORE]
        self.routing = app[ROUTING]
        self.jwks = app[JWKS]

    async def post_events(self, request: web.Request) -> web.Response:
        """Accept events; 202 only once they are durable."""
        self.pressure.enter()
        try:
            return await self._accept(request)
        finally:
            self.pressure.leave()

    async def _accept(self, request: web.Request) -> web.Response:
        metrics = self.metrics
        metrics.requests.inc()
        if self.draining.is_set():
            metrics.rejected[503].inc()
            return web.json_response(
                {"error": "shutting down; retry later"}, status=503, headers={"Retry-After": "5"}
            )
        if not self._authorized(request):
            metrics.rejected[401].inc()
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="router"'},
            )
        data = await self._read(request)
        if not isinstance(data, bytes):
            metrics.rejected[data.status].inc()
            return data
        events = await self._events_from(request, data)
        if not isinstance(events, list):
            if events.status == 503:  # the JWKS could not be fetched
                metrics.keys_unavailable.inc()
            else:
                metrics.rejected[events.status].inc()
            return events
        try:
            accepted = await self.store.accept_events(
                [(e.id, e.name, e.payload) for e in events],
                dedupe_window=self.settings.dedupe_window,
                now=time.time(),
            )
        except Exception as exc:  # a full disk, a lost database: the sender must retry
            self.store_health.failed(exc)
            log.error("events not stored: %s: %s", type(exc).__name__, exc)
            metrics.store_failed.inc()
            # Only the type: a database's message is for the log, not for whoever posted.
            return web.json_response(
                {
                    "error": f"the store failed ({type(exc).__name__}); retry later"
                    " (a retry is safe: a repeat is recognised as a duplicate)"
                },
                status=503,
                headers={"Retry-After": "5"},
            )
        self.store_health.succeeded()
        self.routing.wake()
        duplicates = sum(answer.duplicate for answer in accepted)
        if log.isEnabledFor(logging.INFO):
            for event, answer in zip(events, accepted, strict=True):
                log.info(
                    "event duplicate" if answer.duplicate else "event accepted",
                    extra={"event_id": answer.id, "event_name": event.name},
                )
        metrics.accepted.inc(len(accepted) - duplicates)
        if duplicates:
            metrics.duplicates.inc(duplicates)
        body = orjson.dumps(
            {"accepted": [{"id": a.id, "duplicate": a.duplicate} for a in accepted]}
        )
        return web.Response(body=body, status=202, content_type="application/json")

    def _authorized(self, request: web.Request) -> bool:
        expected = self._token
        in_path = request.match_info.get("token")
        if in_path is not None:  # POST /events/<token>: only with a token configured
            return expected is not None and hmac.compare_digest(in_path.encode(), expected)
        if expected is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)

    async def _read(self, request: web.Request) -> bytes | web.Response:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return problem(413, f"body is {request.content_length} bytes; the limit is {limit}")
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in CONTENT_ENCODINGS:
            return problem(
                415,
                f"unsupported Content-Encoding {encoding!r}; send gzip, deflate or none",
            )
        timeout = self.settings.read_timeout
        try:
            async with asyncio.timeout(timeout):
                return await request.read()  # the app's client_max_size is the same limit
        except web.HTTPRequestEntityTooLarge:
            return problem(413, f"body exceeds the limit of {limit} bytes")
        except web.RequestPayloadError:
            # aiohttp could not decode the body: labelled gzip or deflate, but it is not.
            return problem(400, f"the body is not valid {encoding or 'chunked'} data")
        except TimeoutError:
            answer = problem(408, f"the body did not arrive within {timeout:g}s")
            answer.force_close()
            # Answer, then close at once: aiohttp would otherwise linger, reading the
            # rest of the stalled body for seconds more.
            await answer.prepare(request)
            await answer.write_eof()
            if request.transport is not None:
                request.transport.close()
            return answer

    async def _events_from(
        self, request: web.Request, data: bytes
    ) -> list[ParsedEvent] | web.Response:
        settings = self.settings
        ctype = request.content_type.lower() if request.headers.get("Content-Type") else ""
        if _is_signed(ctype, data):
            if self.jwks is None:
                return problem(401, "signed (JWT) delivery received but ROUTER_JWKS_URL is not set")
            try:
                claims = await self.jwks.verify(data.strip().decode("ascii", "replace"))
            except KeysUnavailable as exc:
                wait = 30 if exc.retry_after is None else max(1, math.ceil(exc.retry_after))
                return web.json_response(
                    {"error": f"cannot check the signature now: {exc}; retry later"},
                    status=503,
                    headers={"Retry-After": str(wait)},
                )
            except JwtError as exc:
                return problem(401, f"signature rejected: {exc}")
            # The claims are one event, or a Caliper envelope of several.
            return parse_body_or_error(
                _claims_bytes(claims), ndjson=False, max_items=settings.max_batch_items
            )
        if settings.require_signed:
            return problem(401, "only signed (JWT) deliveries are accepted")
        if ctype in NDJSON_TYPES:
            return parse_body_or_error(data, ndjson=True, max_items=settings.max_batch_items)
        if ctype in JSON_TYPES or ctype in PLAIN_TYPES or ctype.endswith("+json"):
            return parse_body_or_error(data, ndjson=False, max_items=settings.max_batch_items)
        return problem(
            415,
            f"unsupported content type {ctype!r}; send application/json,"
            " application/x-ndjson or application/jwt",
        )
