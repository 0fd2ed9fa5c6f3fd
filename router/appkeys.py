"""Typed keys for everything the application holds (no globals, no singletons)."""

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from router.canvas_jwt import JwksVerifier
from router.dispatch import Dispatcher
from router.metrics import Metrics
from router.pacing import IngestPressure
from router.plugins import Plugins
from router.routing import Router, RoutingWorker
from router.settings import Settings
from router.store import Store
from router.store.health import StoreHealth

if TYPE_CHECKING:
    from router.reload import ReloadStatus

SETTINGS = web.AppKey("settings", Settings)
PLUGINS = web.AppKey("plugins", Plugins)


@dataclass
class Live:
    """What a reload swaps in: the router (rules and templates). The app's state is
    fixed once it starts, so the swap happens inside this holder."""

    router: Router


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
RELOAD: "web.AppKey[ReloadStatus]" = web.AppKey("reload")
#: Signs the status page's session cookies; random at each start (a restart revokes them).
SESSION_KEY = web.AppKey("session_key", bytes)
