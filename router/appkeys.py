"""Typed keys for everything the application holds (no globals, no singletons)."""

import asyncio

import aiohttp
from aiohttp import web

from router.canvas_jwt import JwksVerifier
from router.dispatch import Dispatcher
from router.plugins import Plugins
from router.routing import Router, RoutingWorker
from router.settings import Settings
from router.store import Store

SETTINGS = web.AppKey("settings", Settings)
PLUGINS = web.AppKey("plugins", Plugins)
ROUTER = web.AppKey("router", Router)
STORE = web.AppKey("store", Store)
HTTP = web.AppKey("http", aiohttp.ClientSession)
JWKS = web.AppKey("jwks", JwksVerifier | None)
ROUTING = web.AppKey("routing", RoutingWorker)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
DRAINING = web.AppKey("draining", asyncio.Event)
