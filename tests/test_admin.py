"""The admin API under /-/: deliveries, the dead-letter queue, replay and purge."""

import textwrap
import time

from aiohttp.test_utils import TestClient

from tests.conftest import ServiceFactory, example
from tests.receiver import SECRET, WebhookReceiver
from tests.test_metrics import until_metric

TOKEN = "admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ACCESS_TOKEN = "111~sGvKF4Yzr2AqdwShKj7CwwopgwJuMFONBqWu44Upk1F4jgkFvpXc9HY20PCU5r0"


def rules(url: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        channels:
          hook: {{type: webhook, url: "{url}", secret: "{SECRET}", timeout: 5}}
          other: {{type: webhook, url: "http://127.0.0.1:9/refused", timeout: 1}}
        rules:
          - {{name: sections, events: [course_section_created], notify: [hook]}}
          - {{name: updated, events: [course_updated], notify: [hook, other]}}
        """
    )


async def three_dead_letters(
    service: ServiceFactory, receiver: WebhookReceiver
) -> tuple[TestClient, dict[tuple[str, str], dict]]:
    """(sections, hook), (updated, hook) and (updated, other) in the dead letters."""
    receiver.script.extend([(422, {}), (422, {})])
    client = await service(rules(receiver.url), admin_token=TOKEN, max_attempts=1)
    await client.post("/events", json=example("course_section_created"))
    await until_metric(client, "router_dead_letters", 1)
    await client.post("/events", json=example("course_updated"))
    await until_metric(client, "router_dead_letters", 3)
    body = await (await client.get("/-/dlq", headers=ADMIN)).json()
    return client, {(d["rule"], d["channel"]): d for d in body["dead_letters"]}


async def test_admin_api_needs_the_token(service: ServiceFactory) -> None:
    client = await service(rules("http://127.0.0.1:9/x"))
    for path in ("/-/deliveries", "/-/dlq", "/-/dlq/1"):
        assert (await client.get(path)).status == 404  # off without ROUTER_ADMIN_TOKEN
    client = await service(rules("http://127.0.0.1:9/x"), admin_token=TOKEN)
    wrong = {"Authorization": "Bearer nope"}
    for path in ("/-/deliveries", "/-/dlq", "/-/dlq/1"):
        assert (await client.get(path)).status == 401
        assert (await client.get(path, headers=wrong)).status == 401
    for path in ("/-/dlq/replay", "/-/dlq/purge"):
        resp = await client.post(path, json={"all": True}, headers=wrong)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_deliveries_and_filters(service: ServiceFactory, receiver: WebhookReceiver) -> None:
    client, dead = await three_dead_letters(service, receiver)

    async def ids(query: str) -> list[int]:
        resp = await client.get(f"/-/deliveries?{query}", headers=ADMIN)
        assert resp.status == 200, await resp.text()
        return [d["id"] for d in (await resp.json())["deliveries"]]

    every = await ids("")
    assert len(every) == 3 and every == sorted(every, reverse=True)  # newest first
    assert await ids("state=dead") == every
    assert await ids("state=delivered") == []
    assert await ids("channel=other") == [dead[("updated", "other")]["id"]]
    assert await ids("rule=sections") == [dead[("sections", "hook")]["id"]]
    assert await ids("rule=updated&channel=hook") == [dead[("updated", "hook")]["id"]]
    assert await ids("since=1h") == every
    assert await ids(f"since={time.time() + 60}") == []
    assert await ids("since=2000-01-01T00:00:00Z") == every
    assert await ids("limit=1") == every[:1]
    for bad in ("state=lost", "limit=0", "limit=x", "since=yesterday"):
        resp = await client.get(f"/-/deliveries?{bad}", headers=ADMIN)
        assert resp.status == 400
        assert "error" in await resp.json()
    [record] = (await (await client.get("/-/deliveries?channel=other", headers=ADMIN)).json())[
        "deliveries"
    ]
    assert record["state"] == "dead" and record["attempts"] == 1
    assert record["event_name"] == "course_updated"
    assert record["key"] == f"{record['event_id']}:updated:other"


async def test_an_empty_dead_letter_queue_says_so(service: ServiceFactory) -> None:
    client = await service(rules("http://127.0.0.1:9/x"), admin_token=TOKEN)
    body = await (await client.get("/-/dlq", headers=ADMIN)).json()
    assert body == {
        "total": 0,
        "dead_letters": [],
        "message": "no dead letters: the dead-letter queue is empty",
    }


async def test_dlq_list_and_show(service: ServiceFactory, receiver: WebhookReceiver) -> None:
    client, dead = await three_dead_letters(service, receiver)
    body = await (await client.get("/-/dlq", headers=ADMIN)).json()
    assert body["total"] == 3
    hook = dead[("sections", "hook")]
    assert hook["last_error"] == "HTTP 422 Unprocessable Entity: scripted 422"
    assert hook["attempts"] == 1
    assert "ClientConnectorError" in dead[("updated", "other")]["last_error"]
    body = await (await client.get("/-/dlq?channel=hook&limit=1", headers=ADMIN)).json()
    assert [d["channel"] for d in body["dead_letters"]] == ["hook"]
    assert "message" not in body
    body = await (await client.get("/-/dlq?rule=nope", headers=ADMIN)).json()
    assert body == {
        "total": 3,
        "dead_letters": [],
        "message": "no dead letters match; the queue holds 3",
    }

    resp = await client.get(f"/-/dlq/{hook['id']}", headers=ADMIN)
    assert resp.status == 200
    shown = await resp.json()
    assert shown["delivery"] == hook
    assert shown["message"]["title"].startswith("Section created: Winter 2020 Linear Algebra")
    assert shown["event"]["body"] == example("course_section_created")["body"]
    # The event's Canvas URL carries an access token: never shown.
    assert "access_token=***" in shown["event"]["metadata"]["url"]
    assert ACCESS_TOKEN not in await resp.text()

    assert (await client.get("/-/dlq/999999", headers=ADMIN)).status == 404
    assert (await client.get("/-/dlq/abc", headers=ADMIN)).status == 400


async def test_replay_by_id_keeps_the_idempotency_key(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    client, dead = await three_dead_letters(service, receiver)
    hook = dead[("sections", "hook")]
    resp = await client.post("/-/dlq/replay", json={"ids": [hook["id"]]}, headers=ADMIN)
    assert await resp.json() == {"replayed": 1}
    [got] = await receiver.wait_for(1)
    assert got.webhook_id == hook["key"]
    await until_metric(client, "router_dead_letters", 2)
    await until_metric(
        client, "router_delivery_attempts_total", 1, channel="hook", outcome="delivered"
    )
    resp = await client.get("/-/deliveries?rule=sections", headers=ADMIN)
    [record] = (await resp.json())["deliveries"]
    assert (record["id"], record["key"], record["state"]) == (hook["id"], hook["key"], "delivered")
    # A replay of something that is not dead (any more) does nothing.
    resp = await client.post("/-/dlq/replay", json={"ids": [hook["id"]]}, headers=ADMIN)
    assert await resp.json() == {"replayed": 0}


async def test_replay_and_purge_selectors(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    client, dead = await three_dead_letters(service, receiver)
    for body in ({}, {"ids": []}, {"all": False}, {"nope": 1}, {"ids": ["x"]}, [1]):
        resp = await client.post("/-/dlq/replay", json=body, headers=ADMIN)
        assert resp.status == 400, body
        resp = await client.post("/-/dlq/purge", json=body, headers=ADMIN)
        assert resp.status == 400, body
    resp = await client.post("/-/dlq/replay", data=b"{", headers=ADMIN)
    assert resp.status == 400

    # Filters select without "all"; the connection is still refused, so it dies again.
    resp = await client.post("/-/dlq/replay", json={"channel": "other"}, headers=ADMIN)
    assert await resp.json() == {"replayed": 1}
    await until_metric(client, "router_delivery_attempts_total", 2, channel="other", outcome="dead")

    resp = await client.post(
        "/-/dlq/purge", json={"rule": "updated", "channel": "hook"}, headers=ADMIN
    )
    assert await resp.json() == {"purged": 1}
    resp = await client.post("/-/dlq/purge", json={"since": "1h", "all": True}, headers=ADMIN)
    assert await resp.json() == {"purged": 2}
    body = await (await client.get("/-/dlq", headers=ADMIN)).json()
    assert body == {
        "total": 0,
        "dead_letters": [],
        "message": "no dead letters: the dead-letter queue is empty",
    }
    assert set(dead) == {("sections", "hook"), ("updated", "hook"), ("updated", "other")}


def test_since_accepts_durations_timestamps_and_iso_times() -> None:
    from router.delivery_queries import BadQuery, parse_since

    now = 1_700_000_000.0
    assert parse_since("90m", now=now) == now - 5400
    assert parse_since("2d", now=now) == now - 172800
    assert parse_since("1699999000", now=now) == 1699999000
    assert parse_since("2023-11-14T22:13:20Z", now=now) == now
    assert parse_since("2023-11-14T22:13:20", now=now) == now  # naive: UTC
    try:
        parse_since("last tuesday", now=now)
    except BadQuery as exc:
        assert "since" in str(exc)
    else:
        raise AssertionError("accepted a bad time")
