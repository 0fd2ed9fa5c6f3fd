"""The application factory: reads like a table of contents of the running service."""

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from router.appkeys import (
    DISPATCHER,
    DRAINING,
    HTTP,
    JWKS,
    PLUGINS,
    ROUTER,
    ROUTING,
    SETTINGS,
    STORE,
)
from router.canvas_jwt import JwksVerifier
from router.dispatch import Dispatcher, RetryPolicy, close_channels, open_channels
from router.ingest import post_events, problem
from router.plugins import Plugins, load_plugins
from router.redact import Redactor
from router.routing import Router, RoutingWorker
from router.rules import load_rules
from router.settings import Settings
from router.store import open_store
from router.templates import Templates

log = logging.getLogger(__name__)

__all__ = ["build_router", "create_app"]


def build_router(settings: Settings, plugins: Plugins) -> Router:
    """Load templates and rules (raises ``ConfigErrors`` listing every problem)."""
    templates = Templates(settings.templates, plugins.filters)
    rules = load_rules(settings.rules, plugins.channel_types, templates=templates)
    return Router(rules, templates)


def create_app(settings: Settings, *, plugins: Plugins | None = None) -> web.Application:
    """Build the service. Raises ``ConfigErrors`` when the rules file is invalid."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[PLUGINS] = plugins or load_plugins(
        plugins_dir=settings.plugins_dir, blocked=settings.plugins_block
    )
    app[ROUTER] = build_router(settings, app[PLUGINS])
    app[DRAINING] = asyncio.Event()
    setup_routes(app)
    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(http_ctx)
    app.cleanup_ctx.append(workers_ctx)
    app.on_shutdown.append(start_draining)
    return app


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/events", post_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def redactor(app: web.Application) -> Redactor:
    """The redactor for the rules currently loaded."""
    return Redactor(app[ROUTER].rules.secrets)


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = open_store(settings.db, synchronous=settings.sqlite_synchronous)
    await store.open()
    app[STORE] = store
    yield
    await store.close()


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with aiohttp.ClientSession() as session:
        app[HTTP] = session
        app[JWKS] = (
            JwksVerifier(
                settings.jwks_url,
                session,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
            )
            if settings.jwks_url
            else None
        )
        yield


async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    policy = RetryPolicy(
        max_attempts=settings.max_attempts,
        max_age=settings.max_age,
        base=settings.backoff_base,
        cap=settings.backoff_cap,
    )
    current = redactor(app)
    dispatcher = Dispatcher(app[STORE], app[PLUGINS], policy, lambda: current)
    dispatcher.channels = await open_channels(app[ROUTER].rules.channels)
    routing = RoutingWorker(app[STORE], lambda: app[ROUTER], dispatcher.wake)
    app[DISPATCHER] = dispatcher
    app[ROUTING] = routing
    tasks = [
        asyncio.create_task(routing.run(), name="router-routing"),
        asyncio.create_task(dispatcher.run(), name="router-dispatcher"),
    ]
    yield
    app[DRAINING].set()
    tasks[0].cancel()
    await dispatcher.drain(settings.shutdown_grace)
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await close_channels(dispatcher.channels)


async def start_draining(app: web.Application) -> None:
    """On SIGTERM: new events get 503 while in-flight work finishes."""
    app[DRAINING].set()
    log.info("draining: no new events accepted")


async def healthz(request: web.Request) -> web.Response:
    """Process is alive."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to accept: store reachable, rules loaded, not draining."""
    app = request.app
    if app[DRAINING].is_set():
        return problem(503, "draining", state="draining")
    try:
        counts = await asyncio.wait_for(app[STORE].counts(), timeout=5)
    except Exception as exc:
        return problem(503, f"store unreachable: {type(exc).__name__}", state="unready")
    return web.json_response(
        {
            "state": "ready",
            "rules": app[ROUTER].rules.file,
            "events_pending": counts.events_pending,
            "deliveries_pending": counts.deliveries_pending,
            "dead_letters": counts.dead,
        }
    )
