"""The admin API under ``/-/`` (only when ``ROUTER_ADMIN_TOKEN`` is set): deliveries,
the dead-letter queue and silences. Who may call it is ``router/http/auth.py``; what the queries
mean is ``router/delivery_queries.py``, shared with the CLI.
"""

import time
from typing import Any

import orjson
from aiohttp import web

from router.delivery_queries import (
    BadQuery,
    Selector,
    empty_dlq,
    loads_redacted,
    parse_limit,
    parse_since,
    parse_state,
    record_dict,
)
from router.http.auth import FORM_TYPES, BadForm, read_form
from router.http.keys import DISPATCHER, LIVE, ROUTING, STORE
from router.redact import Redactor
from router.silence_requests import new_silence, silence_dict
from router.store.base import DeliveryState

__all__ = ["setup_admin_routes"]


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
    if not dead:  # said in words too, for whoever reads the answer
        return _json({"total": total, "dead_letters": dead, "message": empty_dlq(total)})
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
    if request.content_type in FORM_TYPES:
        try:
            form = await read_form(request)
        except BadForm as exc:
            raise BadQuery(str(exc)) from None
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
    """``POST /-/dlq/replay``: requeue dead letters (same idempotency keys); with
    ``"state": "silenced"`` or ``"muted"``, those deliveries instead."""
    try:
        selector, form = await _selector(request)
    except BadQuery as exc:
        return _bad(exc)
    count = await request.app[STORE].replay(
        now=time.time(),
        state=selector.state,  # type: ignore[arg-type]
        **selector.store_args(),
    )
    if count:
        request.app[DISPATCHER].wake()
    if form:  # the status page: back to it, saying what happened
        raise web.HTTPSeeOther(f"/?replayed={count}")
    return _json({"replayed": count})


async def post_purge(request: web.Request) -> web.Response:
    """``POST /-/dlq/purge``: delete dead letters (``"state": "silenced"`` or ``"muted"``:
    those deliveries instead)."""
    try:
        selector, form = await _selector(request)
    except BadQuery as exc:
        return _bad(exc)
    count = await request.app[STORE].purge(
        state=selector.state,  # type: ignore[arg-type]
        **selector.store_args(),
    )
    if form:
        raise web.HTTPSeeOther(f"/?purged={count}")
    return _json({"purged": count})


async def _fields(request: web.Request) -> tuple[dict[str, Any], bool]:
    """A request's fields (a JSON object, or an HTML form), and whether it was a form."""
    if request.content_type in FORM_TYPES:
        try:
            form = await read_form(request)
        except BadForm as exc:
            raise BadQuery(str(exc)) from None
        return {key: form.get(key) for key in form}, True
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadQuery(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadQuery("body must be a JSON object")
    return body, False


async def get_silences(request: web.Request) -> web.Response:
    """``GET /-/silences`` (active ones; ``?all=1``: every silence), newest first."""
    now = time.time()
    everything = request.query.get("all", "").lower() in ("1", "true", "yes")
    found = await request.app[STORE].list_silences(active_at=None if everything else now)
    return _json({"silences": [silence_dict(s, now) for s in found]})


async def post_silence(request: web.Request) -> web.Response:
    """``POST /-/silences``: ``{"rule": "course-completed", "for": "2h", "comment": ...}``
    (matchers ``rule``, ``channel``, ``event``, ``match``; ``for`` or ``ends_at``;
    ``starts_at``, ``author``, ``comment``). Answers 201 with the silence and its id."""
    try:
        data, form = await _fields(request)
        if form and isinstance(data.get("match"), str) and data["match"].strip():
            try:
                data["match"] = orjson.loads(data["match"])
            except orjson.JSONDecodeError as exc:
                raise BadQuery(f"match: not JSON: {exc}") from None
        data.setdefault("author", "status page" if form else "admin API")
        made = new_silence(data)
    except BadQuery as exc:
        return _bad(exc)
    await request.app[STORE].add_silence(made)
    await request.app[ROUTING].refresh_silences()
    if form:
        raise web.HTTPSeeOther(f"/?silenced={made.id}")
    return _json(silence_dict(made, time.time()), status=201)


async def post_expire_silence(request: web.Request) -> web.Response:
    """``POST /-/silences/{id}/expire``: end a silence now."""
    silence_id = request.match_info["id"]
    try:
        _, form = await _fields(request)
    except BadQuery as exc:
        return _bad(exc)
    ended = await request.app[STORE].expire_silence(silence_id, now=time.time())
    if ended is None:
        return _json({"error": f"no silence {silence_id}"}, status=404)
    await request.app[ROUTING].refresh_silences()
    if form:
        raise web.HTTPSeeOther(f"/?expired={silence_id}")
    return _json(silence_dict(ended, time.time()))


def setup_admin_routes(app: web.Application, guard: Any) -> None:
    """Register the admin API, each handler wrapped by ``guard`` (``admin_only``)."""
    app.router.add_get("/-/deliveries", guard(get_deliveries))
    app.router.add_get("/-/dlq", guard(get_dlq))
    app.router.add_get("/-/dlq/{id}", guard(get_dead_letter))
    app.router.add_post("/-/dlq/replay", guard(post_replay))
    app.router.add_post("/-/dlq/purge", guard(post_purge))
    app.router.add_get("/-/silences", guard(get_silences))
    app.router.add_post("/-/silences", guard(post_silence))
    app.router.add_post("/-/silences/{id}/expire", guard(post_expire_silence))
