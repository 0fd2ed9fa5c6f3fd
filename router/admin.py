"""The admin API under ``/-/`` (only when ``ROUTER_ADMIN_TOKEN`` is set): deliveries and
the dead-letter queue. Also who counts as an admin, shared with the status page.

An admin request carries ``Authorization: Bearer <token>``; a browser that opened the
status page once with ``?token=`` carries a session cookie instead, and then a POST
must also carry the page's CSRF field (the status page's forms do).
"""

import hashlib
import hmac
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any, get_args

import orjson
from aiohttp import web
from multidict import MultiDictProxy

from router.appkeys import DISPATCHER, LIVE, SESSION_KEY, SETTINGS, STORE
from router.redact import Redactor
from router.rules import parse_duration
from router.store import DeliveryRecord
from router.store.base import DeliveryState

__all__ = [
    "COOKIE",
    "STATES",
    "BadQuery",
    "Selector",
    "authorized",
    "bearer_ok",
    "cookie_session",
    "csrf_value",
    "loads_redacted",
    "parse_since",
    "record_dict",
    "same",
    "session_nonce",
    "session_value",
    "setup_admin_routes",
]

COOKIE = "router_admin"
MAX_LIMIT = 1000
STATES: tuple[str, ...] = get_args(DeliveryState)
_DURATION_AGO = re.compile(r"\d+(?:\.\d+)?\s*[smhd]")


# -- authentication ------------------------------------------------------------------


#: How long a status page session lasts.
SESSION_SECONDS = 12 * 3600


def _sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def session_value(key: bytes, now: float) -> str:
    """A new session cookie: ``<random nonce>.<expiry>.<signature>``, signed with the
    process's session key (``SESSION_KEY``: random per start, so a restart revokes
    every session). It holds nothing derived from the admin token."""
    body = f"{secrets.token_urlsafe(16)}.{int(now + SESSION_SECONDS)}"
    return f"{body}.{_sign(key, body)}"


def session_nonce(key: bytes, value: str, now: float) -> str | None:
    """The nonce of a valid, unexpired session cookie, else None."""
    body, _, signature = value.rpartition(".")
    nonce, _, expires = body.partition(".")
    if not (nonce and expires.isdigit() and same(signature, _sign(key, body))):
        return None
    return nonce if now < int(expires) else None


def csrf_value(key: bytes, nonce: str) -> str:
    """The hidden field the status page's forms carry with a cookie-authenticated POST:
    bound to the session, so it dies with it."""
    return _sign(key, f"csrf.{nonce}")


def same(given: str, expected: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_ok(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and same(given.strip(), token)


def cookie_session(request: web.Request) -> str | None:
    """The nonce of the request's valid session cookie, or None."""
    return session_nonce(request.app[SESSION_KEY], request.cookies.get(COOKIE, ""), time.time())


async def authorized(request: web.Request) -> bool:
    """Whether the request comes from an admin (always False without an admin token)."""
    secret = request.app[SETTINGS].admin_token
    if secret is None:
        return False
    token = secret.get_secret_value()
    if bearer_ok(request, token):
        return True
    nonce = cookie_session(request)
    if nonce is None:
        return False
    if request.method in ("GET", "HEAD"):
        return True
    # A cookie rides along with any cross-site form, so a POST must prove it came
    # from our page (SameSite=Strict already stops most browsers from sending it).
    try:
        form = await read_form(request) if request.content_type in _FORM_TYPES else {}
    except BadQuery:
        return False  # no readable form, no CSRF field
    given = form.get("csrf", "")
    return isinstance(given, str) and same(given, csrf_value(request.app[SESSION_KEY], nonce))


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def read_form(request: web.Request) -> MultiDictProxy[Any]:
    """The posted form; a malformed one (a multipart body without its boundary) is
    ``BadQuery``, not a 500."""
    try:
        return await request.post()
    except ValueError as exc:
        raise BadQuery(f"malformed form: {exc}") from None


# -- parsing -------------------------------------------------------------------------


class BadQuery(ValueError):
    """A query parameter or body that cannot be understood (answered 400)."""


def parse_since(value: str, *, now: float) -> float:
    """``1h`` / ``30m`` / ``2d`` ago, unix seconds, or an ISO 8601 time (UTC if naive)."""
    value = value.strip()
    if _DURATION_AGO.fullmatch(value):
        return now - parse_duration(value)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(
            f"since: {value!r} is not a duration (1h), unix seconds or an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_limit(value: str | None, default: int = 100) -> int:
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except ValueError:
        raise BadQuery(f"limit: {value!r} is not a number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def parse_state(value: str | None) -> DeliveryState | None:
    if not value:
        return None
    if value not in STATES:
        raise BadQuery(f"state: {value!r} is not one of {', '.join(STATES)}")
    return value  # type: ignore[return-value]


class Selector:
    """Which dead letters a replay or purge is about: ids, all, and/or filters."""

    def __init__(
        self,
        ids: list[int] | None = None,
        *,
        all: bool = False,
        channel: str | None = None,
        rule: str | None = None,
        since: float | None = None,
    ) -> None:
        self.ids = ids
        self.all = all
        self.channel = channel
        self.rule = rule
        self.since = since

    @property
    def empty(self) -> bool:
        return (
            not self.ids
            and not self.all
            and self.channel is None
            and self.rule is None
            and self.since is None
        )

    def store_args(self) -> dict[str, Any]:
        """Keyword arguments for ``Store.replay`` / ``Store.purge``."""
        return {
            "delivery_ids": self.ids or None,
            "channel": self.channel,
            "rule": self.rule,
            "since": self.since,
        }

    @classmethod
    def parse(cls, data: dict[str, Any], *, now: float) -> "Selector":
        """From a JSON body or a form: ``ids``, ``all``, ``channel``, ``rule``, ``since``."""
        unknown = set(data) - {"ids", "all", "channel", "rule", "since", "csrf"}
        if unknown:
            raise BadQuery(f"unknown field(s): {', '.join(sorted(unknown))}")
        ids = data.get("ids")
        if ids is not None:
            if isinstance(ids, str | int):
                ids = [ids]
            try:
                ids = [int(i) for i in ids]
            except (TypeError, ValueError):
                raise BadQuery("ids must be a list of delivery ids (numbers)") from None
            if not all(0 <= i < 2**63 for i in ids):  # the stores' integer range
                raise BadQuery("ids must be a list of delivery ids (numbers)")
        everything = data.get("all", False)
        if isinstance(everything, str):
            everything = everything.lower() in ("1", "true", "yes", "on")
        since = data.get("since")
        for name in ("channel", "rule"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise BadQuery(f"{name} must be a string")
        if not isinstance(everything, bool):
            raise BadQuery("all must be true or false")
        selector = cls(
            ids,
            all=everything,
            channel=data.get("channel") or None,
            rule=data.get("rule") or None,
            since=None if since in (None, "") else parse_since(str(since), now=now),
        )
        if selector.empty:
            raise BadQuery('say which dead letters: {"ids": [...]}, {"all": true} or filters')
        return selector


# -- presentation --------------------------------------------------------------------


def record_dict(record: DeliveryRecord, redact: Redactor) -> dict[str, Any]:
    """A delivery as JSON, its error redacted."""
    return {
        "id": record.id,
        "key": record.key,
        "event_id": record.event_id,
        "event_name": record.event_name,
        "rule": record.rule,
        "channel": record.channel,
        "state": record.state,
        "attempts": record.attempts,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "next_attempt_at": record.next_attempt_at,
        "last_error": None if record.last_error is None else redact(record.last_error),
    }


def redact_tree(value: Any, redact: Redactor) -> Any:
    """Every string in a JSON value redacted (Canvas URLs carry ``access_token=``), and
    every field named like a credential (``access_token``, ``password``...) masked."""
    return redact.tree(value)


def loads_redacted(data: bytes | None, redact: Redactor) -> Any:
    if data is None:
        return None
    try:
        return redact_tree(orjson.loads(data), redact)
    except orjson.JSONDecodeError:
        return redact(data.decode("utf-8", "replace"))


def _redactor(request: web.Request) -> Redactor:
    return request.app[LIVE].router.rules.redactor()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _bad(exc: BadQuery) -> web.Response:
    return _json({"error": str(exc)}, status=400)


# -- handlers --------------------------------------------------------------------------


async def _listing(request: web.Request, state: DeliveryState | None) -> list[dict[str, Any]]:
    """Deliveries selected by the query's channel, rule, since and limit (BadQuery if
    one of them is malformed), redacted for the answer."""
    query = request.query
    records = await request.app[STORE].list_deliveries(
        state=state,
        channel=query.get("channel") or None,
        rule=query.get("rule") or None,
        since=parse_since(query["since"], now=time.time()) if query.get("since") else None,
        limit=parse_limit(query.get("limit")),
    )
    redact = _redactor(request)
    return [record_dict(r, redact) for r in records]


async def get_deliveries(request: web.Request) -> web.Response:
    """``GET /-/deliveries?state=&channel=&rule=&since=&limit=``, newest first."""
    try:
        deliveries = await _listing(request, parse_state(request.query.get("state")))
    except BadQuery as exc:
        return _bad(exc)
    return _json({"deliveries": deliveries})


async def get_dlq(request: web.Request) -> web.Response:
    """``GET /-/dlq?channel=&rule=&since=&limit=``: dead letters with error and attempts."""
    try:
        dead = await _listing(request, "dead")
    except BadQuery as exc:
        return _bad(exc)
    total = (await request.app[STORE].counts()).dead
    return _json({"total": total, "dead_letters": dead})


async def get_dead_letter(request: web.Request) -> web.Response:
    """``GET /-/dlq/{id}``: one dead letter with its rendered message and its event."""
    try:
        delivery_id = int(request.match_info["id"])
    except ValueError:
        return _json({"error": "a dead letter id is a number"}, status=400)
    if not 0 <= delivery_id < 2**63:  # the stores' integer range
        return _json({"error": f"no dead letter {delivery_id}"}, status=404)
    detail = await request.app[STORE].get_delivery(delivery_id)
    if detail is None or detail.record.state != "dead":
        return _json({"error": f"no dead letter {delivery_id}"}, status=404)
    redact = _redactor(request)
    return _json(
        {
            "delivery": record_dict(detail.record, redact),
            "message": loads_redacted(detail.message, redact),
            "event": loads_redacted(detail.event, redact),
        }
    )


async def _selector(request: web.Request) -> tuple[Selector, bool]:
    """The selector of a replay/purge request, and whether it came from an HTML form."""
    now = time.time()
    if request.content_type in _FORM_TYPES:
        form = await read_form(request)
        data: dict[str, Any] = {key: form.get(key) for key in form if key != "ids"}
        if "ids" in form:
            data["ids"] = form.getall("ids")
        return Selector.parse(data, now=now), True
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadQuery(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadQuery("body must be a JSON object")
    return Selector.parse(body, now=now), False


async def post_replay(request: web.Request) -> web.Response:
    """``POST /-/dlq/replay``: requeue dead letters (same idempotency keys)."""
    try:
        selector, form = await _selector(request)
    except BadQuery as exc:
        return _bad(exc)
    count = await request.app[STORE].replay(now=time.time(), **selector.store_args())
    if count:
        request.app[DISPATCHER].wake()
    if form:  # the status page: back to it, saying what happened
        raise web.HTTPSeeOther(f"/?replayed={count}")
    return _json({"replayed": count})


async def post_purge(request: web.Request) -> web.Response:
    """``POST /-/dlq/purge``: delete dead letters."""
    try:
        selector, form = await _selector(request)
    except BadQuery as exc:
        return _bad(exc)
    count = await request.app[STORE].purge(**selector.store_args())
    if form:
        raise web.HTTPSeeOther(f"/?purged={count}")
    return _json({"purged": count})


def setup_admin_routes(app: web.Application, guard: Any) -> None:
    """Register the admin API, each handler wrapped by ``guard`` (``admin_only``)."""
    app.router.add_get("/-/deliveries", guard(get_deliveries))
    app.router.add_get("/-/dlq", guard(get_dlq))
    app.router.add_get("/-/dlq/{id}", guard(get_dead_letter))
    app.router.add_post("/-/dlq/replay", guard(post_replay))
    app.router.add_post("/-/dlq/purge", guard(post_purge))
