"""The ``discord`` channel through the real router, against a local Discord webhook
(tests/fakes/discord.py) that validates bodies, rate-limits per webhook and answers
in Discord's own error format."""

import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from router_discord import DiscordChannel, DiscordConfig, default_embed

from router import Message, PermanentError
from router.config_source import ConfigErrors
from router.plugins import load_plugins
from router.rules import load_rules
from tests.conftest import ServiceFactory, StoreDB, example
from tests.fakes.discord import TOKEN, WEBHOOK_ID, FakeDiscord
from tests.test_delivery import deliveries, first_state, until

TEMPLATE = """\
{% block title %}{{ body.user.name }} completed {{ body.course.name }}{% endblock %}
{% block text %}Well done, {{ body.user.name }}. @everyone{% endblock %}
{% block link %}https://{{ metadata.hostname }}/courses/565{% endblock %}
"""
LINK = "https://oxana.instructure.com/courses/565"


@pytest.fixture(autouse=True)
def own_templates(tmp_path: Path) -> Path:
    """These tests' own templates: the shipped ones change independently of this plugin."""
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "default.j2").write_text(TEMPLATE)
    return directory


@pytest.fixture
async def discord(aiohttp_server: Any) -> FakeDiscord:
    fake = FakeDiscord()
    server = await aiohttp_server(fake.app())
    fake.base = str(server.make_url("")).rstrip("/")
    return fake


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the router logged (not the fake's access log, which prints its URL)."""
    return "\n".join(str(vars(r)) for r in caplog.records if r.name != "aiohttp.access")


def discord_rules(url: str, extra: str = "rate_limit: none") -> str:
    """Every event to one ``type: discord`` channel (no rate limit unless ``extra`` says)."""
    return textwrap.dedent(
        """\
        version: 1
        channels:
          chat:
            type: discord
            url: "{url}"
            timeout: 5
        {extra}
        rules:
          - {{name: everything, events: ["*"], notify: [chat]}}
        """
    ).format(url=url, extra=textwrap.indent(extra, "    "))


def distinct(count: int) -> list[dict[str, Any]]:
    """``count`` course_completed events that are not duplicates of each other."""
    events = []
    for n in range(count):
        event = example("course_completed")
        event["metadata"]["request_id"] = f"request-{n}"
        events.append(event)
    return events


async def test_posts_an_embed_that_cannot_mention_anyone(
    service: ServiceFactory, discord: FakeDiscord, store_db: StoreDB
) -> None:
    extra = "rate_limit: none\nusername: Canvas\navatar_url: https://example.edu/a.png"
    client = await service(discord_rules(discord.url, extra))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [hit] = discord.hits
    assert (hit.status, hit.query) == (200, {"wait": "true"})
    assert hit.body == {
        "embeds": [
            {
                "title": "Isaac Newton completed Computer Science I",
                "description": f"Well done, Isaac Newton. @everyone\n\n[Open in Canvas]({LINK})",
                "url": LINK,
            }
        ],
        "username": "Canvas",
        "avatar_url": "https://example.edu/a.png",
        "allowed_mentions": {"parse": []},
    }
    assert deliveries(store_db)[0]["attempts"] == 1


async def test_thread_id_and_mentions(
    service: ServiceFactory, discord: FakeDiscord, store_db: StoreDB
) -> None:
    extra = "rate_limit: none\nthread_id: '1190000000000000002'\nmentions: [users]"
    client = await service(discord_rules(discord.url, extra))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [hit] = discord.hits
    assert hit.query == {"wait": "true", "thread_id": "1190000000000000002"}
    assert hit.body["allowed_mentions"] == {"parse": ["users"]}


async def test_discord_embeds_block(
    service: ServiceFactory, discord: FakeDiscord, store_db: StoreDB, own_templates: Path
) -> None:
    embeds = (
        '{"content": "New: {{ body.course.name }}", "embeds": [{"title": "a"}, {"title": "b"}]}'
    )
    (own_templates / "course_completed.discord.j2").write_text(
        "{% block title %}t{% endblock %}{% block discord_embeds %}" + embeds + "{% endblock %}"
    )
    client = await service(discord_rules(discord.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [body] = discord.messages()
    assert body["content"] == "New: Computer Science I"
    assert body["embeds"] == [{"title": "a"}, {"title": "b"}]


@pytest.mark.parametrize(
    ("embeds", "error"),
    [
        (
            "[" + ", ".join(['{"title": "x"}'] * 11) + "]",
            "HTTP 400 Bad Request: Discord 50035 Invalid Form Body: embeds:"
            " Must be 10 or fewer in length.",
        ),
        (
            '[{"description": {{ ("d" * 4000) | tojson }}},'
            ' {"description": {{ ("d" * 2001) | tojson }}}]',
            "HTTP 400 Bad Request: Discord 50035 Invalid Form Body: embeds:"
            " Embed size exceeds maximum size of 6000",
        ),
        (
            '[{"title": {{ ("t" * 257) | tojson }}}]',
            "HTTP 400 Bad Request: Discord 50035 Invalid Form Body: embeds.0.title:"
            " Must be 256 or fewer in length.",
        ),
    ],
)
async def test_invalid_form_body_is_a_dead_letter_with_discords_message(
    service: ServiceFactory,
    discord: FakeDiscord,
    store_db: StoreDB,
    own_templates: Path,
    embeds: str,
    error: str,
) -> None:
    (own_templates / "course_completed.discord.j2").write_text(
        "{% block discord_embeds %}" + embeds + "{% endblock %}"
    )
    client = await service(discord_rules(discord.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert (row["last_error"], row["attempts"]) == (error, 1)
    assert discord.messages() == []


async def test_a_long_text_is_shortened_to_discords_limits(
    service: ServiceFactory, discord: FakeDiscord, store_db: StoreDB, own_templates: Path
) -> None:
    (own_templates / "default.j2").write_text(
        TEMPLATE.replace("{% block title %}", "{% block title %}{{ 'T' * 300 }}").replace(
            "Well done,", "{{ 'long text ' * 1000 }}"
        )
    )
    client = await service(discord_rules(discord.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [body] = discord.messages()
    [embed] = body["embeds"]
    assert len(embed["title"]) == 256 and embed["title"].endswith("…")
    assert len(embed["description"]) <= 4096
    assert embed["description"].endswith(f"…\n\n[Open in Canvas]({LINK})")


async def test_429_waits_exactly_retry_after(
    service: ServiceFactory, discord: FakeDiscord, store_db: StoreDB
) -> None:
    discord.limit, discord.per = 2, 1.5  # the webhook's bucket: 2 requests per 1.5 s
    client = await service(discord_rules(discord.url))
    await client.post("/events", json=distinct(3))
    await until(lambda: len(discord.messages()) == 3, timeout=15)
    statuses = [hit.status for hit in discord.hits]
    assert statuses.count(429) >= 1 and statuses.count(200) == 3
    first_429 = next(hit for hit in discord.hits if hit.status == 429)
    after = [hit for hit in discord.hits if hit.at > first_429.at and hit.status == 200]
    # Discord said how long to wait (the rest of the bucket's 1.5 s); the router's own
    # backoff is at most 0.2 s in tests, so only retry_after explains this wait.
    start = discord.hits[0].at
    assert after and after[0].at - start >= 1.45
    assert after[0].at - first_429.at < 1.5 + 2.0
    await until(lambda: all(d["state"] == "delivered" for d in deliveries(store_db)))


async def test_an_empty_bucket_is_waited_for_without_a_429(
    service: ServiceFactory, discord: FakeDiscord, store_db: StoreDB
) -> None:
    discord.limit, discord.per = 2, 1.5
    client = await service(discord_rules(discord.url, "rate_limit: none\nconcurrency: 1"))
    await client.post("/events", json=distinct(4))
    await until(lambda: len(discord.messages()) == 4, timeout=15)
    assert [hit.status for hit in discord.hits] == [200] * 4  # X-RateLimit-* followed
    first, _, third, _ = discord.hits
    assert third.at - first.at >= 1.45


async def test_the_fake_answers_429_like_discord(discord: FakeDiscord) -> None:
    """The fake's 429: the documented body and headers, retry_after fractional."""
    discord.limit, discord.per = 1, 2.0
    body = orjson.dumps({"content": "hi"})
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(discord.url, data=body) as resp:
                status, headers, data = resp.status, resp.headers, await resp.read()
    assert status == 429
    answer = orjson.loads(data)
    assert answer["message"] == "You are being rate limited." and answer["global"] is False
    # Seconds as a JSON float (fractional): the rest of the bucket's 2 s.
    assert isinstance(answer["retry_after"], float) and 0 < answer["retry_after"] <= 2.0
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("1", "0")
    assert {"Retry-After", "X-RateLimit-Reset-After", "X-RateLimit-Bucket"} <= set(headers)


async def test_5xx_is_retried(
    service: ServiceFactory, discord: FakeDiscord, store_db: StoreDB
) -> None:
    discord.script.append((502, {"message": "Bad Gateway", "code": 0}))
    client = await service(discord_rules(discord.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    assert deliveries(store_db)[0]["attempts"] == 2


async def test_deleted_webhook_is_a_dead_letter_without_the_token(
    service: ServiceFactory,
    discord: FakeDiscord,
    store_db: StoreDB,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    discord.deleted = True
    client = await service(discord_rules(discord.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["last_error"] == "HTTP 404 Not Found: Discord 10015 Unknown Webhook"
    assert row["attempts"] == 1
    everything = logged(caplog) + str(deliveries(store_db))
    assert TOKEN not in everything and WEBHOOK_ID not in everything


async def test_connection_refused_is_retried_without_the_token(
    service: ServiceFactory, store_db: StoreDB
) -> None:
    url = f"http://127.0.0.1:9/api/webhooks/{WEBHOOK_ID}/{TOKEN}"
    client = await service(discord_rules(url), max_attempts=2)
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["last_error"].startswith("gave up after 2 attempt(s): ClientConnectorError")
    assert TOKEN not in row["last_error"]


async def test_no_url_is_log_only(
    service: ServiceFactory, store_db: StoreDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCORD_WEBHOOK_URL", raising=False)
    client = await service(discord_rules("${DISCORD_WEBHOOK_URL:-}"))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "logged")


@pytest.mark.sqlite_only("the channel's default rate limit, not the store")
async def test_default_rate_limit_spaces_posts(
    service: ServiceFactory, discord: FakeDiscord, store_db: StoreDB
) -> None:
    client = await service(discord_rules(discord.url, extra=""))
    await client.post("/events", json=distinct(2))
    await until(lambda: len(discord.messages()) == 2, timeout=15)
    first, second = discord.hits
    assert second.at - first.at >= 1.8  # "30/min": two seconds apart


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('url: "discord.com/api/webhooks/1/x"', "'url' must be an http(s):// Discord webhook URL"),
        ("url: https://x\nthread_id: abc", "String should match pattern '^[0-9]{1,20}$'"),
        ("url: https://x\nmentions: [here]", "Input should be 'users', 'roles' or 'everyone'"),
        ("url: https://x\nusername: ''", "String should have at least 1 character"),
        (
            "url: https://x\nusername: Discord Bot",
            "Discord refuses webhook usernames containing 'discord'",
        ),
    ],
)
def test_bad_config_fails_rules_loading(tmp_path: Path, settings: str, message: str) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nchannels:\n  chat:\n    type: discord\n"
        + textwrap.indent(settings, "    ")
        + "\nrules:\n  - {name: r, events: [x], notify: [chat]}\n"
    )
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules, load_plugins().channel_types)
    [error] = caught.value.errors
    assert error.path.startswith("channels.chat") and error.message == message


def test_embeds_block_shapes() -> None:
    channel = DiscordChannel("chat", DiscordConfig(url="https://example.com/hook"))
    base = {"key": "k", "event_id": "e", "event_name": "n", "rule": "r", "channel": "chat"}
    listed = channel.payload(Message(**base, blocks={"discord_embeds": '[{"title": "x"}]'}))
    assert listed["embeds"] == [{"title": "x"}] and "content" not in listed
    with pytest.raises(PermanentError, match="must be a list of embeds"):
        channel.payload(Message(**base, blocks={"discord_embeds": '{"title": "x"}'}))
    with pytest.raises(PermanentError, match="is not valid JSON"):
        channel.payload(Message(**base, blocks={"discord_embeds": "[{"}))


def test_a_text_that_shows_the_link_gets_no_second_one() -> None:
    base = {"key": "k", "event_id": "e", "event_name": "n", "rule": "r", "channel": "chat"}
    shown = Message(**base, title="T", text=f"See {LINK}", blocks={"link": LINK})
    assert default_embed(shown) == {"title": "T", "description": f"See {LINK}", "url": LINK}
    hidden = Message(**base, title="T", text="See Canvas", blocks={"link": LINK})
    assert default_embed(hidden)["description"] == f"See Canvas\n\n[Open in Canvas]({LINK})"
