"""The application factory: reads like a table of contents of the running service."""

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from router.canvas_jwt import JwksVerifier
from router.dispatch import Dispatcher, RetryPolicy, close_channels, open_channels
from router.http.admin import setup_admin_routes
from router.http.auth import admin_only
from router.http.health import healthz, readyz
from router.http.ingest import Ingest
from router.http.keys import (
    DISPATCHER,
    DRAINING,
    HTTP,
    JWKS,
    LIVE,
    METRICS,
    PLUGINS,
    PRESSURE,
    RELOAD,
    ROUTING,
    SESSION_KEY,
    SETTINGS,
    SOURCES,
    STORE,
    STORE_HEALTH,
)
from router.http.metrics import metrics_handler
from router.http.openapi import openapi_json
from router.http.reload import post_reload, reload_ctx
from router.http.status import status_page
from router.logs import update_redactor
from router.metrics import Metrics
from router.outbox import Outcomes
from router.pacing import IngestPressure
from router.plugins import Plugins, load_plugins
from router.redact import Redactor
from router.reload import Live, ReloadStatus
from router.retention import retention_loop
from router.routing import RoutingWorker, build_router
from router.settings import Settings
from router.source_manager import IngestGate, SourceManager
from router.store import StoreOpenError, open_store
from router.store.health import StoreHealth

log = logging.getLogger(__name__)

__all__ = ["create_app"]


def create_app(settings: Settings, *, plugins: Plugins | None = None) -> web.Application:
    """Build the service. Raises ``ConfigErrors`` when the rules file is invalid."""
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[PLUGINS] = plugins or load_plugins(
        plugins_dir=settings.plugins_dir, blocked=settings.plugins_block
    )
    app[LIVE] = Live(build_router(settings, app[PLUGINS]))
    app[DRAINING] = asyncio.Event()
    app[STORE_HEALTH] = StoreHealth()
    app[SESSION_KEY] = secrets.token_bytes(32)
    app[PRESSURE] = IngestPressure(settings.background_share)
    app[RELOAD] = ReloadStatus(warnings=[str(w) for w in app[LIVE].router.rules.warnings])
    app[METRICS] = Metrics()
    app[METRICS].reload_status = app[RELOAD]
    setup_routes(app)
    app.on_startup.append(redact_logs)
    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(http_ctx)
    app.cleanup_ctx.append(workers_ctx)
    app.cleanup_ctx.append(sources_ctx)
    app.cleanup_ctx.append(reload_ctx)
    app.cleanup_ctx.append(retention_ctx)
    app.on_shutdown.append(start_draining)
    return app


def setup_routes(app: web.Application) -> None:
    ingest = Ingest(app)
    app.on_startup.append(ingest.bind)  # after the contexts: the store is open by then
    app.router.add_post("/events", ingest.post_events)
    # For senders that cannot set a header (a Canvas HTTPS subscription): the ingest
    # token in the path. The path is a secret: the service keeps no access log.
    app.router.add_post("/events/{token}", ingest.post_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/", status_page)
    if app[SETTINGS].admin_token is not None:  # the admin API is off unless configured
        app.router.add_post("/-/reload", admin_only(post_reload))
        setup_admin_routes(app, admin_only)


def redactor(app: web.Application) -> Redactor:
    """The redactor for the rules currently loaded."""
    return app[LIVE].router.rules.redactor()


async def redact_logs(app: web.Application) -> None:
    """Point the log redaction at this rules file's secrets (reloads update it too)."""
    update_redactor(redactor(app))


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = open_store(settings.db, synchronous=settings.sqlite_synchronous)
    try:
        await store.open()
    except Exception as exc:  # not an OSError any more: `serve` tells the two apart
        raise StoreOpenError(f"{type(exc).__name__}: {exc}") from exc
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
    metrics = app[METRICS]
    # Deliveries attempted and deliveries born dead report to the same place.
    outcomes = Outcomes(metrics, app[PLUGINS].delivery_finished)
    dispatcher = Dispatcher(
        app[STORE],
        app[PLUGINS],
        policy,
        lambda: redactor(app),
        metrics=metrics,
        pressure=app[PRESSURE],
        outcomes=outcomes,
    )
    dispatcher.channels = await open_channels(app[LIVE].router.rules.channels)
    routing = RoutingWorker(
        app[STORE],
        lambda: app[LIVE].router,
        dispatcher.wake,
        metrics=metrics,
        outcomes=outcomes,
        pressure=app[PRESSURE],
    )
    app[DISPATCHER] = dispatcher
    app[ROUTING] = routing
    tasks = [
        asyncio.create_task(routing.run(), name="router-routing"),
        asyncio.create_task(dispatcher.run(), name="router-dispatcher"),
    ]
    # Replicas sharing a store wake each other; a private store returns None.
    unsubscribe = await app[STORE].subscribe(
        lambda kind: routing.wake() if kind == "events" else dispatcher.wake()
    )
    yield
    if unsubscribe is not None:
        await unsubscribe()
    app[DRAINING].set()
    tasks[0].cancel()
    await dispatcher.drain(settings.shutdown_grace)
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await routing.close()
    await close_channels(dispatcher.channels)


async def sources_ctx(app: web.Application) -> AsyncIterator[None]:
    """The sources declared in the rules file (SQS queues, ...), started once the
    store and the routing worker are up, stopped before them."""
    settings = app[SETTINGS]
    gate = IngestGate(
        app[STORE],
        dedupe_window=settings.dedupe_window,
        wake=app[ROUTING].wake,
        draining=app[DRAINING],
        metrics=app[METRICS],
    )
    manager = SourceManager(gate, app[METRICS], max_items=settings.max_batch_items)
    app[SOURCES] = manager
    await manager.apply(app[LIVE].router.rules.sources)
    yield
    await manager.stop_all()


async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run retention for the life of the app (off when the interval is 0)."""
    settings = app[SETTINGS]
    # Events younger than the dedupe window are what recognises a repeat: keep them.
    keep = max(settings.retention, settings.dedupe_window)
    task = None
    if settings.retention_interval > 0:
        task = asyncio.create_task(
            retention_loop(app[STORE], keep, settings.retention_interval, app[METRICS]),
            name="router-retention",
        )
    yield
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def start_draining(app: web.Application) -> None:
    """On SIGTERM: new events get 503 while in-flight work finishes."""
    app[DRAINING].set()
    log.info("draining: no new events accepted")
