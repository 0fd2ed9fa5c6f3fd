"""The baseline for ``bench/ingest.py``: a bare aiohttp server that reads each body and
answers 202 without parsing it. Same framework, same loop, same logging policy as the
router (no access log), so the difference is the router's own work per request."""

import argparse

from aiohttp import web


async def events(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def serve(app: web.Application, port: int) -> None:
    """Run ``app`` on 127.0.0.1 as ``router serve`` runs: on uvloop when it is installed,
    without an access log. (Also the benchmarks' receivers.)"""
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/events", events)
    app.router.add_get("/healthz", healthz)
    serve(app, args.port)


if __name__ == "__main__":
    main()
