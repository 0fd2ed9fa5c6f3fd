"""Plugin discovery and isolation: entry points, --plugins-dir, broken plugins, hooks."""

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from router import Channel, hookimpl
from router.channels import ChannelConfig, DeliveryOutcome, Message
from router.plugins import load_plugins
from router.templates import Templates
from tests.conftest import ServiceFactory, example, webhook_rules
from tests.receiver import WebhookReceiver


def write_plugin(directory: Path, name: str, source: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def test_builtin_webhook_is_found_through_the_entry_point() -> None:
    plugins = load_plugins()
    assert plugins.problems == []
    [info] = [i for i in plugins.infos if i.name == "webhook"]
    assert info.source == "entry point router_webhook"
    assert info.version == "0.1.0"
    assert info.hooks == ("register_channels",)
    assert plugins.channel_types["webhook"].plugin == "webhook"


def test_blocked_entry_point_is_not_loaded() -> None:
    plugins = load_plugins(blocked=["webhook"])
    assert "webhook" not in plugins.channel_types


def test_plugins_dir_and_every_kind_of_broken_plugin(tmp_path: Path) -> None:
    directory = tmp_path / "plugins"
    write_plugin(
        directory,
        "good",
        """
        from router import Channel, hookimpl
        class Pager(Channel):
            type = "pager"
            async def send(self, message):
                pass
        @hookimpl
        def register_channels(register):
            register(Pager)
        """,
    )
    write_plugin(directory, "syntax", "def broken(:\n")
    write_plugin(directory, "importer", "import no_such_module_here\n")
    write_plugin(
        directory,
        "dupe",
        """
        from router import Channel, hookimpl
        class AnotherWebhook(Channel):
            type = "webhook"
            async def send(self, message):
                pass
        @hookimpl
        def register_channels(register):
            register(AnotherWebhook)
        """,
    )
    write_plugin(
        directory,
        "notachannel",
        """
        from router import hookimpl
        class Thing:
            type = "thing"
        @hookimpl
        def register_channels(register):
            register(Thing)
        """,
    )
    write_plugin(
        directory,
        "syncsend",
        """
        from router import Channel, hookimpl
        class Sync(Channel):
            type = "sync"
            def send(self, message):
                pass
        @hookimpl
        def register_channels(register):
            register(Sync)
        """,
    )
    write_plugin(
        directory,
        "typo",
        """
        from router import hookimpl
        @hookimpl
        def register_channel(register):
            pass
        """,
    )
    write_plugin(
        directory,
        "raiser",
        """
        from router import hookimpl
        @hookimpl
        def register_channels(register):
            raise ValueError("cannot start")
        """,
    )
    plugins = load_plugins(plugins_dir=directory)
    problems = {p.plugin: p.message for p in plugins.problems}
    installed = set(load_plugins().channel_types)  # built-ins and any installed plugin
    assert set(plugins.channel_types) == installed | {"pager"}
    assert plugins.channel_types["pager"].plugin == "good"
    assert "SyntaxError" in problems["syntax"]
    assert "No module named 'no_such_module_here'" in problems["importer"]
    assert problems["dupe"] == "channel type 'webhook' is already registered by plugin 'webhook'"
    assert "not a router.Channel subclass" in problems["notachannel"]
    assert problems["syncsend"] == "Sync.send must be an async method"
    assert "register_channel" in problems["typo"]
    assert problems["raiser"] == "register_channels raised ValueError('cannot start')"
    assert str(plugins.problems[0]).startswith("plugin '")


def test_hook_register_template_filters(tmp_path: Path) -> None:
    class Filters:
        @hookimpl
        def register_template_filters(self, register: Any) -> None:
            register("shout", lambda text: str(text).upper() + "!")
            register("local_id", str)  # clashes with a built-in at template load time

    class Clash:
        @hookimpl
        def register_template_filters(self, register: Any) -> None:
            register("shout", str)

    plugins = load_plugins(extra=[Filters(), Clash()], entry_points=False)
    assert plugins.filters["shout"]("hi") == "HI!"
    assert [p.message for p in plugins.problems] == ["filter 'shout' already exists"]
    with pytest.raises(ValueError, match="'local_id' already exists"):
        Templates(tmp_path, plugins.filters)


async def test_hook_delivery_finished_and_register_channels_end_to_end(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    directory = tmp_path / "plugins"
    write_plugin(
        directory,
        "observer",
        """
        from router import hookimpl
        OUTCOMES = []
        @hookimpl
        def delivery_finished(outcome):
            OUTCOMES.append(outcome)
            raise RuntimeError("observers may crash without harm")
        """,
    )
    client = await service(webhook_rules(receiver.url), plugins_dir=directory)
    await client.post("/events", json=example("course_created"))
    await receiver.wait_for(1)
    outcomes: list[DeliveryOutcome] = sys.modules["router_plugin_observer"].OUTCOMES
    for _ in range(100):
        if outcomes:
            break
        await asyncio.sleep(0.02)
    [outcome] = outcomes
    assert (outcome.status, outcome.channel, outcome.channel_type, outcome.attempt) == (
        "delivered",
        "hook",
        "webhook",
        1,
    )
    assert outcome.key == receiver.received[0].webhook_id


def test_channel_config_model_is_validated_when_rules_load(tmp_path: Path) -> None:
    from router.config_source import ConfigErrors
    from router.rules import load_rules

    class StrictConfig(ChannelConfig):
        room: str

    class Strict(Channel):
        type = "strict"
        Config = StrictConfig

        async def send(self, message: Any) -> None:
            pass

    class Provider:
        @hookimpl
        def register_channels(self, register: Any) -> None:
            register(Strict)

    plugins = load_plugins(extra=[Provider()])
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            version: 1
            channels:
              ops: {type: strict, rooom: x}
              hook: {type: webhok, url: "http://x"}
            rules:
              - {name: r, events: [a], notify: [ops, hook, opz]}
            """
        )
    )
    known = ", ".join(sorted(plugins.channel_types))
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules, plugins.channel_types)
    assert [str(e) for e in caught.value.errors] == [
        f"{rules}:3:8: channels.ops: missing required key 'room'",
        f"{rules}:3:23: channels.ops.rooom: unknown key 'rooom' (did you mean 'room'?)",
        f"{rules}:4:16: channels.hook.type: unknown channel type 'webhok' (did you mean"
        f" 'webhook'?); known types: {known}",
        f"{rules}:6:48: rules[0].notify[2]: unknown channel 'opz' (did you mean 'ops'?)",
    ]


def test_registration_refuses_shadowed_host_keys_and_bad_default_rates(tmp_path: Path) -> None:
    write_plugin(
        tmp_path,
        "shadow",
        """
        from router import Channel, hookimpl
        from router.channels import ChannelConfig
        class ShadowConfig(ChannelConfig):
            timeout: float = 3
        class Shadow(Channel):
            type = "shadow"
            Config = ShadowConfig
            async def send(self, message):
                pass
        class Fast(Channel):
            type = "fast"
            default_rate_limit = "ten per second"
            async def send(self, message):
                pass
        @hookimpl
        def register_channels(register):
            register(Shadow)
            register(Fast)
        """,
    )
    plugins = load_plugins(plugins_dir=tmp_path)
    assert [p.message for p in plugins.problems] == [
        "Shadow.Config declares timeout, which the router reads itself"
        " (use self.timeout for the time limit)",
        "Fast.default_rate_limit 'ten per second': expects a rate such as 1/s, 20/min or 100/h",
    ]
    assert "shadow" not in plugins.channel_types and "fast" not in plugins.channel_types


def test_trace_logs_every_hook_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ROUTER_TRACE_PLUGINS", "1")
    caplog.set_level("INFO", logger="router.plugins")
    load_plugins()
    calls = {(r.plugin, r.hook) for r in caplog.records if r.getMessage() == "plugin hook call"}  # type: ignore[attr-defined]
    assert ("webhook", "register_channels") in calls
    assert ("slack", "register_channels") in calls


async def test_observers_hear_of_deliveries_that_die_at_render_time(
    service: ServiceFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "plugins"
    write_plugin(
        directory,
        "watcher",
        """
        from router import hookimpl
        OUTCOMES = []
        @hookimpl
        def delivery_finished(outcome):
            OUTCOMES.append(outcome)
        """,
    )
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "default.j2").write_text("{{ body.missing.field }}\n")
    client = await service(webhook_rules("", secret=None), plugins_dir=directory)
    await client.post("/events", json=example("course_created"))
    outcomes: list[DeliveryOutcome] = sys.modules["router_plugin_watcher"].OUTCOMES
    for _ in range(100):
        if outcomes:
            break
        await asyncio.sleep(0.02)
    [outcome] = outcomes
    assert (outcome.status, outcome.attempt, outcome.channel_type) == ("dead", 0, "webhook")
    assert outcome.error is not None and outcome.error.startswith("template default.j2 line 1")


def test_a_message_carries_the_event_as_json_and_parses_it_once() -> None:
    ids = {"key": "e1:r:c", "event_id": "e1", "event_name": "course_completed"}
    ids |= {"rule": "r", "channel": "c"}
    event = example("course_completed")
    stored = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    from_json = Message(**ids, event_json=stored)
    assert from_json.event == event
    assert from_json.event is from_json.event  # parsed on first use, then kept
    # Built by hand from a dict (plugin tests), the bytes are there too.
    from_dict = Message(**ids, event=event)
    assert orjson.loads(from_dict.event_json) == event
    assert from_dict.event == event
    assert "event_json" in from_dict.model_dump() and "event" not in from_dict.model_dump()
    assert Message(**ids).event == {}
    with pytest.raises(ValidationError, match="event or event_json, not both"):
        Message(**ids, event=event, event_json=stored)
