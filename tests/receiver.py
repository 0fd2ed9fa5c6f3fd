"""A webhook receiver for tests: a real aiohttp server on 127.0.0.1 that verifies
Standard Webhooks signatures with the ``standardwebhooks`` package (an independent
implementation), records what arrived, and answers with scripted statuses."""

import asyncio
import base64
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

SECRET = "whsec_" + base64.b64encode(b"test-secret-0123456789abcdef").decode()


@dataclass
class Received:
    """One request the receiver accepted (after its signature verified)."""

    webhook_id: str
    headers: dict[str, str]
    body: Any


@dataclass
class WebhookReceiver:
    """Counts and verifies deliveries; ``script`` holds (status, headers) answers to
    give before falling back to 200."""

    secret: str | None = SECRET
    received: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    script: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    requests: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    delay: float = 0.0
    url: str = ""
    _arrived: asyncio.Condition | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request) -> web.Response:
        data = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.script:
            status, headers = self.script.popleft()
            return web.Response(status=status, headers=headers, text=f"scripted {status}")
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(data, dict(request.headers))
            except WebhookVerificationError as exc:
                self.rejected.append(str(exc))
                return web.Response(status=401, text="bad signature")
        self.received.append(
            Received(
                request.headers.get("webhook-id", ""), dict(request.headers), orjson.loads(data)
            )
        )
        assert self._arrived is not None
        async with self._arrived:
            self._arrived.notify_all()
        return web.Response(status=204)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` verified deliveries arrived."""
        assert self._arrived is not None

        async def arrived() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.received) >= count)

        await asyncio.wait_for(arrived(), timeout)
        return self.received

    async def start(self, port: int = 0) -> web.AppRunner:
        self._arrived = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        bound = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{bound}/hook"
        return runner
