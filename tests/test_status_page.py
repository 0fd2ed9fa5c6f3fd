"""The status page at GET /: what it shows, how it authenticates, what it never shows."""

import re
import textwrap

from aiohttp.test_utils import TestClient

from router.http.auth import COOKIE
from router.http.keys import SETTINGS
from tests.conftest import ServiceFactory, example
from tests.receiver import SECRET, WebhookReceiver
from tests.test_metrics import until_metric

TOKEN = "status-admin-token"
ACCESS_TOKEN = "111~sGvKF4Yzr2AqdwShKj7CwwopgwJuMFONBqWu44Upk1F4jgkFvpXc9HY20PCU5r0"


def rules(url: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        channels:
          hook: {{type: webhook, url: "{url}", secret: "{SECRET}", timeout: 5}}
          quiet: {{type: webhook}}
        rules:
          - name: sections
            events: [course_section_created]
            notify: [hook]
            throttle: {{per: 1h}}
          - {{name: everything-else, events: ["*"], notify: [quiet]}}
        """
    )


async def with_dead_letter(
    service: ServiceFactory, receiver: WebhookReceiver, **settings: object
) -> TestClient:
    receiver.script.append((422, {}))
    client = await service(rules(receiver.url), **settings)
    await client.post("/events", json=example("course_section_created"))
    await client.post("/events", json=example("course_completed"))
    await until_metric(client, "router_dead_letters", 1)
    await until_metric(
        client, "router_deliveries_completed_total", 2, channel="quiet", result="logged"
    )
    return client


def session_cookie(set_cookie: str) -> str:
    match = re.match(rf"{COOKIE}=([^;]+)", set_cookie)
    assert match, set_cookie
    return match[1]


async def test_the_page_shows_the_router_at_a_glance(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    client = await with_dead_letter(service, receiver)
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    for section in ("throughput", "channels", "dlq", "events", "rules", "plugins", "reload"):
        assert f'id="{section}"' in html
    # throughput from the metrics: 2 events accepted, 2 logged, 1 dead
    assert re.search(r"events accepted</small><b>2</b>", html)
    assert re.search(r"dead-lettered</small><b class=\"bad\">1</b>", html)
    # where the recent events went
    assert "sections → hook: dead" in html
    assert "everything-else → quiet: logged" in html
    # the failing channel and its error; the dead letter (no admin API: no button)
    assert "HTTP 422 Unprocessable Entity: scripted 422" in html
    assert '<span class="bad">failing</span>' in html
    assert "Set <code>ROUTER_ADMIN_TOKEN</code> to replay" in html
    assert "<form" not in html
    # loaded rules and plugins, and the reload state
    assert "<code>sections</code>" in html and "throttle per 60 min" in html
    assert "<code>webhook</code>" in html
    assert "No reload since start" in html
    # never a secret
    assert SECRET not in html and SECRET.removeprefix("whsec_") not in html
    assert ACCESS_TOKEN not in html


async def test_the_page_escapes_what_events_carry(service: ServiceFactory) -> None:
    client = await service(rules("http://127.0.0.1:9/x"))
    event = example("course_created")
    event["metadata"]["event_name"] = "<script>alert(1)</script>"
    await client.post("/events", json=event)
    await until_metric(
        client, "router_deliveries_completed_total", 1, channel="quiet", result="logged"
    )
    html = await (await client.get("/")).text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


async def test_with_an_admin_token_the_page_needs_it(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    client = await with_dead_letter(service, receiver, admin_token=TOKEN)
    resp = await client.get("/")
    assert resp.status == 401
    assert "/?token=YOUR_ADMIN_TOKEN" in await resp.text()
    assert (await client.get("/?token=wrong", allow_redirects=False)).status == 401
    assert (await client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200

    # ?token= once: a cookie (not the token itself), then a clean URL
    resp = await client.get(f"/?token={TOKEN}", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    cookie = session_cookie(set_cookie)
    assert TOKEN not in cookie
    client.session.cookie_jar.clear()  # from here on, only the cookies sent explicitly
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    resp = await client.get("/", headers=headers)
    assert resp.status == 200
    html = await resp.text()
    assert TOKEN not in html
    assert 'id="replay-all"' in html and 'class="replay"' in html
    assert (await client.get("/", headers={"Cookie": f"{COOKIE}=forged"})).status == 401

    # The cookie reads the admin API, but a POST with it also needs the page's CSRF field.
    assert (await client.get("/-/dlq", headers=headers)).status == 200
    [dead] = (await (await client.get("/-/dlq", headers=headers)).json())["dead_letters"]
    form = {"ids": str(dead["id"])}
    resp = await client.post("/-/dlq/replay", data=form, headers=headers, allow_redirects=False)
    assert resp.status == 401
    form["csrf"] = "0" * 64
    resp = await client.post("/-/dlq/replay", data=form, headers=headers, allow_redirects=False)
    assert resp.status == 401
    form["csrf"] = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)[1]  # type: ignore[index]
    resp = await client.post("/-/dlq/replay", data=form, headers=headers, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/?replayed=1"
    [got] = await receiver.wait_for(1)
    assert got.webhook_id == dead["key"]
    await until_metric(client, "router_dead_letters", 0)
    html = await (await client.get("/?replayed=1", headers=headers)).text()
    assert "Replayed 1 dead letter(s)." in html
    assert "The dead-letter queue is empty." in html


async def test_a_rejected_reload_shows_on_the_page(service: ServiceFactory) -> None:
    client = await service(rules("http://127.0.0.1:9/x"), admin_token=TOKEN)
    path = client.app[SETTINGS].rules
    path.write_text(path.read_text().replace("notify: [quiet]", "notify: [nowhere]"))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert (await client.post("/-/reload", headers=headers)).status == 422
    html = await (await client.get("/", headers=headers)).text()
    assert "rejected; the previous rules are still running" in html
    assert "nowhere" in html
    assert "0 succeeded, 1 rejected" in html


async def test_the_running_rules_warnings_show_on_the_page(service: ServiceFactory) -> None:
    clean = await service(rules("http://127.0.0.1:9/x"))
    assert "warning: " not in await (await clean.get("/")).text()
    typo = rules("http://127.0.0.1:9/x").replace("course_section_created", "course_sectoin_created")
    client = await service(typo)
    html = await (await client.get("/")).text()
    assert (
        "warning: " in html
        and "rules[0].events[0]: &#39;course_sectoin_created&#39; is not a Canvas event"
        " (did you mean &#39;course_section_created&#39;?)"
        in html
    )
