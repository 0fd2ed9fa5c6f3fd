"""From accepted event to receiver: signatures, retries, dead letters, isolation."""

import asyncio
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from router.http.keys import DISPATCHER, STORE
from router.store import NewDelivery, RoutedEvent, open_store
from tests.conftest import (
    ROOT,
    ServiceFactory,
    StoreDB,
    all_examples,
    count_calls,
    example,
    webhook_rules,
)
from tests.receiver import SECRET, WebhookReceiver


def deliveries(store_db: StoreDB) -> list[dict[str, Any]]:
    return store_db.dicts("SELECT * FROM deliveries ORDER BY id")


def first_state(store_db: StoreDB) -> str | None:
    rows = deliveries(store_db)
    return rows[0]["state"] if rows else None


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_every_example_event_is_delivered_signed(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    client = await service(webhook_rules(receiver.url))
    examples = all_examples()  # file stem -> event (asset_accessed.2 is an asset_accessed)
    resp = await client.post("/events", json=list(examples.values()))
    accepted = [a["id"] for a in (await resp.json())["accepted"]]
    stems = dict(zip(accepted, examples, strict=True))
    received = await receiver.wait_for(len(examples))
    assert receiver.rejected == []
    by_name = {stems[r.body["event_id"]]: r for r in received}
    assert set(by_name) == set(examples)
    for name, got in by_name.items():
        assert got.body["event"] == examples[name]
        assert got.body["event_name"] == examples[name]["metadata"]["event_name"]
        assert got.webhook_id == f"{got.body['event_id']}:everything:hook"
        assert got.body["text"]  # rendered by the event's template
    completed = by_name["course_completed"].body
    assert completed["title"] == "Isaac Newton completed Computer Science I"
    # America/New_York local time of 2019-11-05T13:38:00Z, from metadata.time_zone.
    assert "2019-11-05 08:38 EST" in completed["text"]
    assert "21070000000000565" not in by_name["syllabus_updated"].body["title"]
    await until(lambda: all(d["state"] == "delivered" for d in deliveries(store_db)))


async def test_retry_then_success_with_same_idempotency_key(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    receiver.script.extend([(503, {}), (500, {}), (408, {})])
    client = await service(webhook_rules(receiver.url))
    started = time.monotonic()
    await client.post("/events", json=example("course_created"))
    [got] = await receiver.wait_for(1)
    assert receiver.requests == 4
    # Backoff is at most 0.2 s here: each retry is timed, not left to the 1 s poll.
    assert time.monotonic() - started < 2.0
    await until(lambda: first_state(store_db) == "delivered")
    [row] = deliveries(store_db)
    assert row["attempts"] == 4 and row["key"] == got.webhook_id


async def test_retry_after_is_honoured(service: ServiceFactory, receiver: WebhookReceiver) -> None:
    receiver.script.append((429, {"Retry-After": "1"}))
    client = await service(webhook_rules(receiver.url))
    started = time.monotonic()
    await client.post("/events", json=example("course_created"))
    await receiver.wait_for(1, timeout=10)
    # backoff_cap is 0.2 s in tests: only Retry-After explains a wait of a second.
    assert time.monotonic() - started >= 0.95


async def test_permanent_error_goes_to_dead_letters_then_replays(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    receiver.script.append((422, {}))
    client = await service(webhook_rules(receiver.url))
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 1
    assert row["last_error"] == "HTTP 422 Unprocessable Entity: scripted 422"
    assert receiver.requests == 1

    store = client.app[STORE]
    assert (await store.counts()).dead == 1
    assert await store.replay(None, now=time.time()) == 1
    [got] = await receiver.wait_for(1)
    assert got.webhook_id == row["key"]
    await until(lambda: first_state(store_db) == "delivered")


async def test_attempts_exhausted_goes_to_dead_letters(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    receiver.script.extend([(500, {})] * 10)
    client = await service(webhook_rules(receiver.url), max_attempts=3)
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 3
    assert row["last_error"].startswith("gave up after 3 attempt(s): HTTP 500")
    assert receiver.requests == 3


async def test_a_damaged_stored_message_is_a_dead_letter_not_a_loop(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB, db_url: str
) -> None:
    # A row no router would write (a block that is not text), put in the store before
    # the service starts: the message is validated when sent, and the delivery dies
    # at once instead of failing and being claimed again forever.
    store = open_store(db_url)
    await store.open()
    try:
        event = orjson.dumps(example("course_created"))
        await store.accept_events([("e-1", "course_created", event)], dedupe_window=60, now=0)
        [claimed] = await store.claim_events(1, lease=60, now=1)
        damaged = orjson.dumps({"title": "t", "blocks": {"html": ["not", "text"]}})
        job = NewDelivery("e-1:everything:hook", "everything", "hook", damaged)
        await store.record_routing([RoutedEvent(claimed, [job])], now=2)
    finally:
        await store.close()
    await service(webhook_rules(receiver.url))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 1
    assert (
        row["last_error"]
        == "stored message is damaged: blocks.html: Input should be a valid string"
    )
    assert receiver.requests == 0


async def test_a_receiver_slower_than_the_timeout_is_retried(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    # Far slower than both attempts together (a handler that finished its sleep would
    # be recorded, and a second was too close on a busy machine).
    receiver.delay = 3.0
    rules = webhook_rules(receiver.url).replace("timeout: 5", "timeout: 0.2")
    client = await service(rules, max_attempts=2)
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 2
    assert row["last_error"] == "gave up after 2 attempt(s): timed out after 0.2s"
    assert receiver.received == []


async def test_connection_refused_is_retried(service: ServiceFactory, store_db: StoreDB) -> None:
    client = await service(webhook_rules("http://127.0.0.1:9/hook"), max_attempts=2)
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 2
    assert "ClientConnectorError" in row["last_error"]


async def test_log_only_channel_records_what_it_would_send(
    service: ServiceFactory, store_db: StoreDB, caplog: pytest.LogCaptureFixture
) -> None:
    client = await service(webhook_rules("", secret=None))
    caplog.set_level("INFO")
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "logged")
    [record] = [r for r in caplog.records if r.getMessage() == "log-only channel: would send"]
    assert record.title == "Isaac Newton completed Computer Science I"  # type: ignore[attr-defined]
    assert record.reason == "no url configured"  # type: ignore[attr-defined]


async def test_log_only_raw_event_channel_shows_the_event(
    service: ServiceFactory, store_db: StoreDB, caplog: pytest.LogCaptureFixture
) -> None:
    rules = webhook_rules("", secret=None).replace("timeout: 5", "timeout: 5\n    body: event")
    client = await service(rules)
    caplog.set_level("INFO")
    event = example("course_completed")
    await client.post("/events", json=event)
    await until(lambda: first_state(store_db) == "logged")
    [record] = [r for r in caplog.records if r.getMessage() == "log-only channel: would send"]
    assert record.event == event  # type: ignore[attr-defined]
    assert not hasattr(record, "title")


async def test_template_failure_is_a_dead_letter_naming_template_and_line(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path, store_db: StoreDB
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "default.j2").write_text("ok\n")
    (templates / "course_created.j2").write_text("line one\n{{ body.no_such_field.deeper }}\n")
    client = await service(webhook_rules(receiver.url))
    await client.post("/events", json=[example("course_created"), example("course_updated")])
    [got] = await receiver.wait_for(1)
    assert got.body["event_name"] == "course_updated"
    await until(lambda: any(d["state"] == "dead" for d in deliveries(store_db)))
    [dead] = [d for d in deliveries(store_db) if d["state"] == "dead"]
    assert dead["last_error"].startswith("template course_created.j2 line 2: UndefinedError")


BROKEN_PLUGIN = """
import asyncio
import shutil
from router import Channel, hookimpl
from router.channels import ChannelConfig


class BoomConfig(ChannelConfig):
    mode: str = "raise"


class BoomChannel(Channel):
    type = "boom"
    Config = BoomConfig

    async def send(self, message):
        if self.config.mode == "hang":
            await asyncio.sleep(60)
        raise RuntimeError("kaboom")


@hookimpl
def register_channels(register):
    register(BoomChannel)
"""


@pytest.mark.parametrize(
    ("mode", "error"), [("raise", "raised RuntimeError: kaboom"), ("hang", "timed out after 0.3s")]
)
async def test_a_crashing_plugin_never_stops_other_channels(
    service: ServiceFactory,
    receiver: WebhookReceiver,
    tmp_path: Path,
    store_db: StoreDB,
    mode: str,
    error: str,
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "boom_plugin.py").write_text(BROKEN_PLUGIN)
    rules = (
        webhook_rules(receiver.url)
        .replace(
            "rules:",
            f"  boom: {{type: boom, mode: {mode}, timeout: 0.3}}\nrules:",
        )
        .replace("notify: [hook]", "notify: [boom, hook]")
    )
    client = await service(rules, plugins_dir=plugins, max_attempts=2)
    for name in ("course_created", "course_updated", "course_completed"):
        await client.post("/events", json=example(name))
    await receiver.wait_for(3)
    await until(lambda: sum(d["state"] == "dead" for d in deliveries(store_db)) == 3)
    dead = [d for d in deliveries(store_db) if d["state"] == "dead"]
    assert {d["channel"] for d in dead} == {"boom"}
    assert all(error in d["last_error"] for d in dead)
    if mode == "raise":
        assert all("channel plugin 'boom_plugin'" in d["last_error"] for d in dead)


async def test_drain_lets_in_flight_deliveries_finish(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    receiver.delay = 0.5
    client = await service(webhook_rules(receiver.url))
    await client.post("/events", json=example("course_created"))
    await until(lambda: receiver.requests == 1)
    await client.close()  # runs on_shutdown and cleanup: drain with a 2 s grace
    assert [d["state"] for d in deliveries(store_db)] == ["delivered"]


async def test_secret_values_never_reach_dead_letters(
    service: ServiceFactory,
    store_db: StoreDB,
    monkeypatch: pytest.MonkeyPatch,
    aiohttp_server: Any,
) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=400, text=f"no such path {request.path_qs}")

    app = web.Application()
    app.router.add_post("/x", echo)
    server = await aiohttp_server(app)
    monkeypatch.setenv("HOOK_TOKEN", "tok-abcdef123456")
    monkeypatch.setenv("HOOK_KEY", "k3y-0987654321")
    rules = textwrap.dedent(
        f"""\
        version: 1
        channels:
          hook:
            type: webhook
            url: "{server.make_url("/x")}?token=${{HOOK_TOKEN}}&k=${{HOOK_KEY}}"
        rules:
          - {{name: all, events: ["*"], notify: [hook]}}
        """
    )
    client = await service(rules)
    await client.post("/events", json=example("course_section_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["last_error"] == "HTTP 400 Bad Request: no such path /x?token=***&k=***"


async def test_channel_concurrency_limit_is_respected(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    receiver.delay = 0.1
    rules = webhook_rules(receiver.url).replace("timeout: 5", "timeout: 5\n    concurrency: 2")
    client = await service(rules)
    events = [{"metadata": {"event_name": "tick"}, "body": {"n": n}} for n in range(8)]
    await client.post("/events", json=events)
    await receiver.wait_for(8)
    assert receiver.peak_in_flight == 2


async def test_a_slow_store_does_not_hold_the_channels_slots(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    # Concurrency bounds sends to the channel; waiting for the store to record an
    # outcome (a commit, an fsync) must not keep the next send waiting.
    rules = webhook_rules(receiver.url).replace("timeout: 5", "timeout: 5\n    concurrency: 1")
    client = await service(rules)
    store = client.app[STORE]
    finish_delivery = store.finish_delivery
    recorded = asyncio.Event()

    async def held_finish_delivery(*args: Any, **kwargs: Any) -> Any:
        await recorded.wait()
        return await finish_delivery(*args, **kwargs)

    store.finish_delivery = held_finish_delivery
    events = [{"metadata": {"event_name": "tick"}, "body": {"n": n}} for n in range(4)]
    await client.post("/events", json=events)
    await receiver.wait_for(4, timeout=5.0)  # not one outcome recorded yet
    assert receiver.peak_in_flight == 1
    assert {d["state"] for d in deliveries(store_db)} == {"pending"}
    recorded.set()
    await until(lambda: [d["state"] for d in deliveries(store_db)] == ["delivered"] * 4)


async def test_max_age_gives_up_before_max_attempts(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    receiver.script.extend([(503, {"Retry-After": "5"})] * 5)
    client = await service(webhook_rules(receiver.url), max_age=2)
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    # Waiting 5 s as asked would pass the 2 s age limit: give up now, not later.
    assert row["attempts"] == 1
    assert (
        row["last_error"]
        == "gave up after 1 attempt(s): HTTP 503 Service Unavailable: scripted 503"
    )


async def test_webhook_headers_and_raw_event_body(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    rules = webhook_rules(receiver.url).replace(
        "timeout: 5", "timeout: 5\n    body: event\n    headers: {X-Source: canvas-router}"
    )
    client = await service(rules)
    event = example("syllabus_updated")
    await client.post("/events", json=event)
    [got] = await receiver.wait_for(1)
    assert got.body == event
    assert got.headers["X-Source"] == "canvas-router"
    assert got.headers["Content-Type"] == "application/json"


async def test_draining_service_answers_503(service: ServiceFactory) -> None:
    from router.http.keys import DRAINING

    client = await service(webhook_rules("", secret=None))
    client.app[DRAINING].set()
    resp = await client.post("/events", json=example("course_created"))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    assert (await client.get("/readyz")).status == 503


async def test_a_receivers_cookie_does_not_follow_later_deliveries(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    receiver.script.append((503, {"Set-Cookie": "session=from-receiver; Path=/"}))
    # By host name: a cookie jar ignores cookies from bare IP addresses.
    client = await service(webhook_rules(receiver.url.replace("127.0.0.1", "localhost")))
    await client.post("/events", json=example("course_created"))
    [got] = await receiver.wait_for(1)
    assert receiver.requests == 2  # the 503 with its cookie, then the retry
    assert "Cookie" not in got.headers


async def test_a_raw_event_channel_skips_the_template(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB, tmp_path: Path
) -> None:
    # A template that fails whenever it is rendered: the "message" channel's delivery
    # is born dead, while the "event" channel never renders it and delivers.
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    (tmp_path / "templates" / "broken.j2").write_text("{{ no_such_variable.attribute }}")
    rules = textwrap.dedent(
        f"""\
        version: 1
        channels:
          raw:
            type: webhook
            url: "{receiver.url}"
            secret: "{SECRET}"
            body: event
          rendered:
            type: webhook
            url: "{receiver.url}"
            secret: "{SECRET}"
        rules:
          - name: broken
            events: [course_completed]
            notify: [raw, rendered]
            template: broken
        """
    )
    client = await service(rules)
    event = example("course_completed")
    await client.post("/events", json=event)
    [got] = await receiver.wait_for(1)
    assert got.body == event
    await until(
        lambda: (
            {d["channel"]: d["state"] for d in deliveries(store_db)}
            == {
                "raw": "delivered",
                "rendered": "dead",
            }
        )
    )
    dead = next(d for d in deliveries(store_db) if d["channel"] == "rendered")
    assert "broken.j2" in dead["last_error"]


async def test_a_trickle_of_deliveries_asks_the_store_only_what_can_find_work(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    client = await service(webhook_rules(receiver.url))
    store = client.app[STORE]
    calls = count_calls(store, "claim_deliveries", "next_due")
    started = time.monotonic()
    for n in range(10):  # one at a time: each delivery finds the dispatcher idle
        await client.post("/events", json=example("course_created") | {"n": n})
        await receiver.wait_for(n + 1)
    polls = int(time.monotonic() - started) + 1
    # One claim per delivery plus the polls; no empty claim after each delivery, and
    # no look for the next retry after each one.
    assert calls["claim_deliveries"] <= 10 + polls, calls
    assert calls["next_due"] <= 1, calls


def metric(text: str, name: str) -> float | None:
    """A sample's value from the Prometheus text format, or None if it is absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


async def test_an_outage_holds_deliveries_and_the_recovery_sends_them_at_once(
    service: ServiceFactory,
    receiver: WebhookReceiver,
    store_db: StoreDB,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="router.dispatch")
    receiver.script.extend([(503, {})] * 1000)  # down until the script is cleared
    rules = webhook_rules(receiver.url).replace(
        "timeout: 5", "timeout: 5\n    circuit_breaker: 3\n    concurrency: 1"
    )
    # A retry waits up to a minute here: only the circuit's release gets them out soon.
    client = await service(rules, backoff_base=60, backoff_cap=60)
    events = [example("course_created") | {"n": n} for n in range(12)]
    assert (await client.post("/events", json=events)).status == 202

    def opened() -> bool:
        return any(r.getMessage().startswith("channel circuit open") for r in caplog.records)

    await until(opened)
    await until(lambda: receiver.in_flight == 0)
    await asyncio.sleep(0.3)  # the jobs in hand go back to the store at once
    rows = deliveries(store_db)
    assert {d["state"] for d in rows} == {"pending"}
    tried = [d for d in rows if d["attempts"] == 1]
    # Put back untried, due at the next probe; and never claimed while the circuit is open.
    held = [d for d in rows if d["attempts"] == 0 and d["next_attempt_at"] > d["created_at"]]
    untouched = [d for d in rows if d["attempts"] == 0 and d["next_attempt_at"] == d["created_at"]]
    # One send at a time: three failed and opened the circuit; the jobs claimed with
    # them (and to take their place) went back untried; the rest were never claimed.
    assert len(tried) == 3 and len(held) >= 1, rows
    assert len(tried) + len(held) + len(untouched) == 12
    assert receiver.requests == len(tried)
    assert all(d["last_error"] is None for d in held + untouched)
    exposition = await (await client.get("/metrics")).text()
    assert metric(exposition, 'router_channel_circuit_open{channel="hook"}') == 1
    assert metric(exposition, 'router_deliveries_held_total{channel="hook"}') == len(held)
    status_page = await (await client.get("/")).text()
    assert "circuit open" in status_page
    [opened] = [r for r in caplog.records if r.getMessage().startswith("channel circuit open")]
    assert opened.channel == "hook" and opened.error == "HTTP 503 Service Unavailable: scripted 503"  # type: ignore[attr-defined]

    await asyncio.sleep(1.5)  # the first probe (a second after opening) fails too
    assert len(tried) + 1 <= receiver.requests <= len(tried) + 2  # one probe at a time
    assert not any(d["state"] == "dead" for d in deliveries(store_db))

    receiver.script.clear()  # the receiver is back: the next probe (2 s later) succeeds
    recovered = time.monotonic()
    received = await receiver.wait_for(12, timeout=10)
    assert time.monotonic() - recovered < 5  # not the minute their backoff asked
    assert len({r.webhook_id for r in received}) == 12
    await until(lambda: {d["state"] for d in deliveries(store_db)} == {"delivered"})
    exposition = await (await client.get("/metrics")).text()
    assert metric(exposition, 'router_channel_circuit_open{channel="hook"}') == 0
    assert "circuit open" not in await (await client.get("/")).text()
    [closed] = [r for r in caplog.records if r.getMessage().startswith("channel circuit closed")]
    # The tried ones' retries, waiting up to a minute (unless full jitter made one due).
    assert closed.released >= 1  # type: ignore[attr-defined]


async def test_circuit_breaker_zero_tries_every_delivery(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    receiver.script.extend([(503, {})] * 1000)
    rules = webhook_rules(receiver.url).replace("timeout: 5", "timeout: 5\n    circuit_breaker: 0")
    client = await service(rules, max_attempts=2)
    events = [example("course_created") | {"n": n} for n in range(12)]
    await client.post("/events", json=events)
    await until(lambda: {d["state"] for d in deliveries(store_db)} == {"dead"})
    assert receiver.requests == 24


async def test_jobs_claimed_before_the_circuit_opened_are_held_not_probes(
    service: ServiceFactory,
    receiver: WebhookReceiver,
    store_db: StoreDB,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = await service(webhook_rules(receiver.url), backoff_base=60, backoff_cap=60)
    dispatcher, store = client.app[DISPATCHER], client.app[STORE]
    claim = store.claim_deliveries

    async def claim_while_the_circuit_opens(*args: Any, **kwargs: Any) -> Any:
        jobs = await claim(*args, **kwargs)
        breaker = dispatcher.channels["hook"].breaker
        if jobs and not breaker.open:  # other sends failed while the store answered
            for _ in range(breaker.threshold):
                breaker.failed(-1, now=time.time())
        return jobs

    monkeypatch.setattr(store, "claim_deliveries", claim_while_the_circuit_opens)
    events = [example("course_created") | {"n": n} for n in range(3)]
    await client.post("/events", json=events)
    # All three go back untried: none was claimed as a probe.
    await until(
        lambda: (
            all(
                d["attempts"] == 0 and d["next_attempt_at"] > d["created_at"]
                for d in deliveries(store_db)
            )
            and len(deliveries(store_db)) == 3
        )
    )
    assert receiver.requests == 0
    # The first probe, a second later, goes through and closes the circuit.
    await receiver.wait_for(3, timeout=10)
    await until(lambda: {d["state"] for d in deliveries(store_db)} == {"delivered"})
    assert not dispatcher.channels["hook"].breaker.open


async def test_sends_waiting_for_the_rate_limit_are_held_once_the_circuit_opens(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    # Four sends take the channel's four slots at once, then wait their turn at 5/s
    # (0, 0.2, 0.4, 0.6 s); the second failure opens the circuit at about 0.2 s.
    receiver.script.extend([(503, {})] * 1000)
    rules = webhook_rules(receiver.url).replace(
        "timeout: 5", "timeout: 5\n    circuit_breaker: 2\n    rate_limit: 5/s"
    )
    client = await service(rules, backoff_base=60, backoff_cap=60)
    await client.post("/events", json=[example("course_created") | {"n": n} for n in range(4)])
    await until(
        lambda: (
            sum(
                d["attempts"] == 0 and d["next_attempt_at"] > d["created_at"]
                for d in deliveries(store_db)
            )
            == 2
        )
    )
    assert receiver.requests == 2  # the two still waiting went back untried
