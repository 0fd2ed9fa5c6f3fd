"""``GET /metrics``: the Prometheus text format of the app's ``Metrics``."""

import time

from aiohttp import web

from router.http.keys import DISPATCHER, METRICS, STORE
from router.metrics import CONTENT_TYPE

__all__ = ["metrics_handler"]


async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics``: the Prometheus text format, queue gauges read from the store."""
    metrics = request.app[METRICS]
    await metrics.refresh(request.app[STORE], now=time.time())
    dispatcher = request.app.get(DISPATCHER)
    if dispatcher is not None:
        metrics.circuits({n: r.breaker.open for n, r in dispatcher.channels.items()})
    response = web.Response(body=metrics.exposition())
    response.content_type = CONTENT_TYPE
    response.charset = "utf-8"
    return response
