"""The mattermost channel inside a real router (router.testing), against a fake
Mattermost: an aiohttp server on 127.0.0.1 that answers like Mattermost does."""

import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import router_mattermost
from aiohttp import web

from router.testing import ConfigErrors, event, run_router

HOOK_KEY = "xa8hfmw3qbf5jkq9sb4kx6pdqy"


@dataclass
class FakeMattermost:
    """Accepts ``POST /hooks/<HOOK_KEY>``; ``script`` holds (status, headers, body)
    answers to give first."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    script: deque[tuple[int, dict[str, str], str]] = field(default_factory=deque)
    requests: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.json()
        if self.script:
            status, headers, text = self.script.popleft()
            return web.Response(status=status, headers=headers, text=text)
        if request.match_info["key"] != HOOK_KEY:
            return web.json_response(
                {"id": "web.incoming_webhook.invalid.app_error", "message": "Invalid webhook."},
                status=400,
            )
        if not body.get("text"):
            return web.json_response(
                {"id": "web.incoming_webhook.text.app_error", "message": "No text specified."},
                status=400,
            )
        self.posts.append(body)
        return web.Response(text="ok", content_type="text/plain")


@pytest.fixture
async def mattermost() -> AsyncIterator[FakeMattermost]:
    fake = FakeMattermost()
    app = web.Application()
    app.router.add_post("/hooks/{key}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks/{HOOK_KEY}"
    yield fake
    await runner.cleanup()


def rules(url: str, extra: str = "") -> str:
    return f"""
        version: 1
        channels:
          chat:
            type: mattermost
            url: "{url}"
            timeout: 5
            {extra}
        rules:
          - name: everything
            events: ["*"]
            notify: [chat]
        """


COURSE_CREATED = event("course_created", {"name": "Physics 101", "course_id": "21070000000000042"})


async def test_posts_text_and_overrides(mattermost: FakeMattermost) -> None:
    extra = "channel: town-square\n            username: canvas\n"
    extra += "            icon_url: https://x.test/c.png"
    async with run_router(rules(mattermost.url, extra), plugins=[router_mattermost]) as router:
        await router.send(COURSE_CREATED)
        [delivery] = await router.wait_until_settled()
    assert (delivery.state, delivery.attempts) == ("delivered", 1)
    [post] = mattermost.posts
    assert post == {
        "text": post["text"],
        "channel": "town-square",
        "username": "canvas",
        "icon_url": "https://x.test/c.png",
    }
    assert post["text"].startswith("**Course created: Physics 101**\nCourse Physics 101")


async def test_unset_options_are_not_sent(mattermost: FakeMattermost) -> None:
    async with run_router(rules(mattermost.url), plugins=[router_mattermost]) as router:
        await router.send(event("tick", {"n": 1}))
        await router.wait_until_settled()
    [post] = mattermost.posts
    assert set(post) == {"text"}


async def test_429_is_retried_after_retry_after(mattermost: FakeMattermost) -> None:
    mattermost.script.append((429, {"Retry-After": "1"}, "Too many requests"))
    async with run_router(rules(mattermost.url), plugins=[router_mattermost]) as router:
        started = time.monotonic()
        await router.send(COURSE_CREATED)
        [delivery] = await router.wait_until_settled()
        # The test settings cap backoff at 0.2 s: only Retry-After explains a second.
        assert time.monotonic() - started >= 0.95
    assert (delivery.state, delivery.attempts) == ("delivered", 2)
    assert router.outcomes[0].error == "HTTP 429 Too Many Requests: Too many requests"


async def test_5xx_is_retried(mattermost: FakeMattermost) -> None:
    mattermost.script.extend([(500, {}, ""), (503, {}, "maintenance")])
    async with run_router(rules(mattermost.url), plugins=[router_mattermost]) as router:
        await router.send(COURSE_CREATED)
        [delivery] = await router.wait_until_settled()
    assert (delivery.state, delivery.attempts) == ("delivered", 3)
    assert [o.error for o in router.outcomes] == [
        "HTTP 500 Internal Server Error",
        "HTTP 503 Service Unavailable: maintenance",
        None,
    ]


async def test_other_4xx_is_a_dead_letter_without_the_key(mattermost: FakeMattermost) -> None:
    mattermost.script.append((403, {}, f"webhook {HOOK_KEY} is disabled"))
    async with run_router(rules(mattermost.url), plugins=[router_mattermost]) as router:
        await router.send(COURSE_CREATED)
        [dead] = await router.wait_until_settled()
    assert (dead.state, dead.attempts) == ("dead", 1)
    assert dead.last_error == "HTTP 403 Forbidden: webhook *** is disabled"
    assert mattermost.requests == 1


async def test_wrong_key_is_permanent(mattermost: FakeMattermost) -> None:
    url = mattermost.url.replace(HOOK_KEY, "wrongkey0000000000000000")
    async with run_router(rules(url), plugins=[router_mattermost]) as router:
        await router.send(COURSE_CREATED)
        [dead] = await router.wait_until_settled()
    assert dead.state == "dead"
    assert dead.last_error is not None
    assert dead.last_error.startswith("HTTP 400 Bad Request: ")
    assert "Invalid webhook." in dead.last_error
    assert "wrongkey" not in dead.last_error


async def test_connection_refused_is_retried_then_given_up() -> None:
    url = "http://127.0.0.1:9/hooks/" + HOOK_KEY
    async with run_router(rules(url), plugins=[router_mattermost], max_attempts=2) as router:
        await router.send(COURSE_CREATED)
        [dead] = await router.wait_until_settled()
    assert (dead.state, dead.attempts) == ("dead", 2)
    assert dead.last_error is not None
    assert dead.last_error.startswith("gave up after 2 attempt(s): ClientConnectorError")
    assert [o.status for o in router.outcomes] == ["retry", "dead"]


async def test_empty_url_logs_instead_of_sending() -> None:
    async with run_router(rules(""), plugins=[router_mattermost]) as router:
        await router.send(COURSE_CREATED)
        [delivery] = await router.wait_until_settled()
    assert delivery.state == "logged"


async def test_config_is_validated_with_file_and_line() -> None:
    with pytest.raises(ConfigErrors) as caught:
        async with run_router(rules("http://x", "usernme: canvas"), plugins=[router_mattermost]):
            pass
    [error] = caught.value.errors
    assert str(error).endswith(
        ":8:5: channels.chat.usernme: unknown key 'usernme' (did you mean 'username'?)"
    )


async def test_default_rate_limit_spaces_posts(mattermost: FakeMattermost) -> None:
    events = [event("tick", {"n": n}) for n in range(6)]
    async with run_router(rules(mattermost.url), plugins=[router_mattermost]) as router:
        started = time.monotonic()
        await router.send(events)
        await router.wait_until_settled()
        elapsed = time.monotonic() - started
    assert len(mattermost.posts) == 6
    # default_rate_limit = "10/s" with no rate_limit in rules.yaml: five gaps of 0.1 s.
    assert elapsed >= 0.45
