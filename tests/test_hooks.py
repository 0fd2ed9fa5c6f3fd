"""The canonical test of every hook in router/hookspecs.py, each through a real router,
and the third-party example plugin found through its entry point, end to end.

Every hook must have a ``test_hook_<name>`` here: ``test_every_hook_has_a_test`` fails
when a hook is added without one.
"""

import importlib.metadata
import inspect
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from router import Channel, Message, RetryableError, hookimpl, hookspecs
from router.channels import ChannelConfig, DeliveryOutcome
from router.cli import cli
from router.plugins import load_plugins
from router.testing import event, run_router


def hook_names() -> list[str]:
    return [
        name
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, "router_spec")
    ]


def test_every_hook_has_a_test() -> None:
    module = sys.modules[__name__]
    missing = [name for name in hook_names() if not hasattr(module, f"test_hook_{name}")]
    assert hook_names() and missing == []


# -- register_channels --------------------------------------------------------------


class PagerConfig(ChannelConfig):
    room: str


class Pager(Channel):
    """Records what it is asked to send; fails the first attempt of every message."""

    type = "pager"
    Config = PagerConfig
    config: PagerConfig
    sent: list[tuple[str, Message]] = []  # noqa: RUF012 (shared on purpose: the test reads it)

    async def send(self, message: Message) -> None:
        if message.attempt == 1:
            raise RetryableError("pager busy")
        Pager.sent.append((self.config.room, message))


class NotAChannel:
    type = "thing"


class ChannelProvider:
    @hookimpl
    def register_channels(self, register: Any) -> None:
        register(Pager)
        register(NotAChannel)


PAGER_RULES = """
    version: 1
    channels:
      on-call: {type: pager, room: ops}
    rules:
      - {name: all, events: ["*"], notify: [on-call]}
"""


async def test_hook_register_channels() -> None:
    Pager.sent.clear()
    provider = ChannelProvider()
    async with run_router(PAGER_RULES, plugins=[provider], allow_plugin_problems=True) as router:
        assert router.plugins.channel_types["pager"].cls is Pager
        assert router.plugins.channel_types["pager"].plugin == "ChannelProvider-0"
        [problem] = router.plugins.problems
        assert problem.plugin == "ChannelProvider-0"
        assert "which is not a router.Channel subclass" in problem.message
        await router.send(event("course_created", {"name": "Physics"}))
        [delivery] = await router.wait_until_settled()
    assert (delivery.state, delivery.attempts) == ("delivered", 2)
    [(room, message)] = Pager.sent
    assert room == "ops"
    assert (message.key, message.attempt, message.title) == (
        delivery.key,
        2,
        "Course created: Physics",
    )


# -- register_template_filters ------------------------------------------------------


class Filters:
    @hookimpl
    def register_template_filters(self, register: Any) -> None:
        register("initials", lambda name: "".join(p[:1] for p in str(name).split()).upper())


async def test_hook_register_template_filters() -> None:
    templates = {
        "default.j2": "{% block title %}{{ body.user | initials }}{% endblock %}"
        "{% block text %}{{ body.user | initials | lower }} done{% endblock %}"
    }
    rules = PAGER_RULES.replace("type: pager, room: ops", "type: webhook, url: ''")
    async with run_router(rules, plugins=[Filters()], templates=templates) as router:
        assert "initials" in router.plugins.filters
        await router.send(event("course_completed", {"user": "Isaac Newton"}))
        [delivery] = await router.wait_until_settled()
    assert (delivery.state, delivery.title, delivery.text) == ("logged", "IN", "in done")


async def test_hook_register_template_filters_refuses_a_taken_name() -> None:
    class Clash:
        @hookimpl
        def register_template_filters(self, register: Any) -> None:
            register("initials", str)

    plugins = load_plugins(extra=[Filters(), Clash()], entry_points=False)
    assert [(p.plugin, p.message) for p in plugins.problems] == [
        ("Clash-1", "filter 'initials' already exists")
    ]


# -- delivery_finished --------------------------------------------------------------


class Observer:
    def __init__(self) -> None:
        self.outcomes: list[DeliveryOutcome] = []

    @hookimpl
    def delivery_finished(self, outcome: DeliveryOutcome) -> None:
        self.outcomes.append(outcome)


class CrashingObserver:
    @hookimpl
    def delivery_finished(self, outcome: DeliveryOutcome) -> None:
        raise RuntimeError("observers may crash without harm")


async def test_hook_delivery_finished() -> None:
    observer = Observer()
    rules = """
        version: 1
        channels:
          on-call: {type: pager, room: ops}
          nowhere: {type: webhook, url: "http://127.0.0.1:9/x"}
          quiet: {type: webhook, url: ""}
        rules:
          - {name: all, events: ["*"], notify: [on-call, nowhere, quiet]}
    """
    plugins = [CrashingObserver(), ChannelProvider(), observer]
    async with run_router(
        rules, plugins=plugins, allow_plugin_problems=True, max_attempts=2
    ) as router:
        [event_id] = await router.send(event("course_created", {"name": "Physics"}))
        deliveries = await router.wait_until_settled()
    assert {d.channel: d.state for d in deliveries} == {
        "on-call": "delivered",
        "nowhere": "dead",
        "quiet": "logged",
    }
    seen = sorted((o.channel, o.attempt, o.status) for o in observer.outcomes)
    assert seen == [
        ("nowhere", 1, "retry"),
        ("nowhere", 2, "dead"),
        ("on-call", 1, "retry"),
        ("on-call", 2, "delivered"),
        ("quiet", 1, "logged"),
    ]
    by_status = {(o.channel, o.status): o for o in observer.outcomes}
    retry = by_status[("on-call", "retry")]
    assert (retry.event_id, retry.rule, retry.channel_type, retry.error) == (
        event_id,
        "all",
        "pager",
        "pager busy",
    )
    assert retry.retry_in is not None and retry.retry_in >= 0
    dead = by_status[("nowhere", "dead")]
    assert dead.error is not None and dead.error.startswith("gave up after 2 attempt(s): ")
    assert dead.retry_in is None
    assert by_status[("quiet", "logged")].error is None


async def test_hook_delivery_finished_sees_a_delivery_born_dead_as_attempt_0() -> None:
    observer = Observer()
    rules = """
        version: 1
        channels:
          quiet: {type: webhook, url: ""}
        rules:
          - {name: all, events: ["*"], notify: [quiet]}
    """
    templates = {"default.j2": "{{ body.no_such_field.deeper }}"}
    async with run_router(rules, plugins=[observer], templates=templates) as router:
        await router.send(event("course_created", {"name": "Physics"}))
        [delivery] = await router.wait_until_settled()
    assert (delivery.state, delivery.attempts) == ("dead", 0)
    [outcome] = observer.outcomes
    assert (outcome.attempt, outcome.status, outcome.error) == (0, "dead", delivery.last_error)
    assert outcome.error is not None and outcome.error.startswith("template default.j2 line 1")


# -- the third-party example plugin, found through its entry point ------------------

NOT_INSTALLED = (
    "examples/router-mattermost is not installed: run the README's test command"
    " (pip install -e '.[test]' -e examples/router-mattermost)"
)


def test_mattermost_is_found_through_its_entry_point() -> None:
    try:
        version = importlib.metadata.version("router-mattermost")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(NOT_INSTALLED)
    plugins = load_plugins()
    assert plugins.problems == []
    [info] = [i for i in plugins.infos if i.name == "mattermost"]
    assert (info.source, info.version, info.hooks) == (
        "entry point router_mattermost",
        version,
        ("register_channels",),
    )
    assert version == "0.1.0"
    assert plugins.channel_types["mattermost"].plugin == "mattermost"
    listing = CliRunner().invoke(cli, ["plugins"]).output
    assert "mattermost 0.1.0  (entry point router_mattermost)" in listing
    assert "channel types: mattermost" in listing


@pytest.fixture
async def fake_mattermost() -> AsyncIterator[tuple[str, list[Any]]]:
    posts: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        posts.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hooks/{key}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hooks/k3y0123456789", posts
    await runner.cleanup()


async def test_mattermost_delivers_through_the_real_router(
    fake_mattermost: tuple[str, list[Any]],
) -> None:
    url, posts = fake_mattermost
    rules = f"""
        version: 1
        channels:
          chat: {{type: mattermost, url: "{url}", username: canvas}}
        rules:
          - {{name: all, events: [course_created], notify: [chat]}}
    """
    # No plugins passed in: the channel type comes from the installed entry point.
    async with run_router(rules) as router:
        assert router.plugins.channel_types["mattermost"].plugin == "mattermost"
        await router.send(event("course_created", {"name": "Physics 101"}))
        [delivery] = await router.wait_until_settled()
    assert (delivery.state, delivery.attempts) == ("delivered", 1)
    [post] = posts
    assert post["username"] == "canvas"
    assert post["text"].startswith("**Course created: Physics 101**\n")
