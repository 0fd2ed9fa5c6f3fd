"""The ``google_chat`` channel through the real router, against a local Google Chat
space webhook (tests/fakes/google_chat.py) that keeps messages by request id,
threads by key and answers in Google's error format."""

import re
import textwrap
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from router_google_chat import GoogleChatChannel, GoogleChatConfig, request_id

from router import Message, PermanentError
from router.config_source import ConfigErrors
from router.plugins import load_plugins
from router.rules import load_rules
from tests.conftest import ServiceFactory, StoreDB, example
from tests.fakes.google_chat import KEY, SPACE, TOKEN, FakeGoogleChat
from tests.test_delivery import deliveries, first_state, until

TEMPLATE = """\
{% block title %}{{ body.user.name }} completed {{ body.course.name }}{% endblock %}
{% block text %}Well done, {{ body.user.name }} <users/all> & <b>co</b>.{% endblock %}
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
async def chat(aiohttp_server: Any) -> FakeGoogleChat:
    fake = FakeGoogleChat()
    server = await aiohttp_server(fake.app())
    fake.base = str(server.make_url("")).rstrip("/")
    return fake


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the router logged (not the fake's access log, which prints its URL)."""
    return "\n".join(str(vars(r)) for r in caplog.records if r.name != "aiohttp.access")


def chat_rules(url: str, extra: str = "rate_limit: none") -> str:
    """Every event to one ``type: google_chat`` channel (no rate limit unless set)."""
    return textwrap.dedent(
        """\
        version: 1
        channels:
          chat:
            type: google_chat
            url: "{url}"
            timeout: 5
        {extra}
        rules:
          - {{name: everything, events: ["*"], notify: [chat]}}
        """
    ).format(url=url, extra=textwrap.indent(extra, "    "))


def distinct(count: int, course: str = "565") -> list[dict[str, Any]]:
    """``count`` course_completed events that are not duplicates of each other."""
    events = []
    for n in range(count):
        event = example("course_completed")
        event["metadata"]["request_id"] = f"request-{course}-{n}"
        event["body"]["course"]["id"] = course
        events.append(event)
    return events


async def test_posts_a_card_with_an_open_in_canvas_button(
    service: ServiceFactory, chat: FakeGoogleChat, store_db: StoreDB
) -> None:
    client = await service(chat_rules(chat.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [message] = chat.messages
    [(_, query, _)] = chat.requests
    [row] = deliveries(store_db)
    assert query == {
        "key": KEY,
        "token": TOKEN.replace("%3D", "="),
        "requestId": request_id(row["key"]),
    }
    uuid.UUID(query["requestId"])  # a UUID, derived from the delivery key
    [card] = message.body["cardsV2"]
    assert message.body["fallbackText"] == "Isaac Newton completed Computer Science I"
    assert card["card"]["header"] == {"title": "Isaac Newton completed Computer Science I"}
    text, buttons = card["card"]["sections"][0]["widgets"]
    # Card text is HTML: the event's markup is escaped, not interpreted.
    assert text["textParagraph"]["text"] == (
        "Well done, Isaac Newton &lt;users/all&gt; &amp; &lt;b&gt;co&lt;/b&gt;."
    )
    [button] = buttons["buttonList"]["buttons"]
    assert button == {"text": "Open in Canvas", "onClick": {"openLink": {"url": LINK}}}
    assert row["attempts"] == 1


async def test_without_a_link_it_posts_text_that_mentions_no_one(
    service: ServiceFactory, chat: FakeGoogleChat, store_db: StoreDB, own_templates: Path
) -> None:
    (own_templates / "default.j2").write_text(TEMPLATE.split("{% block link")[0])
    client = await service(chat_rules(chat.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [message] = chat.messages
    assert message.body == {
        "text": "*Isaac Newton completed Computer Science I*\n"
        "Well done, Isaac Newton <\u200busers/all> & <b>co</b>."
    }


async def test_a_retry_after_a_lost_answer_does_not_post_twice(
    service: ServiceFactory, chat: FakeGoogleChat, store_db: StoreDB
) -> None:
    chat.lose_answers = 1  # created, then answered 503 as if the answer was lost
    client = await service(chat_rules(chat.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    assert deliveries(store_db)[0]["attempts"] == 2
    assert len(chat.requests) == 2 and len(chat.messages) == 1
    assert chat.requests[0][1]["requestId"] == chat.requests[1][1]["requestId"]


async def test_replaying_a_dead_letter_keeps_the_request_id(
    service: ServiceFactory, chat: FakeGoogleChat, store_db: StoreDB
) -> None:
    chat.script.append((400, "Invalid value at 'message'"))
    client = await service(chat_rules(chat.url), admin_token="admin-token-0123456789")
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    resp = await client.post(
        "/-/dlq/replay",
        json={"all": True},
        headers={"Authorization": "Bearer admin-token-0123456789"},
    )
    assert resp.status == 200
    await until(lambda: first_state(store_db) == "delivered")
    first, second = (query["requestId"] for _, query, _ in chat.requests)
    assert first == second and len(chat.messages) == 1


async def test_thread_key_threads_messages(
    service: ServiceFactory, chat: FakeGoogleChat, store_db: StoreDB
) -> None:
    extra = "rate_limit: none\nthread_key: 'course-{{ body.course.id }}'"
    client = await service(chat_rules(chat.url, extra))
    await client.post("/events", json=distinct(2, "565") + distinct(1, "566"))
    await until(lambda: len(chat.messages) == 3)
    threads = {m.body["thread"]["threadKey"]: set() for m in chat.messages}
    for message in chat.messages:
        threads[message.body["thread"]["threadKey"]].add(message.thread)
    assert {key: len(names) for key, names in threads.items()} == {"course-565": 1, "course-566": 1}
    assert threads["course-565"] != threads["course-566"]
    for _, query, _ in chat.requests:
        assert query["messageReplyOption"] == "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"


async def test_an_oversized_message_is_shortened_to_text(
    service: ServiceFactory, chat: FakeGoogleChat, store_db: StoreDB, own_templates: Path
) -> None:
    (own_templates / "default.j2").write_text(
        TEMPLATE.replace("Well done,", "{{ 'lots of <text> & more\\n' * 3000 }}")
    )
    client = await service(chat_rules(chat.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    [message] = chat.messages
    text = message.body["text"]
    assert text.startswith("*Isaac Newton completed Computer Science I*\nlots of <text>")
    assert re.search(
        r"\n… \(shortened: the whole message was \d+ KB\)\n<[^|]+\|Open in Canvas>$", text
    )
    assert f"<{LINK}|Open in Canvas>" in text


async def test_the_fake_refuses_a_message_over_32000_bytes(chat: FakeGoogleChat) -> None:
    async with aiohttp.ClientSession() as session:
        body = {"text": "x" * 32_001}
        async with session.post(chat.url.replace("%3D", "%253D"), json=body) as resp:
            assert resp.status == 401  # a re-encoded token is another token
        async with session.post(chat.url, json=body) as resp:
            answer = await resp.json()
    assert resp.status == 400 and answer["error"]["status"] == "INVALID_ARGUMENT"
    assert chat.messages == []


async def test_429_is_retried(
    service: ServiceFactory, chat: FakeGoogleChat, store_db: StoreDB
) -> None:
    chat.script.append((429, "Resource has been exhausted (e.g. check quota)."))
    client = await service(chat_rules(chat.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "delivered")
    assert deliveries(store_db)[0]["attempts"] == 2 and len(chat.messages) == 1


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ((SPACE, "AAAAother"), "HTTP 404 Not Found: NOT_FOUND: Requested entity was not found."),
        (
            (TOKEN, "wrongtoken"),
            "HTTP 401 Unauthorized: UNAUTHENTICATED: Request had invalid authentication"
            " credentials.",
        ),
    ],
)
async def test_rejections_are_dead_letters_without_the_url(
    service: ServiceFactory,
    chat: FakeGoogleChat,
    store_db: StoreDB,
    caplog: pytest.LogCaptureFixture,
    change: tuple[str, str],
    error: str,
) -> None:
    caplog.set_level("DEBUG")
    client = await service(chat_rules(chat.url.replace(*change)))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert (row["last_error"], row["attempts"]) == (error, 1)
    everything = logged(caplog) + str(deliveries(store_db))
    token = chat.url.replace(*change).split("token=")[1]
    assert KEY not in everything and token not in everything


async def test_a_bad_cards_block_is_google_chats_error(
    service: ServiceFactory, chat: FakeGoogleChat, store_db: StoreDB, own_templates: Path
) -> None:
    (own_templates / "course_completed.google_chat.j2").write_text(
        '{% block google_chat_cards %}[{"card": {"sections": [{"widgets": [{"buttonList":'
        ' {"buttons": [{"text": "x", "onClick": {}}]}}]}]}}]{% endblock %}'
    )
    client = await service(chat_rules(chat.url))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "dead")
    [row] = deliveries(store_db)
    assert row["last_error"] == (
        "HTTP 400 Bad Request: INVALID_ARGUMENT: Invalid value at 'message.cards_v2[0]':"
        " button without a URL"
    )


async def test_no_url_is_log_only(
    service: ServiceFactory, store_db: StoreDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOOGLE_CHAT_WEBHOOK_URL", raising=False)
    client = await service(chat_rules("${GOOGLE_CHAT_WEBHOOK_URL:-}"))
    await client.post("/events", json=example("course_completed"))
    await until(lambda: first_state(store_db) == "logged")


@pytest.mark.sqlite_only("the channel's default rate limit, not the store")
async def test_default_rate_limit_spaces_posts(
    service: ServiceFactory, chat: FakeGoogleChat, store_db: StoreDB
) -> None:
    client = await service(chat_rules(chat.url, extra=""))
    await client.post("/events", json=distinct(2))
    await until(lambda: len(chat.messages) == 2)
    first, second = chat.messages
    assert second.at - first.at >= 0.9  # "1/s"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("url: chat.googleapis.com/v1", "'url' must be an http(s):// Google Chat webhook URL"),
        ("url: https://x\nthread_key: '{{ body.course_id'", "template syntax error:"),
    ],
)
def test_bad_config_fails_rules_loading(tmp_path: Path, settings: str, message: str) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nchannels:\n  chat:\n    type: google_chat\n"
        + textwrap.indent(settings, "    ")
        + "\nrules:\n  - {name: r, events: [x], notify: [chat]}\n"
    )
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules, load_plugins().channel_types)
    [error] = caught.value.errors
    assert error.path.startswith("channels.chat") and error.message.startswith(message)


def test_request_ids_and_thread_keys() -> None:
    assert request_id("ev1:rule:chat") == request_id("ev1:rule:chat")
    assert request_id("ev1:rule:chat") != request_id("ev2:rule:chat")
    config = GoogleChatConfig(url="https://example.com/x", thread_key="{{ body.missing }}")
    channel = GoogleChatChannel("chat", config)
    base = {"key": "k", "event_id": "e", "event_name": "n", "rule": "r", "channel": "chat"}
    with pytest.raises(PermanentError, match="cannot render thread_key: UndefinedError"):
        channel.thread_key(Message(**base, event={"body": {}}))
    long = GoogleChatChannel(
        "chat", GoogleChatConfig(url="https://x", thread_key="{{ 'k' * 4001 }}")
    )
    with pytest.raises(PermanentError, match="at most 4,000"):
        long.thread_key(Message(**base, event={}))
