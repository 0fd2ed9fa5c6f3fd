"""Issue 18, finding 7: the status page's session cookie expires (12 h), carries a
random nonce (nothing derived from the admin token), is ``Secure`` when
``ROUTER_PUBLIC_URL`` is https, and is revoked by a restart; its CSRF value is bound
to the session."""

import asyncio
import re
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from router.http.auth import COOKIE, SESSION_SECONDS, session_value
from router.http.keys import SESSION_KEY
from tests.conftest import ServiceFactory, example, webhook_rules

TOKEN = "session-admin-token"


async def login(client: Any) -> tuple[str, Any]:
    resp = await client.get(f"/?token={TOKEN}", allow_redirects=False)
    assert resp.status == 303
    cookie = SimpleCookie(resp.headers["Set-Cookie"])[COOKIE]
    return cookie.value, cookie


async def page(client: Any, cookie: str) -> Any:
    client.session.cookie_jar.clear()
    return await client.get("/", headers={"Cookie": f"{COOKIE}={cookie}"})


async def test_each_login_is_a_fresh_session_that_expires(service: ServiceFactory) -> None:
    client = await service(webhook_rules("http://127.0.0.1:9/"), admin_token=TOKEN)
    first, morsel = await login(client)
    second, _ = await login(client)
    assert first != second  # a random nonce each time
    assert morsel["max-age"] == str(SESSION_SECONDS) == str(12 * 3600)
    assert not morsel["secure"]  # plain HTTP, no public https URL
    assert (await page(client, first)).status == 200
    nonce, expires, _ = first.split(".")
    assert abs(int(expires) - (time.time() + SESSION_SECONDS)) < 60
    key = client.app[SESSION_KEY]
    expired = session_value(key, time.time() - SESSION_SECONDS - 1)
    assert (await page(client, expired)).status == 401
    tampered = f"{nonce}.{int(expires) + 3600}.{first.split('.')[2]}"
    assert (await page(client, tampered)).status == 401


async def test_csrf_is_bound_to_its_session(service: ServiceFactory, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "default.j2").write_text("{{ body.missing.field }}\n")  # a dead letter
    client = await service(webhook_rules("http://127.0.0.1:9/"), admin_token=TOKEN)
    await client.post("/events", json=example("course_created"))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + 10
    while not (await (await client.get("/-/dlq", headers=bearer)).json())["dead_letters"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    first, _ = await login(client)
    second, _ = await login(client)
    csrf = re.search(
        r'name="csrf" value="([0-9a-f]{64})"', await (await page(client, first)).text()
    )
    assert csrf is not None
    form = {"all": "true", "csrf": csrf[1]}
    other = {"Cookie": f"{COOKIE}={second}"}
    resp = await client.post("/-/dlq/purge", data=form, headers=other, allow_redirects=False)
    assert resp.status == 401  # the first session's CSRF value does not serve the second
    mine = {"Cookie": f"{COOKIE}={first}"}
    resp = await client.post("/-/dlq/purge", data=form, headers=mine, allow_redirects=False)
    assert resp.status in (200, 303)


async def test_the_cookie_is_secure_behind_an_https_proxy(service: ServiceFactory) -> None:
    client = await service(
        webhook_rules("http://127.0.0.1:9/"),
        admin_token=TOKEN,
        public_url="https://router.example.edu",
    )
    _, morsel = await login(client)
    assert morsel["secure"]


async def test_a_restart_revokes_every_session(service: ServiceFactory) -> None:
    client = await service(webhook_rules("http://127.0.0.1:9/"), admin_token=TOKEN)
    cookie, _ = await login(client)
    assert (await page(client, cookie)).status == 200
    await client.close()
    restarted = await service(webhook_rules("http://127.0.0.1:9/"), admin_token=TOKEN)
    assert (await page(restarted, cookie)).status == 401
    fresh, _ = await login(restarted)
    assert (await page(restarted, fresh)).status == 200
