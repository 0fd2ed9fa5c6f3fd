"""Silences: matching, the silenced state, the CLI, the admin API, the status page's
form, expiry, survival across a restart, replay of silenced deliveries, and replicas
sharing them on PostgreSQL."""

import asyncio
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from router.cli import cli
from router.http.auth import COOKIE, csrf_value
from router.http.keys import SESSION_KEY
from router.matching import MatchContext
from router.routing import RoutingWorker
from router.silence_requests import new_silence
from router.silences import compile_matchers
from router.store.postgres import PostgresStore
from tests.conftest import ServiceFactory, example
from tests.receiver import SECRET, WebhookReceiver
from tests.test_metrics import scrape, until_metric, value
from tests.test_postgres_store import pg_schema, store_url
from tests.test_quiet_hours import make_router

__all__ = ["pg_schema"]  # the fixture, imported to be used here

TOKEN = "admin-token-for-silence-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def rules(url: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        channels:
          hook: {{type: webhook, url: "{url}", secret: "{SECRET}", timeout: 5}}
          audit: {{type: webhook, url: "{url}", secret: "{SECRET}", timeout: 5}}
        rules:
          - {{name: sections, events: [course_section_created], notify: [hook, audit]}}
          - {{name: completed, events: [course_completed], notify: [hook]}}
        """
    )


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


# -- matching -------------------------------------------------------------------------------


def test_matchers_select_by_rule_channel_event_and_fields() -> None:
    event = example("course_section_created")
    ctx = MatchContext(event)
    name = event["metadata"]["event_name"]
    section = event["body"]["course_section_id"]
    assert compile_matchers({"rule": "sect*"}).matches("sections", "hook", name, ctx)
    assert not compile_matchers({"rule": "sect*"}).matches("completed", "hook", name, ctx)
    both = compile_matchers({"rule": "sections", "channel": "aud?t"})
    assert both.matches("sections", "audit", name, ctx)
    assert not both.matches("sections", "hook", name, ctx)  # every matcher must hold
    assert compile_matchers({"event": "course_*"}).matches("r", "c", name, ctx)
    assert not compile_matchers({"event": "course_completed"}).matches("r", "c", name, ctx)
    by_field = compile_matchers({"match": {"body.course_section_id": section}})
    assert by_field.matches("r", "c", name, ctx)
    other = compile_matchers({"match": {"body.course_section_id": {"in": ["nope"]}}})
    assert not other.matches("r", "c", name, ctx)


@pytest.mark.parametrize(
    ("matchers", "message"),
    [
        ({}, "at least one of rule, channel, event, match"),
        ({"rule": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"match": {"body.x": {"bigger": 3}}}, "match.body.x"),
    ],
)
def test_bad_matchers_are_named(matchers: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        compile_matchers(matchers)


# -- on a running service ---------------------------------------------------------------------


async def test_a_cli_silence_applies_to_a_running_server_and_replays(
    service: ServiceFactory, receiver: WebhookReceiver, db_url: str
) -> None:
    client = await service(rules(receiver.url), admin_token=TOKEN)
    code, out = await asyncio.to_thread(
        run, "silence", "add", "--rule", "sections", "--channel", "audit", "--for", "2h",
        "--comment", "end-of-term import", "--author", "ops", "--db", db_url, "--json",
    )  # fmt: skip
    assert code == 0, out
    [made] = orjson.loads(out)
    assert (made["state"], made["author"], made["comment"]) == (
        "active",
        "ops",
        "end-of-term import",
    )
    assert made["matchers"] == {"rule": "sections", "channel": "audit"}
    # The server reads silences about once a second: within a couple of seconds, a
    # matching delivery is silenced, and the other one of the same event still goes.
    deadline = time.monotonic() + 5
    while True:
        ready = await (await client.get("/readyz")).json()
        if [s["id"] for s in ready["silences"]] == [made["id"]]:
            break
        assert time.monotonic() < deadline, ready
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.2)  # the routing worker's next look at the store
    await client.post("/events", json=example("course_section_created"))
    [got] = await receiver.wait_for(1, timeout=5)
    assert got.webhook_id.endswith(":sections:hook")
    await until_metric(client, "router_silenced_total", 1, silence=made["id"])
    body = await (await client.get("/-/deliveries?state=silenced", headers=ADMIN)).json()
    [silenced] = body["deliveries"]
    assert (silenced["rule"], silenced["channel"], silenced["silence"]) == (
        "sections",
        "audit",
        made["id"],
    )
    code, out = await asyncio.to_thread(run, "deliveries", "--state", "silenced", "--db", db_url)
    assert code == 0 and f"silenced by {made['id']}" in out
    code, out = await asyncio.to_thread(run, "silence", "list", "--db", db_url)
    assert made["id"] in out and "rule=sections channel=audit" in out

    # Replayed like a dead letter: sent with its own idempotency key.
    code, out = await asyncio.to_thread(
        run, "dlq", "replay", "--state", "silenced", "--all", "--db", db_url
    )
    assert (code, out.strip()) == (0, "replayed 1 silenced deliveries")
    received = await receiver.wait_for(2, timeout=5)
    assert received[1].webhook_id == silenced["key"]

    # Expired: the next event goes to both channels.
    code, out = await asyncio.to_thread(run, "silence", "expire", made["id"], "--db", db_url)
    assert code == 0 and "expired" in out
    code, out = await asyncio.to_thread(run, "silence", "list", "--db", db_url)
    assert out.strip() == "no silences"
    await asyncio.sleep(1.2)
    second = example("course_section_created")
    second["metadata"]["request_id"] = "another-request"
    await client.post("/events", json=second)
    await receiver.wait_for(4, timeout=5)
    assert value(await scrape(client), "router_silenced_total", silence=made["id"]) == 1


async def test_admin_api_silences_survive_a_restart(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    client = await service(rules(receiver.url), admin_token=TOKEN)
    resp = await client.post(
        "/-/silences",
        json={"event": "course_completed", "for": "1h", "comment": "exams"},
        headers=ADMIN,
    )
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    assert made["matches"] == "event=course_completed"
    for bad, problem in (
        ({"for": "1h"}, "at least one of"),
        ({"rule": "x"}, "say how long"),
        ({"rule": "x", "for": "soon"}, "for:"),
        ({"rule": "x", "for": "1h", "who": "me"}, "unknown field"),
    ):
        resp = await client.post("/-/silences", json=bad, headers=ADMIN)
        assert resp.status == 400 and problem in (await resp.json())["error"], bad
    assert (await client.post("/-/silences", json={"rule": "x", "for": "1h"})).status == 401
    # Made through the API: in force at once (no wait for the next poll).
    await client.post("/events", json=example("course_completed"))
    await until_metric(client, "router_silenced_total", 1, silence=made["id"])
    assert receiver.received == []
    await client.close()

    client = await service(rules(receiver.url), admin_token=TOKEN)  # a restart
    listed = await (await client.get("/-/silences", headers=ADMIN)).json()
    assert [s["id"] for s in listed["silences"]] == [made["id"]]
    resp = await client.post(f"/-/silences/{made['id']}/expire", json={}, headers=ADMIN)
    assert (await resp.json())["state"] == "expired"
    resp = await client.post("/-/silences/nope/expire", json={}, headers=ADMIN)
    assert resp.status == 404
    assert (await (await client.get("/-/silences", headers=ADMIN)).json())["silences"] == []
    everything = await (await client.get("/-/silences?all=1", headers=ADMIN)).json()
    assert [s["state"] for s in everything["silences"]] == ["expired"]
    # Purged through the dead-letter API with their state: only they go.
    resp = await client.post("/-/dlq/purge", json={"state": "silenced", "all": True}, headers=ADMIN)
    assert await resp.json() == {"purged": 1}
    resp = await client.post("/-/dlq/purge", json={"state": "held", "all": True}, headers=ADMIN)
    assert resp.status == 400 and "state" in (await resp.json())["error"]


async def login(client: Any) -> str:
    """Log in as a browser does (the cookie jar keeps the session cookie); return the
    CSRF value of that session."""
    assert (await client.get(f"/?token={TOKEN}", allow_redirects=False)).status == 303
    [cookie] = [c for c in client.session.cookie_jar if c.key == COOKIE]
    return csrf_value(client.app[SESSION_KEY], cookie.value.split(".")[0])


async def test_status_page_form_adds_and_expires_silences_with_csrf(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    client = await service(rules(receiver.url), admin_token=TOKEN)
    csrf = await login(client)
    form = {"rule": "completed", "for": "30m", "comment": "holiday"}
    # Without the page's CSRF field, the cookie alone is not enough.
    resp = await client.post("/-/silences", data=form, allow_redirects=False)
    assert resp.status == 401
    resp = await client.post("/-/silences", data={**form, "csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    silence_id = resp.headers["Location"].split("=", 1)[1]
    html = await (await client.get("/")).text()
    assert f'id="silence-{silence_id}"' in html and "rule=completed" in html
    assert f'action="/-/silences/{silence_id}/expire"' in html
    assert f"Added silence {silence_id}." not in html
    assert (
        f"Added silence {silence_id}." in await (await client.get(resp.headers["Location"])).text()
    )
    resp = await client.post(
        f"/-/silences/{silence_id}/expire", data={"csrf": csrf}, allow_redirects=False
    )
    assert resp.status == 303
    html = await (await client.get("/")).text()
    assert f'id="silence-{silence_id}"' not in html and "No active silence." in html


async def test_status_page_lists_silenced_deliveries_and_replays_one(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    client = await service(rules(receiver.url), admin_token=TOKEN)
    made = await (
        await client.post("/-/silences", json={"rule": "completed", "for": "1h"}, headers=ADMIN)
    ).json()
    await client.post("/events", json=example("course_completed"))
    await until_metric(client, "router_silenced_total", 1, silence=made["id"])
    [silenced] = (await (await client.get("/-/deliveries?state=silenced", headers=ADMIN)).json())[
        "deliveries"
    ]
    csrf = await login(client)
    html = await (await client.get("/")).text()
    row = html[html.index(f'id="silenced-{silenced["id"]}"') :]
    row = row[: row.index("</tr>")]
    assert made["id"] in row and 'name="state" value="silenced"' in row
    resp = await client.post(
        "/-/dlq/replay",
        data={"csrf": csrf, "state": "silenced", "ids": str(silenced["id"])},
        allow_redirects=False,
    )
    assert (resp.status, resp.headers["Location"]) == (303, "/?replayed=1")
    [got] = await receiver.wait_for(1, timeout=5)
    assert got.webhook_id == silenced["key"]


async def test_replicas_share_silences_on_postgresql(pg_schema: str, tmp_path: Path) -> None:
    router = make_router(tmp_path, rules("http://127.0.0.1:9/x"))
    first, second = (PostgresStore(store_url(pg_schema, replica=f"r{n}")) for n in range(2))
    await first.open()
    await second.open()
    try:
        now = time.time()
        made = new_silence({"rule": "completed", "for": "1h", "author": "r0"}, now=now)
        await first.add_silence(made)  # made through one replica...
        worker = RoutingWorker(second, lambda: router, lambda: None)
        await worker.refresh_silences()  # ...read by the other one's routing
        payload = example("course_completed")
        await second.accept_events(
            [("e1", "course_completed", orjson.dumps(payload))], dedupe_window=60, now=now
        )
        assert await worker.route_once() == 1
        [silenced] = await first.list_deliveries(state="silenced")
        assert (silenced.rule, silenced.silence) == ("completed", made.id)
        # Expired through the second replica: the first one's routing sees it gone.
        await second.expire_silence(made.id, now=time.time())
        other = RoutingWorker(first, lambda: router, lambda: None)
        await other.refresh_silences()
        assert other.silences == []
    finally:
        await first.close()
        await second.close()
