"""router.testing: a real router around a plugin, in a few lines of a plugin's test."""

from pathlib import Path
from typing import Any

import pytest
import router_webhook

from router import Channel, Message, PermanentError, hookimpl
from router.config_source import ConfigErrors
from router.testing import (
    PluginLoadError,
    SettleTimeout,
    event,
    run_router,
)
from tests.conftest import example, webhook_rules
from tests.receiver import WebhookReceiver


def names_in(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()} if directory.is_dir() else set()


class Refuser(Channel):
    """A channel that always fails permanently, saying why."""

    type = "refuser"

    async def send(self, message: Message) -> None:
        raise PermanentError(f"receiver refused {message.key}: HTTP 403")


class RefuserPlugin:
    @hookimpl
    def register_channels(self, register: Any) -> None:
        register(Refuser)


REFUSER_RULES = """
    version: 1
    channels:
      nope: {type: refuser}
    rules:
      - {name: all, events: ["*"], notify: [nope]}
"""


async def test_builtin_webhook_delivers_to_a_real_receiver(receiver: WebhookReceiver) -> None:
    async with run_router(webhook_rules(receiver.url)) as router:
        [event_id] = await router.send(example("course_completed"))
        [delivery] = await router.wait_until_settled()
        assert router.delivered() == [delivery]
        assert router.failed() == []
    assert (delivery.state, delivery.attempts, delivery.last_error) == ("delivered", 1, None)
    assert delivery.event_id == event_id
    assert delivery.key == f"{event_id}:everything:hook"
    assert delivery.title == "Isaac Newton completed Computer Science I"
    [got] = receiver.received
    assert got.webhook_id == delivery.key
    assert got.body["title"] == delivery.title
    assert [o.status for o in router.outcomes] == ["delivered"]


async def test_a_plugin_that_fails_permanently_makes_dead_letters() -> None:
    async with run_router(REFUSER_RULES, plugins=[RefuserPlugin()]) as router:
        await router.send([event("a", {"n": 1}), event("b", {"n": 2})])
        deliveries = await router.wait_until_settled()
        assert router.failed() == deliveries
    assert [(d.event_name, d.state, d.attempts) for d in deliveries] == [
        ("a", "dead", 1),
        ("b", "dead", 1),
    ]
    assert deliveries[0].last_error == f"receiver refused {deliveries[0].key}: HTTP 403"
    assert [(o.status, o.channel_type) for o in router.outcomes] == [("dead", "refuser")] * 2
    assert "RefuserPlugin-0" in {info.name for info in router.plugins.infos}


async def test_retries_happen_for_real_and_show_in_outcomes(receiver: WebhookReceiver) -> None:
    receiver.script.extend([(503, {}), (429, {})])
    async with run_router(webhook_rules(receiver.url)) as router:
        await router.send(example("course_created"))
        [delivery] = await router.wait_until_settled()
    assert (delivery.state, delivery.attempts) == ("delivered", 3)
    assert [(o.status, o.attempt) for o in router.outcomes] == [
        ("retry", 1),
        ("retry", 2),
        ("delivered", 3),
    ]
    assert router.outcomes[1].error == "HTTP 429 Too Many Requests: scripted 429"


async def test_log_only_channel_and_template_dict() -> None:
    templates = {
        "default.j2": "{% block title %}T {{ body.n }}{% endblock %}{% block text %}x{% endblock %}"
    }
    async with run_router(webhook_rules("", secret=None), templates=templates) as router:
        await router.send(event("tick", {"n": 7}))
        [delivery] = await router.wait_until_settled()
        assert router.logged() == [delivery]
        assert names_in(router.settings.templates) == {"default.j2"}
    assert (delivery.state, delivery.title, delivery.text) == ("logged", "T 7", "x")


async def test_settle_timeout_says_what_is_pending(receiver: WebhookReceiver) -> None:
    receiver.script.append((503, {"Retry-After": "30"}))
    async with run_router(webhook_rules(receiver.url)) as router:
        await router.send(example("course_created"))
        with pytest.raises(SettleTimeout, match=r"1 delivery\(ies\) pending.*attempts=1"):
            await router.wait_until_settled(timeout=0.5)


async def test_invalid_rules_raise_config_errors_like_router_validate() -> None:
    with pytest.raises(ConfigErrors, match="unknown key 'rooom'"):
        async with run_router(
            REFUSER_RULES.replace("{type: refuser}", "{type: refuser, rooom: 1}"),
            plugins=[RefuserPlugin()],
        ):
            pass


async def test_plugin_problems_fail_loudly_unless_allowed() -> None:
    class Typo:
        @hookimpl
        def register_channel(self, register: Any) -> None:
            pass

    with pytest.raises(PluginLoadError, match="register_channel"):
        async with run_router(REFUSER_RULES, plugins=[RefuserPlugin(), Typo()]):
            pass
    async with run_router(
        REFUSER_RULES, plugins=[RefuserPlugin(), Typo()], allow_plugin_problems=True
    ) as router:
        assert [p.plugin for p in router.plugins.problems] == ["Typo-1"]


async def test_an_installed_plugin_passed_in_is_loaded_once(receiver: WebhookReceiver) -> None:
    async with run_router(webhook_rules(receiver.url), plugins=[router_webhook]) as router:
        assert router.plugins.problems == []
        assert router.plugins.channel_types["webhook"].plugin == "router_webhook"
        await router.send(example("course_created"))
        [delivery] = await router.wait_until_settled()
    assert delivery.state == "delivered"


async def test_environment_is_ignored_and_everything_is_cleaned_up(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_INGEST_TOKEN", "would-make-every-post-401")
    monkeypatch.setenv("ROUTER_MAX_ATTEMPTS", "1")
    async with run_router(webhook_rules(receiver.url), max_attempts=4) as router:
        workdir = Path(router.settings.db).parent
        assert router.settings.max_attempts == 4
        assert router.settings.ingest_token is None
        await router.send(example("course_created"))
        await router.wait_until_settled()
        url = router.client.make_url("/healthz")
        assert url.host == "127.0.0.1"
        session = router.client.session
    assert not workdir.exists()
    assert session.closed


async def test_directory_keeps_the_store_for_inspection(tmp_path: Path) -> None:
    async with run_router(REFUSER_RULES, plugins=[RefuserPlugin()], directory=tmp_path) as router:
        await router.send(event("a"))
        await router.wait_until_settled()
    assert {"router.db", "rules.yaml"} <= names_in(tmp_path)
