"""The chat channels together: every example event, rendered by the shipped templates,
delivered to each chat service's fake (which checks the payload it gets); and the
command line listing and validating them."""

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from click.testing import CliRunner

from router.cli import cli
from tests.conftest import ROOT, ServiceFactory, StoreDB, all_examples
from tests.fakes.discord import FakeDiscord
from tests.fakes.google_chat import FakeGoogleChat
from tests.fakes.teams import FakeTeams
from tests.test_delivery import deliveries, until

CHAT_TYPES = ("teams", "discord", "google_chat", "apprise")


async def start(aiohttp_server: Any, fake: Any) -> Any:
    server = await aiohttp_server(fake.app())
    fake.base = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
async def apprise_posts(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A ``json://`` receiver for Apprise: (its URL, the bodies it got)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    posts: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        posts.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/notify", handle)
    server = await aiohttp_server(app)
    return f"json://127.0.0.1:{server.port}/notify", posts


async def test_every_example_event_reaches_every_chat_service(
    service: ServiceFactory, store_db: StoreDB, aiohttp_server: Any, apprise_posts: Any
) -> None:
    teams = await start(aiohttp_server, FakeTeams())
    discord = await start(aiohttp_server, FakeDiscord())
    chat = await start(aiohttp_server, FakeGoogleChat())
    apprise_url, posts = apprise_posts
    rules = textwrap.dedent(
        f"""\
        version: 1
        channels:
          teams: {{type: teams, url: "{teams.url}", rate_limit: none}}
          discord: {{type: discord, url: "{discord.url}", rate_limit: none}}
          chat: {{type: google_chat, url: "{chat.url}", rate_limit: none,
                  thread_key: "{{{{ body.course_id | default('', true) }}}}"}}
          apprise: {{type: apprise, urls: ["{apprise_url}"]}}
        rules:
          - {{name: everything, events: ["*"], notify: [teams, discord, chat, apprise]}}
        """
    )
    client = await service(rules)  # with the shipped templates
    examples = all_examples()
    resp = await client.post("/events", json=list(examples.values()))
    assert resp.status == 202
    expected = len(examples) * len(CHAT_TYPES)
    await until(lambda: len(deliveries(store_db)) == expected, timeout=20)
    await until(lambda: all(d["state"] != "pending" for d in deliveries(store_db)), timeout=30)
    rows = deliveries(store_db)
    assert [
        (d["channel"], d["event_name"], d["last_error"]) for d in rows if d["state"] != "delivered"
    ] == []
    assert [run.error for run in teams.runs if run.status != "Succeeded"] == []
    assert len(teams.runs) == len(discord.messages()) == len(chat.messages) == len(posts)
    assert len(posts) == len(examples)

    # Every title made it, and an "Open in Canvas" button wherever the template linked.
    links: dict[str, set[str | None]] = {}
    for row in rows:
        message = orjson.loads(row["message"])
        link = message.get("blocks", {}).get("link") or None
        links.setdefault(message.get("title"), set()).add(link)
    linked = [
        row
        for row in rows
        if row["channel"] == "teams" and orjson.loads(row["message"]).get("blocks", {}).get("link")
    ]
    buttons = [run for run in teams.runs if run.body["attachments"][0]["content"].get("actions")]
    assert len(buttons) == len(linked) > 0  # the shipped templates link most events to Canvas
    titles = {run.body["attachments"][0]["content"]["body"][0]["text"] for run in teams.runs}
    assert titles == set(links)
    for run in teams.runs:
        card = run.body["attachments"][0]["content"]
        urls = [action["url"] for action in card.get("actions", [])]
        assert (urls[0] if urls else None) in links[card["body"][0]["text"]]
    for body in discord.messages():
        [embed] = body["embeds"]
        assert embed.get("url") in links[embed["title"]]
        assert body["allowed_mentions"] == {"parse": []}
    for message in chat.messages:
        title = message.body.get("fallbackText") or message.body["text"].split("\n")[0].strip("*")
        if "cardsV2" in message.body:
            [button] = message.body["cardsV2"][0]["card"]["sections"][0]["widgets"][-1][
                "buttonList"
            ]["buttons"]
            assert button["onClick"]["openLink"]["url"] in links[title]
        else:
            assert None in links[title]


def test_router_plugins_lists_the_chat_channels() -> None:
    result = CliRunner().invoke(cli, ["plugins"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in CHAT_TYPES:
        assert f"    channel types: {name}\n" in result.output


def test_router_validate_checks_chat_channel_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rules.yaml").write_text(
        textwrap.dedent(
            """\
            version: 1
            channels:
              teams: {type: teams, url: "teams.example/hook"}
              discord: {type: discord, url: "https://discord.example/x", thread_id: general}
              chat: {type: google_chat, url: "https://chat.example/x", thred_key: x}
              apprise: {type: apprise, urls: ["nosuch://token@host"]}
            rules:
              - {name: all, events: ["*"], notify: [teams, discord, chat, apprise]}
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli, ["validate", "rules.yaml", "--templates", str(ROOT / "templates")]
    )
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("rules.yaml:")]
    assert errors == [
        "rules.yaml:3:29: channels.teams.url: 'url' must be an http(s):// Workflows webhook URL",
        "rules.yaml:4:73: channels.discord.thread_id: String should match pattern '^[0-9]{1,20}$'",
        "rules.yaml:5:60: channels.chat.thred_key: unknown key 'thred_key'"
        " (did you mean 'thread_key'?)",
        "rules.yaml:6:34: channels.apprise.urls: urls[0]: Apprise does not understand it"
        " (scheme 'nosuch')",
    ]
    assert "token@host" not in result.output
