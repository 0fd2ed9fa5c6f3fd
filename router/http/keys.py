"""Typed keys for everything the application holds (no globals, no singletons)."""

import asyncio

import aiohttp
from aiohttp import web

from router.canvas_jwt import JwksVerifier
from router.dispatch import Dispatcher
from router.metrics import Metrics
from router.pacing import IngestPressure
from router.plugins import Plugins
from router.reload import Live, ReloadStatus
from router.routing import RoutingWorker
from router.settings import Settings
from router.source_manager import SourceManager
from router.store import Store
from router.store.health import StoreHealth

__all__ = [
    "DISPATCHER",
    "DRAINING",
    "HTTP",
    "JWKS",
    "LIVE",
    "METRICS",
    "PLUGINS",
    "PRESSURE",
    "RELOAD",
    "ROUTING",
    "SESSION_KEY",
    "SETTINGS",
    "SOURCES",
    "STORE",
    "STORE_HEALTH",
]

SETTINGS = web.AppKey("settings", Settings)
PLUGINS = web.AppKey("plugins", Plugins)
LIVE = web.AppKey("live", Live)
STORE = web.AppKey("store", Store)
STORE_HEALTH = web.AppKey("store_health", StoreHealth)
HTTP = web.AppKey("http", aiohttp.ClientSession)
JWKS = web.AppKey("jwks", JwksVerifier | None)
ROUTING = web.AppKey("routing", RoutingWorker)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
DRAINING = web.AppKey("draining", asyncio.Event)
PRESSURE = web.AppKey("pressure", IngestPressure)
METRICS = web.AppKey("metrics", Metrics)
SOURCES = web.AppKey("sources", SourceManager)
RELOAD = web.AppKey("reload", ReloadStatus)
#: Signs the status page's session cookies; random at each start (a restart revokes them).
SESSION_KEY = web.AppKey("session_key", bytes)
