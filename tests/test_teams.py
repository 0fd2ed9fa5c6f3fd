"""The ``teams`` channel through the real router, against a local Teams Workflows
webhook (tests/fakes/teams.py) that answers 202 and runs the flow afterwards."""

import re
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from router_teams import MAX_BYTES, TeamsChannel, TeamsConfig, default_card, envelope
from yarl import URL

from router import Message, PermanentError
from router.config_source import ConfigErrors
from router.plugins import load_plugins
from router.rules import load_rules
from tests.conftest import ServiceFactory, StoreDB, example
from tests.fakes.teams import FLOW_ID, SIGNATURE, FakeTeams
from tests.test_delivery import deliveries, first_state, until

TEMPLATE = """\
{% block title %}{{ (body.get("user") or {}).get("name") }} completed \
{{- " " ~ (body.get("course") or {}).get("name") }}{% endblock %}
{% block text %}Well done, {{ (body.get("user") or {}).get("name") }}.{% endblock %}
{% block link %}https://{{ metadata.hostname }}/courses/565{% endblock %}
"""
LINK = "https://oxana.instructure.com/courses/565"


@pytest.fixture(autouse=True)
def own_templates(tmp_path: Path) -> Path:
    """These tests' own templates (the service fixture copies nothing when the
    directory exists): the shipped ones change independently of this plugin."""
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "default.j2").write_text(TEMPLATE)
    return directory


@pytest.fixture
async def teams(aiohttp_server: Any) -> FakeTeams:
    fake = FakeTeams()
    server = await aiohttp_server(fake.app())
    fake.base = str(server.make_url("")).rstrip("/")
    return fake


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the router logged, extra fields included (not the fake's access log,
    which prints the URL it was called with)."""
    return "\n".join(str(vars(r)) for r in caplog.records if r.name != "aiohttp.access")


def teams_rules(url: str, extra: str = "rate_limit: none") -> str:
    """Every event to one ``type: teams`` channel (no rate limit unless ``extra`` says)."""
    return textwrap.dedent(
        """\
        version: 1
        channels:
          chat:
            type: teams
            url: "{url}"
            timeout: 5
        {extra}
        rules:
          - {{name: everything, events: ["*"], notify: [chat]}}
        """
    ).format(url=url, extra=textwrap.indent(extra, "    "))


async def test_posts_an_adaptive_card_with_an_open_in_canvas_action(
    service: ServiceFactory, teams: FakeTeams, store_db: StoreDB
) -> None:
    client = await service(teams_rules(teams.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [run] = teams.runs
    assert run.status == "Succeeded", run.error
    [attachment] = run.body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    title, text = card["body"]
    assert title["text"] == "Isaac Newton completed Computer Science I"
    assert title["weight"] == "Bolder" and title["wrap"] is True
    assert text["text"] == "Well done, Isaac Newton."
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open in Canvas", "url": LINK}]
    assert deliveries(store_db)[0]["attempts"] == 1


async def test_teams_card_block_is_the_card(
    service: ServiceFactory, teams: FakeTeams, store_db: StoreDB, own_templates: Path
) -> None:
    (own_templates / "course_completed.teams.j2").write_text(
        '{% block title %}t{% endblock %}{% block teams_card %}{"type": "AdaptiveCard",'
        ' "version": "1.5", "body": [{"type": "TextBlock", "text": {{ body.user.name | tojson }}}]}'
        "{% endblock %}"
    )
    (own_templates / "course_created.teams.j2").write_text(
        '{% block teams_card %}{"type": "MessageCard"}{% endblock %}'
    )
    client = await service(teams_rules(teams.url))
    await client.post("/events", json=[example("course_completed"), example("course_created")])
    await until(lambda: sorted(d["state"] for d in deliveries(store_db)) == ["dead", "delivered"])
    [run] = teams.runs
    assert run.body["attachments"][0]["content"] == {
        "type": "AdaptiveCard",
        "version": "1.5",
        "body": [{"type": "TextBlock", "text": "Isaac Newton"}],
    }
    [dead] = [d for d in deliveries(store_db) if d["state"] == "dead"]
    assert dead["last_error"].startswith("template block 'teams_card' must be an Adaptive Card")


async def test_an_oversized_message_is_shortened_keeping_title_and_link(
    service: ServiceFactory, teams: FakeTeams, store_db: StoreDB, own_templates: Path
) -> None:
    (own_templates / "default.j2").write_text(
        TEMPLATE.replace(
            'Well done, {{ (body.get("user") or {}).get("name") }}.',
            "{{ 'é <\"long\"> line\\n' * 6000 }}",
        )
    )
    client = await service(teams_rules(teams.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [run] = teams.runs
    assert run.status == "Succeeded", run.error  # the fake's flow posts at most 28 KB
    assert MAX_BYTES - 200 < run.size <= MAX_BYTES
    card = run.body["attachments"][0]["content"]
    assert card["body"][0]["text"] == "Isaac Newton completed Computer Science I"
    assert card["body"][1]["text"].startswith('é <"long"> line\n')
    assert re.search(
        r"\n\n… \(shortened: the whole message was 11\d KB\)$", card["body"][1]["text"]
    )
    assert card["actions"][0]["url"] == LINK


async def test_the_fake_fails_an_unshortened_card(teams: FakeTeams) -> None:
    """The fake enforces the limit: an oversized card is answered 202 (Workflows accept
    first) and its flow run fails; the channel's payload for it fits."""
    base = {"key": "k", "event_id": "e", "event_name": "n", "rule": "r", "channel": "chat"}
    message = Message(**base, title="t", text="x" * 40_000)
    async with aiohttp.ClientSession() as session:
        big = envelope(default_card("t", message.text, None))
        async with session.post(URL(teams.url, encoded=True), data=big) as resp:
            assert (resp.status, await resp.read()) == (202, b"")
    assert [run.status for run in teams.runs] == ["Failed"]
    assert "RequestEntityTooLarge" in teams.runs[0].error
    channel = TeamsChannel("chat", TeamsConfig(url=teams.url))
    assert len(channel.payload(message)) <= MAX_BYTES


async def test_429_waits_for_retry_after(
    service: ServiceFactory, teams: FakeTeams, store_db: StoreDB
) -> None:
    teams.script.append((429, "TooManyRequests", "Rate limit is exceeded.", {"Retry-After": "1"}))
    client = await service(teams_rules(teams.url))
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "delivered")
    first, second = teams.arrivals
    # backoff_cap is 0.2 s in tests: only Retry-After explains a wait of a second.
    assert 0.95 <= second - first < 3.0
    assert deliveries(store_db)[0]["attempts"] == 2
    assert [run.status for run in teams.runs] == ["Succeeded"]


async def test_5xx_is_retried(service: ServiceFactory, teams: FakeTeams, store_db: StoreDB) -> None:
    teams.script.append((502, "BadGateway", "The gateway did not answer.", {}))
    client = await service(teams_rules(teams.url))
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "delivered")
    assert len(teams.arrivals) == 2 and deliveries(store_db)[0]["attempts"] == 2


@pytest.mark.parametrize(
    ("flow", "signature", "error"),
    [
        (
            "ffffffffffffffffffffffffffffffff",
            SIGNATURE,
            "HTTP 404 Not Found: WorkflowNotFound: The workflow"
            " 'ffffffffffffffffffffffffffffffff' could not be found.",
        ),
        (
            FLOW_ID,
            "wrong-signature",
            "HTTP 401 Unauthorized: DirectApiInvalidAuthorizationSignature:"
            " The provided authorization signature is not valid.",
        ),
    ],
)
async def test_rejections_are_dead_letters_without_the_url(
    service: ServiceFactory,
    teams: FakeTeams,
    store_db: StoreDB,
    caplog: pytest.LogCaptureFixture,
    flow: str,
    signature: str,
    error: str,
) -> None:
    caplog.set_level("DEBUG")
    url = teams.url.replace(FLOW_ID, flow).replace(SIGNATURE, signature)
    client = await service(teams_rules(url))
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert (row["last_error"], row["attempts"]) == (error, 1)
    everything = logged(caplog) + str(deliveries(store_db))
    assert signature not in everything and f"/workflows/{flow}/" not in everything


async def test_connection_refused_is_retried_without_the_url(
    service: ServiceFactory, store_db: StoreDB
) -> None:
    url = f"http://127.0.0.1:9/workflows/{FLOW_ID}/triggers/manual/paths/invoke?sig={SIGNATURE}"
    client = await service(teams_rules(url), max_attempts=2)
    await client.post("/events", json=example("course_created"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["last_error"].startswith("gave up after 2 attempt(s): ClientConnectorError")
    assert SIGNATURE not in row["last_error"] and FLOW_ID not in row["last_error"]


async def test_no_url_is_log_only(
    service: ServiceFactory,
    store_db: StoreDB,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("TEAMS_WEBHOOK_URL", raising=False)
    caplog.set_level("INFO")
    client = await service(teams_rules("${TEAMS_WEBHOOK_URL:-}"))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "logged")
    [record] = [r for r in caplog.records if r.getMessage() == "log-only channel: would send"]
    assert record.reason == "no Teams webhook url configured"  # type: ignore[attr-defined]


@pytest.mark.sqlite_only("the channel's default rate limit, not the store")
async def test_default_rate_limit_spaces_posts(
    service: ServiceFactory, teams: FakeTeams, store_db: StoreDB
) -> None:
    client = await service(teams_rules(teams.url, extra=""))
    events = [example("course_created") | {"body": {"n": n}} for n in range(4)]
    await client.post("/events", json=events)
    await until(lambda: len(teams.runs) == 4)
    gaps = [b - a for a, b in zip(teams.arrivals, teams.arrivals[1:], strict=False)]
    # "4/s": a quarter of a second between posts (a little less, for the clocks).
    assert min(gaps) >= 0.2, gaps


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('url: "ftp://example.com/x"', "'url' must be an http(s):// Workflows webhook URL"),
        ('url: "https://x"\nurl_: 1', "unknown key 'url_' (did you mean 'url'?)"),
    ],
)
def test_bad_config_fails_rules_loading(tmp_path: Path, settings: str, message: str) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nchannels:\n  chat:\n    type: teams\n"
        + textwrap.indent(settings, "    ")
        + "\nrules:\n  - {name: r, events: [x], notify: [chat]}\n"
    )
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules, load_plugins().channel_types)
    [error] = caught.value.errors
    assert error.path.startswith("channels.chat") and error.message == message
    assert "example.com" not in str(error)


def test_a_card_block_that_is_not_json_is_permanent() -> None:
    channel = TeamsChannel("chat", TeamsConfig(url="https://example.com/hook"))
    base = {"key": "k", "event_id": "e", "event_name": "n", "rule": "r", "channel": "chat"}
    with pytest.raises(PermanentError, match="'teams_card' is not valid JSON"):
        channel.card(Message(**base, blocks={"teams_card": "{nope"}))
    plain = channel.card(Message(**base, title="T", blocks={"link": "javascript:alert(1)"}))
    assert "actions" not in plain  # only an http(s) link becomes a button
