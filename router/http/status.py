"""The status page, ``GET /``: plain HTML from Jinja2 templates (autoescaped), no
JavaScript, no build step. What it shows comes from the metrics, the store and the
loaded rules; every error string on it is redacted, and channel settings (where the
secrets live) are never shown.

With ``ROUTER_ADMIN_TOKEN`` set the page needs the token: as a bearer header, or
once as ``/?token=...``, which sets an HttpOnly, SameSite=Strict session cookie
(derived from the token, not the token itself) and redirects to ``/``. Its replay
buttons are HTML forms posting to ``/-/dlq/replay`` with a CSRF field (a form posting
to ``/-/dlq/purge`` works the same way and comes back with ``?purged=N``).
"""

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from router import __version__
from router.history import preview
from router.http.auth import (
    COOKIE,
    SESSION_SECONDS,
    bearer_ok,
    cookie_session,
    csrf_value,
    same,
    session_value,
)
from router.http.keys import (
    DISPATCHER,
    LIVE,
    METRICS,
    PLUGINS,
    RELOAD,
    ROUTING,
    SESSION_KEY,
    SETTINGS,
    SOURCES,
    STORE,
)
from router.silences import describe

__all__ = ["status_page"]

RECENT_EVENTS = 20
DEAD_LETTERS = 50
LISTED = 50  # held and silenced deliveries shown
#: The preview of the loaded rules reads at most this many of the last day's events
#: (the page is built on every load).
PREVIEW_EVENTS = 2000

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: float | None, now: float) -> str:
    if value is None:
        return "-"
    return _duration(max(0.0, now - value)) + " ago"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


_env.filters.update(time=_time, duration=_duration, number=_number)


def _html(template: str, status: int = 200, **context: Any) -> web.Response:
    body = _env.get_template(template).render(version=__version__, **context)
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline';"
            " img-src data:; form-action 'self'; frame-ancestors 'none'",
            "Referrer-Policy": "no-referrer",
        },
    )


def _login(message: str) -> web.Response:
    return _html("login.html", status=401, message=message)


async def status_page(request: web.Request) -> web.Response:
    """``GET /``: the state of the router at a glance."""
    app = request.app
    secret = app[SETTINGS].admin_token
    csrf = None
    if secret is not None:
        token = secret.get_secret_value()
        given = request.query.get("token")
        if given is not None:
            if not same(given, token):
                return _login("That token is not the admin token.")
            # Trade the token in the URL for a cookie, and the URL for a clean one.
            redirect = web.HTTPSeeOther("/")
            public = app[SETTINGS].public_url or ""
            redirect.set_cookie(
                COOKIE,
                session_value(app[SESSION_KEY], time.time()),
                max_age=SESSION_SECONDS,
                httponly=True,
                samesite="Strict",
                # Behind a TLS-terminating proxy the request itself is plain HTTP.
                secure=request.secure or public.lower().startswith("https://"),
                path="/",
            )
            raise redirect
        nonce = cookie_session(request)
        if nonce is None and not bearer_ok(request, token):
            return _login("This page needs the admin token.")
        # The forms need the session (a browser form carries no Authorization header).
        csrf = None if nonce is None else csrf_value(app[SESSION_KEY], nonce)
    return _html("status.html", **await _context(app, request, csrf))


async def _context(app: web.Application, request: web.Request, csrf: str | None) -> dict[str, Any]:
    now = time.time()
    store = app[STORE]
    metrics = app[METRICS]
    rules = app[LIVE].router.rules
    redact = rules.redactor()
    queues = await metrics.refresh(store, now=now)
    totals = metrics.totals()
    uptime = max(1.0, now - metrics.started_at)
    attempts = {
        k[0]: v for k, v in metrics.by_label("router_delivery_attempts_total", "outcome").items()
    }
    by_channel = metrics.by_label("router_delivery_attempts_total", "channel", "outcome")
    requests = totals.get("router_events_received_total", 0.0)
    rejected = totals.get("router_events_rejected_total", 0.0)
    accepted = totals.get("router_events_accepted_total", 0.0)
    attempted = sum(attempts.values())
    failed = attempts.get("retried", 0.0) + attempts.get("dead", 0.0)
    latency_count = totals.get("router_delivery_latency_seconds_count", 0.0)
    latency_sum = totals.get("router_delivery_latency_seconds_sum", 0.0)
    rejected_by = {
        k[0]: v for k, v in metrics.by_label("router_events_rejected_total", "reason").items() if v
    }
    throughput = {
        "uptime": _duration(uptime),
        "requests": requests,
        "accepted": accepted,
        "accepted_per_min": accepted * 60 / uptime,
        "duplicates": totals.get("router_events_duplicate_total", 0.0),
        "rejected": rejected,
        "rejected_by": rejected_by,
        "reject_rate": _percent(rejected, requests),
        "attempts": attempts,
        "attempted": attempted,
        "delivered_per_min": attempts.get("delivered", 0.0) * 60 / uptime,
        "failure_rate": _percent(failed, attempted),
        "mean_latency": _duration(latency_sum / latency_count) if latency_count else "-",
        "throttled": totals.get("router_throttled_total", 0.0),
        "digested": totals.get("router_digested_events_total", 0.0),
        "plugin_errors": totals.get("router_plugin_errors_total", 0.0),
        **queues,
    }

    pending = await store.list_deliveries(state="pending", limit=500)
    dead = await store.list_deliveries(state="dead", limit=1000)
    channels = []
    for name, runtime in sorted(app[DISPATCHER].channels.items()):
        definition = runtime.definition
        retrying = [d for d in pending if d.channel == name and d.attempts > 0]
        dead_here = [d for d in dead if d.channel == name]
        last = next(iter(retrying), None) or next(iter(dead_here), None)
        channels.append(
            {
                "name": name,
                "type": definition.type.name,
                "plugin": definition.type.plugin,
                "broken": redact(runtime.broken) if runtime.broken else None,
                "log_only": runtime.log_only,
                "delivered": by_channel.get((name, "delivered"), 0.0),
                "logged": by_channel.get((name, "logged"), 0.0),
                "retried": by_channel.get((name, "retried"), 0.0),
                "dead_attempts": by_channel.get((name, "dead"), 0.0),
                "retrying": len(retrying),
                "dead": len(dead_here),
                "circuit_open": runtime.breaker.open,
                "failing": bool(runtime.broken or runtime.breaker.open or retrying or dead_here),
                "last_error": redact(last.last_error) if last and last.last_error else None,
            }
        )

    by_source = metrics.by_label("router_source_messages_total", "source", "outcome")
    by_source_events = metrics.by_label("router_source_events_total", "source", "outcome")
    sources = [
        {
            "name": name,
            **status,
            "detail": redact(status["detail"]),
            "received": by_source.get((name, "received"), 0.0),
            "invalid": by_source.get((name, "invalid"), 0.0),
            "receive_errors": by_source.get((name, "receive_error"), 0.0),
            "accepted": by_source_events.get((name, "accepted"), 0.0),
            "duplicate": by_source_events.get((name, "duplicate"), 0.0),
        }
        for name, status in app[SOURCES].status().items()
    ]

    silenced_by = {
        key[0]: value for key, value in metrics.by_label("router_silenced_total", "silence").items()
    }
    silences = [
        {
            "id": s.id,
            "matches": describe(s.matchers),
            "ends_at": s.ends_at,
            "author": s.author,
            "comment": s.comment,
            "silenced": silenced_by.get(s.id, 0.0),
        }
        for s in await store.list_silences(active_at=now)
    ]
    held = await store.list_deliveries(state="held", limit=LISTED)
    held.sort(key=lambda d: d.next_attempt_at)
    silenced = await store.list_deliveries(state="silenced", limit=LISTED)

    day_ago = now - 86400
    stored = await store.stored_events(since=day_ago, limit=PREVIEW_EVENTS + 1)
    tried = preview(app[LIVE].router, stored[:PREVIEW_EVENTS], since=day_ago)
    history = {
        "events": tried.events,
        "truncated": len(stored) > PREVIEW_EVENTS,
        "rows": [
            {
                "rule": rule,
                "channel": channel,
                "sent": count,
                "throttled": tried.throttled[(rule, channel)],
                "muted": tried.muted[(rule, channel)],
            }
            for (rule, channel), count in sorted(tried.sent.items())
        ],
    }

    events = await store.recent_events(RECENT_EVENTS)
    reload = app[RELOAD]
    flash = []
    for key, verb in (("replayed", "Replayed"), ("purged", "Purged")):
        value = request.query.get(key, "")
        if value.isdigit():
            flash.append(f"{verb} {int(value)} dead letter(s).")
    for key, verb in (("silenced", "Added silence"), ("expired", "Expired silence")):
        value = request.query.get(key, "")
        if value.isalnum():
            flash.append(f"{verb} {value}.")
    plugins = app[PLUGINS]
    canvas = None
    if rules.canvas is not None:  # the API's state; never its token
        calls = {
            k[0]: v
            for k, v in metrics.by_label("router_canvas_api_requests_total", "outcome").items()
        }
        client = app[ROUTING].canvas if ROUTING in app else None
        remaining = totals.get("router_canvas_api_rate_limit_remaining", -1.0)
        canvas = {
            "url": rules.canvas.url or "https://<metadata.hostname> of each event",
            "calls": calls,
            "requests": sum(calls.values()),
            "cache_hits": totals.get("router_canvas_api_cache_hits_total", 0.0),
            "held": totals.get("router_canvas_api_events_held_total", 0.0),
            "without": totals.get("router_canvas_api_routed_without_data_total", 0.0),
            "remaining": None if remaining < 0 else remaining,
            "last_error": redact(client.last_error) if client and client.last_error else None,
        }
    return {
        "now": now,
        "ago": lambda value: _ago(value, now),
        "redact": redact,
        "settings": app[SETTINGS],
        "rules_file": rules.file,
        "throughput": throughput,
        "channels": channels,
        "sources": sources,
        "canvas": canvas,
        "events": events,
        "dead_letters": dead[:DEAD_LETTERS],
        "dead_total": int(queues["dead"]),
        "rules": rules.rules,
        "plugins": plugins.infos,
        "plugin_problems": [redact(str(p)) for p in plugins.problems],
        "reload": {
            "ok": reload.ok,
            "at": reload.at,
            "trigger": reload.trigger,
            "errors": [redact(e) for e in reload.errors],
            "warnings": [redact(w) for w in reload.warnings],
            "succeeded": reload.succeeded,
            "failed": reload.failed,
        },
        "admin_api": app[SETTINGS].admin_token is not None,
        "csrf": csrf,
        "flash": flash,
        "silences": silences,
        "held": held,
        "silenced": silenced,
        "history": history,
    }
