"""The SQS source against a real SQS-protocol server on loopback (moto's server mode)."""

import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from click.testing import CliRunner

from router.cli import cli
from router.http.keys import DRAINING, LIVE
from router.testing import RouterHarness, run_router
from tests.conftest import all_examples, example
from tests.sqs_server import (
    CREDENTIALS,
    MotoServer,
    moto_server,
    queue_counts,
    send_all,
    sqs_client,
    wait_for,
)

CALIPER = Path(__file__).resolve().parent.parent / "examples" / "caliper"


@pytest.fixture
def moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    for name, value in CREDENTIALS.items():  # the standard AWS chain: the environment
        monkeypatch.setenv(name, value)
    with moto_server(tmp_path / "moto.log") as server:
        yield server


@pytest.fixture
async def sqs(moto: MotoServer) -> AsyncIterator[Any]:
    async with sqs_client(moto.url) as client:
        yield client


async def make_queue(client: Any, name: str = "canvas-live-events-test", **attributes: str) -> str:
    answer = await client.create_queue(QueueName=name, Attributes=attributes)
    return answer["QueueUrl"]


def rules(queue_url: str, endpoint: str, **extra: Any) -> str:
    options = {
        "type": "sqs",
        "queue_url": queue_url,
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "wait_time_seconds": 1,
        "visibility_timeout": 10,
        **extra,
    }
    return f"""
        version: 1
        sources:
          canvas: {json.dumps(options)}
        channels:
          log: {{type: webhook, url: "", log_only: true}}
        rules:
          - {{name: everything, events: ["*"], notify: [log]}}
    """


async def delivered(router: RouterHarness, count: int, timeout: float = 20) -> list[Any]:
    async def enough() -> bool:
        return len(router.deliveries()) >= count

    await wait_for(enough, timeout, f"{count} deliveries")
    return await router.wait_until_settled()


async def metric(router: RouterHarness, line_start: str) -> float:
    async with router.client.get("/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def source_status(router: RouterHarness) -> dict[str, Any]:
    async with router.client.get("/readyz") as resp:
        return (await resp.json())["sources"]["canvas"]


async def test_every_example_event_is_delivered_and_deleted(moto: MotoServer, sqs: Any) -> None:
    queue = await make_queue(sqs)
    canvas = [orjson.dumps(e).decode() for e in all_examples().values()]
    caliper = [path.read_text() for path in sorted(CALIPER.glob("*.json"))]
    # What canvas-lms' live_events publisher writes: {"attributes": ..., "body": ...}.
    published = example("course_created")
    published["metadata"]["request_id"] = str(uuid.uuid4())  # not a repeat of the example
    publisher = json.dumps({"attributes": published["metadata"], "body": published["body"]})
    await send_all(sqs, queue, [*canvas, *caliper, publisher])
    expected = len(canvas) + len(caliper) + 1
    async with run_router(rules(queue, moto.url, receivers=3)) as router:
        deliveries = await delivered(router, expected)

        async def drained() -> bool:
            return await queue_counts(sqs, queue) == (0, 0)

        await wait_for(drained, 15, "every message deleted after its commit")
        # At least once: on a loaded machine a message may come back before its delete
        # (then it is received again, answered as a duplicate and deleted).
        received = await metric(router, 'router_source_messages_total{outcome="received"')
        deleted = await metric(router, 'router_source_messages_total{outcome="deleted"')
        duplicates = await metric(router, 'router_source_events_total{outcome="duplicate"')
        assert received >= expected and deleted >= expected
        assert received - expected == duplicates
        status = await source_status(router)
    names = sorted(d.event_name for d in deliveries)
    want = sorted(
        [e["metadata"]["event_name"] for e in all_examples().values()]
        + [p.stem for p in sorted(CALIPER.glob("*.json"))]
        + ["course_created"]
    )
    assert names == want
    assert {d.state for d in deliveries} == {"logged"}
    assert status["state"] == "running"


async def test_a_repeated_message_is_answered_as_a_duplicate(moto: MotoServer, sqs: Any) -> None:
    queue = await make_queue(sqs)
    body = orjson.dumps(example("course_completed")).decode()
    await send_all(sqs, queue, [body, body])  # at-least-once delivery: the same event twice
    async with run_router(rules(queue, moto.url, receivers=1)) as router:
        [delivery] = await delivered(router, 1)

        async def both_handled() -> bool:
            return await metric(router, 'router_source_messages_total{outcome="deleted"') == 2

        await wait_for(both_handled, 15, "both messages deleted")
        accepted = await metric(router, 'router_source_events_total{outcome="accepted"')
        duplicate = await metric(router, 'router_source_events_total{outcome="duplicate"')
        assert router.deliveries() == [delivery]
    assert (accepted, duplicate) == (1, 1)
    assert await queue_counts(sqs, queue) == (0, 0)


async def test_poison_messages_are_counted_logged_and_left_to_the_redrive_policy(
    moto: MotoServer, sqs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    dead = await make_queue(sqs, "canvas-live-events-dlq")
    attributes = await sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])
    redrive = {"deadLetterTargetArn": attributes["Attributes"]["QueueArn"], "maxReceiveCount": 1}
    queue = await make_queue(sqs, RedrivePolicy=json.dumps(redrive))
    answer = await sqs.send_message(QueueUrl=queue, MessageBody="this is not JSON")
    poison_id = answer["MessageId"]
    await send_all(
        sqs, queue, ['{"metadata": {}}', orjson.dumps(example("course_created")).decode()]
    )
    caplog.set_level(logging.WARNING, logger="router.source.canvas")
    async with run_router(rules(queue, moto.url, receivers=1, visibility_timeout=5)) as router:
        [delivery] = await delivered(router, 1)  # the good one never waits for the bad
        assert delivery.event_name == "course_created"

        async def in_dead_letter_queue() -> bool:
            return (await queue_counts(sqs, dead))[0] == 2

        # Received once, not deleted: SQS moves them on after the visibility timeout.
        await wait_for(in_dead_letter_queue, 30, "the poison messages in the dead-letter queue")
        invalid = await metric(router, 'router_source_messages_total{outcome="invalid"')
    assert invalid >= 2
    logged = [r.getMessage() for r in caplog.records if "is not an event" in r.getMessage()]
    assert any(poison_id in line and "malformed JSON" in line for line in logged), logged
    assert any("metadata.event_name" in line for line in logged), logged


async def test_credentials_errors_show_on_readyz_and_stop_nothing_else(
    moto: MotoServer, sqs: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    queue = await make_queue(sqs)
    for name in CREDENTIALS:
        monkeypatch.delenv(name)
    for name in ("AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    async with run_router(rules(queue, moto.url)) as router:

        async def failing() -> bool:
            return (await source_status(router))["state"] == "failing"

        await wait_for(failing, 15, "the source to report failing")
        status = await source_status(router)
        assert "NoCredentialsError" in status["detail"]
        assert await metric(router, 'router_source_messages_total{outcome="receive_error"') >= 1
        await router.send(example("course_created"))  # POST /events is not affected
        [delivery] = await delivered(router, 1)
        async with router.client.get("/") as resp:
            page = await resp.text()
    assert delivery.state == "logged"
    assert "Unable to locate credentials" in page


async def test_explicit_keys_are_secrets(moto: MotoServer, sqs: Any) -> None:
    queue = await make_queue(sqs)
    text = rules(queue, moto.url, access_key_id="AKIDEXAMPLE", secret_access_key="s3cr3t-key")
    async with run_router(text) as router:
        assert "s3cr3t-key" in router.app[LIVE].router.rules.secrets  # masked in logs
        await send_all(sqs, queue, [orjson.dumps(example("course_created")).decode()])
        [delivery] = await delivered(router, 1)
        async with router.client.get("/") as resp:
            assert "s3cr3t-key" not in await resp.text()
    assert delivery.event_name == "course_created"


async def test_the_server_going_away_and_coming_back(moto: MotoServer, sqs: Any) -> None:
    queue = await make_queue(sqs)
    await send_all(sqs, queue, [orjson.dumps(example("course_created")).decode()])
    async with run_router(rules(queue, moto.url)) as router:
        await delivered(router, 1)
        moto.stop()

        async def failing() -> bool:
            return (await source_status(router))["state"] == "failing"

        await wait_for(failing, 30, "the source to notice the server is gone")
        moto.start()  # same port, empty: the queue is made again, as an operator would
        async with sqs_client(moto.url) as client:
            again = await make_queue(client)
            assert again == queue
            await send_all(client, queue, [orjson.dumps(example("course_updated")).decode()])
            deliveries = await delivered(router, 2, timeout=60)

        async def running() -> bool:
            return (await source_status(router))["state"] == "running"

        await wait_for(running, 30, "the source to report running again")
    assert sorted(d.event_name for d in deliveries) == ["course_created", "course_updated"]


async def test_back_pressure_leaves_messages_in_the_queue(moto: MotoServer, sqs: Any) -> None:
    queue = await make_queue(sqs)
    async with run_router(rules(queue, moto.url, receivers=1)) as router:

        async def running() -> bool:
            return (await source_status(router))["state"] == "running"

        await wait_for(running, 15, "the source to run")
        router.app[DRAINING].set()  # what SIGTERM does: no events are taken any more
        await send_all(sqs, queue, [orjson.dumps(example("course_created")).decode()])

        # For several long polls (1 s each here) the message stays in SQS: a receive
        # already under way may take it, but hands it back instead of failing it.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert sum(await queue_counts(sqs, queue)) == 1
            assert await metric(router, 'router_source_events_total{outcome="accepted"') == 0
            await asyncio.sleep(0.2)
        assert router.deliveries() == []
        router.app[DRAINING].clear()  # the test's stand-in for the store coming back
        [delivery] = await delivered(router, 1, timeout=30)
    assert delivery.event_name == "course_created"


def test_validate_checks_the_source_config_and_warns_about_redrive(tmp_path: Path) -> None:
    good = tmp_path / "rules.yaml"
    good.write_text(rules("https://sqs.us-east-1.amazonaws.com/1/canvas-live-events", "http://x"))
    result = CliRunner().invoke(cli, ["validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "1 sources" in result.output
    assert "sources.canvas: the router cannot check the queue's redrive policy" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(rules("", "http://x", receiverz=2, wait_time_seconds=40))
    result = CliRunner().invoke(cli, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "sources.canvas.queue_url" in result.output
    assert "sources.canvas.receiverz" in result.output
    assert "sources.canvas.wait_time_seconds" in result.output


def test_region_comes_from_the_queue_url() -> None:
    from router_sqs import SqsConfig

    url = f"https://sqs.eu-west-1.amazonaws.com/123456789012/canvas-live-events-{uuid.uuid4()}"
    assert SqsConfig(queue_url=url).region_name() == "eu-west-1"
    assert SqsConfig(queue_url=url, region="us-east-2").region_name() == "us-east-2"
    assert SqsConfig(queue_url="http://127.0.0.1:4566/1/q").region_name() is None


class FailingDeletes:
    """An HTTP proxy in front of moto that records each call's action and answers the
    first ``DeleteMessageBatch`` (if ``fail``) as SQS does when it fails entries on its
    side: 200 with every entry in ``Failed`` (``SenderFault: false``); everything else
    is forwarded unchanged."""

    def __init__(self, upstream: str, *, fail: bool = True) -> None:
        self.upstream = upstream
        self.fail = fail
        self.failed_calls = 0
        self.actions: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        self.actions.append(target.rpartition(".")[2])
        if target.endswith(".DeleteMessageBatch") and self.fail and self.failed_calls == 0:
            self.failed_calls += 1
            entries = json.loads(body)["Entries"]
            failed = [
                {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "later"}
                for e in entries
            ]
            return web.json_response(
                {"Successful": [], "Failed": failed}, content_type="application/x-amz-json-1.0"
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        async with aiohttp.ClientSession() as session:
            async with session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as resp:
                data = await resp.read()
                return web.Response(body=data, status=resp.status, content_type=resp.content_type)


async def start_proxy(proxy: FailingDeletes) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    proxy.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


async def test_failed_delete_entries_are_retried(
    moto: MotoServer, sqs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await make_queue(sqs)
    proxy = FailingDeletes(moto.url)
    runner = await start_proxy(proxy)
    caplog.set_level(logging.WARNING, logger="router.source.canvas")
    try:
        await send_all(sqs, queue, [orjson.dumps(example("course_created")).decode()])
        async with run_router(rules(queue, proxy.url, receivers=1)) as router:
            [delivery] = await delivered(router, 1)

            async def deleted() -> bool:
                return await metric(router, 'router_source_messages_total{outcome="deleted"') == 1

            await wait_for(deleted, 15, "the message deleted on the second try")
            assert await queue_counts(sqs, queue) == (0, 0)
    finally:
        await runner.cleanup()
    assert proxy.failed_calls == 1
    assert delivery.event_name == "course_created"
    assert "InternalError" in caplog.text


async def test_visibility_is_extended_while_a_slow_commit_runs(
    moto: MotoServer, sqs: Any, tmp_path: Path
) -> None:
    """The store is locked by another writer for longer than the visibility timeout:
    the batch stays hidden (extended) until its commit, so no other receiver gets it."""
    queue = await make_queue(sqs)
    proxy = FailingDeletes(moto.url, fail=False)
    runner = await start_proxy(proxy)
    text = rules(queue, proxy.url, receivers=2, visibility_timeout=2)
    try:
        async with run_router(text, directory=tmp_path) as router:

            async def running() -> bool:
                return (await source_status(router))["state"] == "running"

            await wait_for(running, 15, "the source to run")
            # Another writer holds the store for 3.5 s: longer than the 2 s visibility
            # timeout, shorter than the store's 5 s busy timeout (then it would fail).
            # Nothing asks the router anything meanwhile (/metrics reads the store too).
            blocker = sqlite3.connect(tmp_path / "router.db", isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                await send_all(sqs, queue, [orjson.dumps(example("course_created")).decode()])
                await asyncio.sleep(3.5)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            [delivery] = await delivered(router, 1)

            async def deleted() -> bool:
                return await metric(router, 'router_source_messages_total{outcome="deleted"') == 1

            await wait_for(deleted, 15, "the message deleted")
            # Hidden all along: the other receiver never got it a second time.
            assert await metric(router, 'router_source_messages_total{outcome="received"') == 1
            assert await metric(router, 'router_source_events_total{outcome="duplicate"') == 0
    finally:
        await runner.cleanup()
    assert delivery.event_name == "course_created"
    assert "ChangeMessageVisibilityBatch" in proxy.actions
