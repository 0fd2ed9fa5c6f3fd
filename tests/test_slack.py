"""The ``slack`` channel through the real router, against a local imitation of the
Slack Web API (``chat.postMessage``) and of an incoming webhook."""

import shutil
import textwrap
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from router_slack import SlackChannel, SlackConfig

from router import Message, PermanentError
from router.config_source import ConfigErrors
from router.plugins import load_plugins
from router.rules import load_rules
from tests.conftest import ServiceFactory, StoreDB, all_examples, example
from tests.test_delivery import deliveries, first_state, until

TOKEN = "test-bot-token-0123456789"  # not xoxb-shaped: the router's redactor would not mask it
HOOK_PATH = "/services/T0001/B0001/hooksecret0123456789"
DEFAULT_TEMPLATE = """\
{% block title %}{{ event_name }}{% endblock %}
{% block text %}Canvas event {{ event_name }}{% endblock %}
"""


@dataclass
class Hit:
    """One request the fake Slack received."""

    at: float
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeSlack:
    """Records requests; ``script`` holds (status, body, headers) answers given before
    the default success (``{"ok": true}`` for the Web API, ``ok`` for webhooks)."""

    api: list[Hit] = field(default_factory=list)
    hooks: list[Hit] = field(default_factory=list)
    script: deque[tuple[int, Any, dict[str, str]]] = field(default_factory=deque)
    base_url: str = ""
    hook_url: str = ""

    async def post_message(self, request: web.Request) -> web.Response:
        # slack-sdk sends chat.postMessage as JSON with the token in Authorization.
        assert request.content_type == "application/json"
        self.api.append(Hit(time.monotonic(), dict(request.headers), await request.json()))
        status, body, headers = self.script.popleft() if self.script else (200, None, {})
        body = body or {"ok": True, "channel": "C0001", "ts": "1700000000.000100"}
        if not body.get("ok"):  # a careless plugin echoing the response would leak this
            body = {**body, "debug": request.headers.get("Authorization", "")}
        return web.json_response(body, status=status, headers=headers)

    async def webhook(self, request: web.Request) -> web.Response:
        self.hooks.append(Hit(time.monotonic(), dict(request.headers), await request.json()))
        status, body, headers = self.script.popleft() if self.script else (200, "ok", {})
        return web.Response(status=status, text=body, headers=headers)


@pytest.fixture(autouse=True)
def own_templates(tmp_path: Path) -> Path:
    """Templates of these tests' own (the ``service`` fixture copies nothing when the
    directory exists): the shipped ones change independently of this plugin."""
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "default.j2").write_text(DEFAULT_TEMPLATE)
    return directory


@pytest.fixture
async def slack(aiohttp_server: Any) -> FakeSlack:
    fake = FakeSlack()
    app = web.Application()
    app.router.add_post("/api/chat.postMessage", fake.post_message)
    app.router.add_post(HOOK_PATH, fake.webhook)
    server = await aiohttp_server(app)
    fake.base_url = str(server.make_url("/api/"))
    fake.hook_url = str(server.make_url(HOOK_PATH))
    return fake


def slack_rules(settings: str) -> str:
    """A rules file sending every event to one ``type: slack`` channel."""
    return textwrap.dedent(
        """\
        version: 1
        channels:
          chat:
            type: slack
            timeout: 5
        {settings}
        rules:
          - {{name: everything, events: ["*"], notify: [chat]}}
        """
    ).format(settings=textwrap.indent(textwrap.dedent(settings), "    "))


def bot_rules(fake: FakeSlack, extra: str = "") -> str:
    return slack_rules(
        f'token: "{TOKEN}"\nchannel: "#courses"\nbase_url: "{fake.base_url}"\n{extra}'
    )


async def test_bot_token_posts_channel_and_text(
    service: ServiceFactory, slack: FakeSlack, store_db: StoreDB
) -> None:
    rules = bot_rules(slack, "username: Canvas\nicon_emoji: ':mortar_board:'\nthread_ts: '1.5'")
    client = await service(rules)
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [hit] = slack.api
    assert hit.headers["Authorization"] == f"Bearer {TOKEN}"
    assert hit.body["channel"] == "#courses"
    assert hit.body["text"] == "Canvas event course_completed"
    assert hit.body["unfurl_links"] is False
    assert (hit.body["username"], hit.body["icon_emoji"]) == ("Canvas", ":mortar_board:")
    assert hit.body["thread_ts"] == "1.5"
    assert "blocks" not in hit.body
    assert deliveries(store_db)[0]["attempts"] == 1


SLACK_TEMPLATE = """\
{% block title %}{{ body.user.name }} finished{% endblock %}
{% block text %}{{ body.user.name }} completed {{ body.course.name }}{% endblock %}
{% block slack_blocks %}
{"blocks": [
  {"type": "header", "text": {"type": "plain_text", "text": {{ body.course.name | tojson }}}},
  {"type": "section", "text": {"type": "mrkdwn", "text": {{ body.user.name | tojson }}}}
]}
{% endblock %}
"""


async def test_blocks_come_from_the_slack_blocks_template_block(
    service: ServiceFactory, slack: FakeSlack, store_db: StoreDB, own_templates: Path
) -> None:
    (own_templates / "blocks.slack.j2").write_text(SLACK_TEMPLATE)
    (own_templates / "bare.slack.j2").write_text("[{{ body.user.name | tojson }}]\n")
    broken = '{% block slack_blocks %}[{"type": }]{% endblock %}'
    (own_templates / "broken.slack.j2").write_text(broken)
    rules = bot_rules(slack).replace(
        '  - {name: everything, events: ["*"], notify: [chat]}',
        "  - {name: blocks, events: [course_completed], notify: [chat], template: blocks}\n"
        "  - {name: bare, events: [course_progress], notify: [chat], template: bare}\n"
        "  - {name: broken, events: [course_updated], notify: [chat], template: broken}",
    )
    client = await service(rules)
    for name in ("course_completed", "course_progress", "course_updated"):
        await client.post("/events", json=example(name))
    done = ["dead", "delivered", "delivered"]
    await until(lambda: sorted(d["state"] for d in deliveries(store_db)) == done)
    by_text = {hit.body["text"]: hit.body for hit in slack.api}
    assert set(by_text) == {"Isaac Newton completed Computer Science I", '["Gottfried Leibniz"]'}
    assert by_text["Isaac Newton completed Computer Science I"]["blocks"] == [
        {"type": "header", "text": {"type": "plain_text", "text": "Computer Science I"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "Isaac Newton"}},
    ]
    # No slack_blocks block: the whole template is the text, and no blocks are sent.
    assert "blocks" not in by_text['["Gottfried Leibniz"]']
    [dead] = [d for d in deliveries(store_db) if d["state"] == "dead"]
    assert dead["rule"] == "broken" and dead["attempts"] == 1
    assert dead["last_error"].startswith("template block 'slack_blocks' is not valid JSON")


async def test_incoming_webhook_delivers(
    service: ServiceFactory, slack: FakeSlack, store_db: StoreDB
) -> None:
    client = await service(slack_rules(f'url: "{slack.hook_url}"\nunfurl_links: true'))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [hit] = slack.hooks
    assert hit.body["text"] == "Canvas event course_completed"
    assert hit.body["unfurl_links"] is True
    assert slack.api == []


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (404, "no_service", "slack error: no_service (HTTP 404)"),
        (403, "invalid_token", "slack error: invalid_token (HTTP 403)"),
        (400, "invalid_payload", "slack error: invalid_payload (HTTP 400)"),
    ],
)
async def test_incoming_webhook_rejections_are_dead_letters(
    service: ServiceFactory, slack: FakeSlack, store_db: StoreDB, status: int, body: str, error: str
) -> None:
    slack.script.append((status, body, {}))
    client = await service(slack_rules(f'url: "{slack.hook_url}"'))
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert (row["last_error"], row["attempts"]) == (error, 1)


async def test_incoming_webhook_5xx_is_retried(
    service: ServiceFactory, slack: FakeSlack, store_db: StoreDB
) -> None:
    slack.script.append((500, "rollup_error", {}))
    client = await service(slack_rules(f'url: "{slack.hook_url}"'))
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "delivered")
    assert len(slack.hooks) == 2 and deliveries(store_db)[0]["attempts"] == 2


async def test_429_waits_for_retry_after_then_delivers(
    service: ServiceFactory, slack: FakeSlack, store_db: StoreDB
) -> None:
    slack.script.append((429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}))
    client = await service(bot_rules(slack))
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "delivered")
    first, second = slack.api
    # backoff_cap is 0.2 s in tests: only Retry-After explains a wait of a second.
    assert second.at - first.at >= 0.95
    assert deliveries(store_db)[0]["attempts"] == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, {"ok": False, "error": "internal_error"}),
        (503, {"ok": False}),
        (200, {"ok": False, "error": "service_unavailable"}),
        (200, {"ok": False, "error": "request_timeout"}),
    ],
)
async def test_transient_failures_are_retried(
    service: ServiceFactory, slack: FakeSlack, store_db: StoreDB, status: int, body: dict
) -> None:
    slack.script.append((status, body, {}))
    client = await service(bot_rules(slack))
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "delivered")
    assert len(slack.api) == 2 and deliveries(store_db)[0]["attempts"] == 2


@pytest.mark.parametrize("code", ["channel_not_found", "invalid_auth", "not_in_channel"])
async def test_slack_errors_are_dead_letters_without_the_token(
    service: ServiceFactory, slack: FakeSlack, store_db: StoreDB, code: str
) -> None:
    slack.script.append((200, {"ok": False, "error": code}, {}))
    client = await service(bot_rules(slack))
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 1 and len(slack.api) == 1
    assert f"slack error: {code}" in row["last_error"]
    assert TOKEN not in row["last_error"]


@pytest.mark.parametrize("mode", ["bot", "webhook"])
async def test_connection_refused_is_retried_without_secrets(
    service: ServiceFactory, store_db: StoreDB, mode: str
) -> None:
    dead = "http://127.0.0.1:9"
    settings = (
        f'token: "{TOKEN}"\nchannel: C1\nbase_url: "{dead}/api/"'
        if mode == "bot"
        else f'url: "{dead}{HOOK_PATH}"'
    )
    client = await service(slack_rules(settings), max_attempts=2)
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 2
    assert row["last_error"].startswith("gave up after 2 attempt(s): ClientConnectorError")
    assert TOKEN not in row["last_error"] and HOOK_PATH not in row["last_error"]


async def test_unusable_webhook_url_is_permanent_and_never_stored(
    service: ServiceFactory, store_db: StoreDB
) -> None:
    client = await service(slack_rules(f'url: "http://127.0.0.1:99999{HOOK_PATH}"'))
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["attempts"] == 1
    assert row["last_error"] == "InvalidUrlClientError: ***"


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ('token: "${SLACK_BOT_TOKEN:-}"\nchannel: "#courses"', "no Slack token configured"),
        ('url: "${SLACK_WEBHOOK_URL:-}"', "no Slack webhook url configured"),
    ],
)
async def test_empty_credential_is_log_only(
    service: ServiceFactory,
    store_db: StoreDB,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    settings: str,
    reason: str,
) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    caplog.set_level("INFO")
    client = await service(slack_rules(settings))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "logged")
    [record] = [r for r in caplog.records if r.getMessage() == "log-only channel: would send"]
    assert record.reason == reason  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            'url: "https://hooks.slack.com/x"\ntoken: xoxb-1',
            "'url' (incoming webhook) cannot be combined with 'token'",
        ),
        ("token: xoxb-1", "bot-token mode needs both 'token' and 'channel': 'channel' is missing"),
        ("username: bot", "set 'token' and 'channel' (bot token) or 'url' (incoming webhook)"),
        ("url: https://x\nchanel: C1", "unknown key 'chanel' (did you mean 'channel'?)"),
        ("url: hooks.slack.com/x", "'url' must be an http(s):// incoming webhook URL"),
    ],
)
def test_bad_config_fails_rules_loading(tmp_path: Path, settings: str, message: str) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(slack_rules(settings))
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules, load_plugins().channel_types)
    [error] = caught.value.errors
    assert error.path.startswith("channels.chat") and error.message == message


def test_blocks_json_shapes() -> None:
    channel = SlackChannel("chat", SlackConfig(url="https://hooks.slack.com/x"))
    base = {"key": "k", "event_id": "e", "event_name": "n", "rule": "r", "channel": "chat"}
    listed = Message(**base, blocks={"slack_blocks": '[{"type": "divider"}]'})
    wrapped = Message(**base, blocks={"slack_blocks": orjson.dumps({"blocks": []}).decode()})
    assert channel.blocks(listed) == [{"type": "divider"}]
    assert channel.blocks(wrapped) == []
    assert channel.blocks(Message(**base, blocks={"slack_blocks": "  "})) is None
    with pytest.raises(PermanentError, match="must be a list"):
        channel.blocks(Message(**base, blocks={"slack_blocks": '{"text": "x"}'}))


async def test_shipped_slack_templates_render_blocks_slack_accepts(
    service: ServiceFactory, slack: FakeSlack, store_db: StoreDB, own_templates: Path
) -> None:
    shutil.rmtree(own_templates)  # the service fixture copies the shipped templates
    client = await service(bot_rules(slack, "rate_limit: 50/s"))  # not 1/s: keep it quick
    examples = all_examples()
    await client.post("/events", json=list(examples.values()))
    await until(lambda: len(deliveries(store_db)) == len(examples))
    await until(lambda: all(d["state"] != "pending" for d in deliveries(store_db)))
    assert [d["last_error"] for d in deliveries(store_db) if d["state"] != "delivered"] == []
    assert len(slack.api) == len(examples)
    for hit in slack.api:  # every event type has Block Kit blocks (its own, or default.slack.j2)
        assert hit.body["text"]
        assert isinstance(hit.body["blocks"], list) and hit.body["blocks"]
