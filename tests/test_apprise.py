"""The ``apprise`` channel through the real router, sending with Apprise's ``json://``
to a local receiver; and the plugin without the apprise package installed."""

import asyncio
import base64
import subprocess
import sys
import textwrap
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from router_apprise import AppriseChannel, AppriseConfig

from router import Message
from router.config_source import ConfigErrors
from router.plugins import load_plugins
from router.rules import load_rules
from tests.conftest import ROOT, ServiceFactory, StoreDB, example
from tests.test_delivery import deliveries, first_state, until

PASSWORD = "apprise-pass-SECRET-0123"
TEMPLATE = """\
{% block title %}{{ body.user.name }} completed {{ body.course.name }}{% endblock %}
{% block text %}Well done, {{ body.user.name }}.{% endblock %}
{% block link %}https://{{ metadata.hostname }}/courses/565{% endblock %}
"""


@dataclass
class JsonReceiver:
    """What Apprise's ``json://`` service posts to: ``{"version", "title", "message",
    "attachments", "type"}`` with basic auth. ``script`` holds statuses to answer first."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    script: deque[int] = field(default_factory=deque)
    delay: float = 0.0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"router:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401)
        body = await request.json()
        assert {"version", "title", "message", "type"} <= set(body), body
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.script:
            return web.Response(status=self.script.popleft())
        self.posts.append(body)
        return web.Response(text="ok")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Apprise posts with requests, which honours proxy variables: not for loopback. And
    these tests' own templates (the shipped ones change independently of the plugin)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "default.j2").write_text(TEMPLATE)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> JsonReceiver:
    fake = JsonReceiver()
    app = web.Application()
    app.router.add_post("/notify", fake.handle)
    server = await aiohttp_server(app)
    fake.url = f"json://router:{PASSWORD}@127.0.0.1:{server.port}/notify"
    return fake


def apprise_rules(urls: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        channels:
          everywhere:
            type: apprise
            urls: {urls}
            timeout: 10
        rules:
          - {{name: everything, events: ["*"], notify: [everywhere]}}
        """
    )


async def test_sends_title_and_text_with_the_link(
    service: ServiceFactory, receiver: JsonReceiver, store_db: StoreDB
) -> None:
    client = await service(apprise_rules(f'["{receiver.url}"]'))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [post] = receiver.posts
    assert post["title"] == "Isaac Newton completed Computer Science I"
    assert post["message"] == (
        "Well done, Isaac Newton.\n\nOpen in Canvas: https://oxana.instructure.com/courses/565"
    )
    assert deliveries(store_db)[0]["attempts"] == 1


async def test_a_failure_is_retried(
    service: ServiceFactory, receiver: JsonReceiver, store_db: StoreDB
) -> None:
    receiver.script.append(404)  # Apprise cannot tell: every failure is worth a retry
    client = await service(apprise_rules(f'["{receiver.url}"]'))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    assert deliveries(store_db)[0]["attempts"] == 2 and len(receiver.posts) == 1


async def test_giving_up_never_shows_the_urls(
    service: ServiceFactory,
    receiver: JsonReceiver,
    store_db: StoreDB,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    receiver.script.extend([500, 500])
    client = await service(apprise_rules(f'["{receiver.url}"]'), max_attempts=2)
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["last_error"] == (
        "gave up after 2 attempt(s): Apprise could not deliver to every one of its 1 URL(s)"
        " (it does not say which or why)"
    )
    logged = "\n".join(str(vars(r)) for r in caplog.records if r.name != "aiohttp.access")
    assert PASSWORD not in logged + str(row) and "/notify" not in logged


async def test_sends_run_off_the_event_loop(
    service: ServiceFactory, receiver: JsonReceiver, store_db: StoreDB
) -> None:
    receiver.delay = 1.5  # Apprise blocks this long inside requests
    client = await service(apprise_rules(f'["{receiver.url}"]'))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) is not None)
    await asyncio.sleep(0.3)  # let the send start
    started = time.monotonic()
    resp = await client.get("/healthz")
    assert resp.status == 200 and time.monotonic() - started < 1.0
    await until(lambda: first_state(store_db) == "delivered")


async def test_no_urls_is_log_only(
    service: ServiceFactory, store_db: StoreDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("APPRISE_URL", raising=False)
    client = await service(apprise_rules('["${APPRISE_URL:-}"]'))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "logged")


def test_an_url_apprise_does_not_know_is_a_config_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(apprise_rules('["json://ok.example/x", "nosuch://user:hunter2@host/"]'))
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules, load_plugins().channel_types)
    [error] = caught.value.errors
    assert error.path == "channels.everywhere.urls"
    assert error.message == "urls[1]: Apprise does not understand it (scheme 'nosuch')"
    assert "hunter2" not in str(error)
    # Apprise logs what it cannot parse: masked.
    assert "Unparseable URL" in caplog.text and "hunter2" not in caplog.text


def run_without_apprise(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The router's CLI in a Python where ``import apprise`` fails."""
    code = (
        "import sys; sys.modules['apprise'] = None\n"
        "from router.cli import main\n"
        f"sys.argv = ['router', *{list(args)!r}]\n"
        "main()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_without_apprise_the_plugin_loads_and_validate_says_what_to_install(
    tmp_path: Path,
) -> None:
    (tmp_path / "rules.yaml").write_text(apprise_rules('["json://127.0.0.1:9/x"]'))
    listed = run_without_apprise("plugins", cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "channel types: apprise" in listed.stdout
    checked = run_without_apprise(
        "validate", "rules.yaml", "--templates", str(ROOT / "templates"), cwd=tmp_path
    )
    assert checked.returncode == 1
    assert (
        "channels.everywhere.urls: the apprise package is not installed:"
        " pip install 'router[apprise]'" in checked.stdout + checked.stderr
    )


def test_the_link_line_is_added_unless_the_text_shows_it() -> None:
    channel = AppriseChannel("everywhere", AppriseConfig(urls=["json://127.0.0.1:9/x"]))
    base = {"key": "k", "event_id": "e", "event_name": "n", "rule": "r", "channel": "c"}
    link = "https://canvas.example.edu/courses/1"
    assert channel.body(Message(**base, text="Hi", blocks={"link": link})) == (
        f"Hi\n\nOpen in Canvas: {link}"
    )
    assert channel.body(Message(**base, text=f"Hi {link}", blocks={"link": link})) == f"Hi {link}"
    assert channel.body(Message(**base, text="Hi", blocks={"link": "not a url"})) == "Hi"
