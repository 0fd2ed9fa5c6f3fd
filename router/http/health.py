"""``GET /healthz`` (the process is alive) and ``GET /readyz`` (ready to accept)."""

import asyncio
import time

from aiohttp import web

from router.http.ingest import problem
from router.http.keys import DRAINING, LIVE, RELOAD, SOURCES, STORE, STORE_HEALTH
from router.silences import describe

__all__ = ["healthz", "readyz"]


async def healthz(request: web.Request) -> web.Response:
    """Process is alive."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to accept: store reachable, rules loaded, not draining. Each source's
    state is listed too: a failing source does not make the router unready (``POST
    /events`` and the other sources go on), but it is named here."""
    app = request.app
    sources = app[SOURCES].status() if SOURCES in app else {}
    if app[DRAINING].is_set():
        return problem(503, "draining", state="draining", sources=sources)
    now = time.time()
    try:
        counts = await asyncio.wait_for(app[STORE].counts(), timeout=5)
        silences = await asyncio.wait_for(app[STORE].list_silences(active_at=now), timeout=5)
    except Exception as exc:
        return problem(
            503, f"store unreachable: {type(exc).__name__}", state="unready", sources=sources
        )
    failing = app[STORE_HEALTH].problem()
    if failing is not None:  # readable, but not writable (a full disk)
        return problem(503, failing, state="unready", sources=sources)
    return web.json_response(
        {
            "state": "ready",
            "rules": app[LIVE].router.rules.file,
            "rules_reload": app[RELOAD].as_dict(),
            "events_pending": counts.events_pending,
            "deliveries_pending": counts.deliveries_pending,
            "dead_letters": counts.dead,
            "sources": sources,
            "silences": [
                {"id": s.id, "matches": describe(s.matchers), "ends_at": s.ends_at}
                for s in silences
            ],
        }
    )
