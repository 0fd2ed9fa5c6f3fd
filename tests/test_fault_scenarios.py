"""Issue 18, the attacks as a suite: a receiver that fails in every way a real one does
(500, 429 with Retry-After, a hang past the channel's timeout, a connection reset),
each delivery's first attempts failing, while events flood in. Every event answered
202 is delivered, and delivered once: counted by ``webhook-id`` among the answers the
receiver gave 2xx. (kill -9 mid-flood: tests/test_crash_recovery.py; a full disk:
tests/test_store_faults.py.)"""

import asyncio
import hashlib
import textwrap
import time
from collections import Counter
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import ServiceFactory, StoreDB, example

EVENTS = 60
FAULTS = ("500", "429", "hang", "reset")


class ChaosReceiver:
    """Answers each webhook-id's first attempts with faults chosen from the id, then
    204; counts the 2xx it answered per webhook-id."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.url = ""

    def plan(self, key: str) -> list[str]:
        digest = hashlib.sha256(key.encode()).digest()
        return [FAULTS[b % len(FAULTS)] for b in digest[: digest[-1] % 3]]  # 0 to 2 faults

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        key = request.headers.get("webhook-id", "")
        self.attempts[key] += 1
        plan = self.plan(key)
        if self.attempts[key] <= len(plan):
            fault = plan[self.attempts[key] - 1]
            self.faults[fault] += 1
            if fault == "500":
                return web.Response(status=500, text="boom")
            if fault == "429":
                return web.Response(status=429, headers={"Retry-After": "0"})
            if fault == "hang":
                await asyncio.sleep(2.5)  # past the channel's 1 s timeout
                return web.Response(status=503)  # too late: never counts as accepted
            assert request.transport is not None
            request.transport.abort()  # a reset mid-request
            return web.Response(status=500)
        self.accepted[key] += 1
        return web.Response(status=204)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        return runner


@pytest.mark.timeout(120)
async def test_receiver_faults_lose_nothing_and_repeat_nothing(
    service: ServiceFactory, store_db: StoreDB
) -> None:
    receiver = ChaosReceiver()
    runner = await receiver.start()
    try:
        client = await service(
            textwrap.dedent(
                f"""\
                version: 1
                channels:
                  hook:
                    type: webhook
                    url: "{receiver.url}"
                    body: event
                    timeout: 1
                    concurrency: 8
                    max_attempts: 10
                    circuit_breaker: 0
                rules:
                  - {{name: all, events: ["*"], notify: [hook]}}
                """
            ),
            backoff_base=0.05,
            backoff_cap=0.2,
        )

        async def post(n: int) -> Any:
            event = example("course_updated")
            event["body"]["name"] = f"course {n}"
            resp = await client.post("/events", json=event)
            assert resp.status == 202
            return (await resp.json())["accepted"][0]["id"]

        ids = await asyncio.gather(*(post(n) for n in range(EVENTS)))
        expected = {f"{event_id}:all:hook" for event_id in ids}
        deadline = time.monotonic() + 90
        while set(receiver.accepted) != expected:
            assert time.monotonic() < deadline, (
                f"{len(expected - set(receiver.accepted))} deliveries never arrived;"
                f" faults {dict(receiver.faults)}"
            )
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a late repeat would show up now
        assert set(receiver.accepted) == expected  # 0 lost
        assert set(receiver.accepted.values()) == {1}  # 0 duplicated
        assert all(receiver.faults[fault] > 0 for fault in FAULTS), receiver.faults
        states = Counter(row["state"] for row in store_db.dicts("SELECT state FROM deliveries"))
        assert states == {"delivered": EVENTS}
    finally:
        await runner.cleanup()
