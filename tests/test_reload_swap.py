"""A rules reload without a server: ``swap`` puts new rules and channels in place,
``reload_rules`` validates first and keeps the running rules when the file is bad."""

import asyncio
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from router import Channel, ChannelConfig, Message, hookimpl
from router.dispatch import Dispatcher, RetryPolicy, close_channels, open_channels
from router.plugins import Plugins, load_plugins
from router.redact import Redactor
from router.reload import Live, ReloadStatus, reload_rules, swap
from router.routing import Router, build_router
from router.settings import Settings
from router.store import open_store
from router.templates import builtin_templates


class ProbeConfig(ChannelConfig):
    label: str = ""


class ProbeChannel(Channel):
    """Records when each instance opens and closes."""

    type = "probe"
    Config = ProbeConfig
    life: ClassVar[list[tuple[str, str, str]]] = []

    async def open(self) -> None:
        self.life.append(("open", self.name, self.config.label))  # type: ignore[attr-defined]

    async def close(self) -> None:
        self.life.append(("close", self.name, self.config.label))  # type: ignore[attr-defined]

    async def send(self, message: Message) -> None:
        pass


@hookimpl
def register_channels(register):  # type: ignore[no-untyped-def]
    register(ProbeChannel)


def rules(channels: dict[str, str]) -> str:
    lines = ["version: 1", "channels:"]
    lines += [f"  {name}: {{type: probe, label: {label}}}" for name, label in channels.items()]
    lines += ["rules:", f"  - {{name: all, events: ['*'], notify: [{', '.join(channels)}]}}"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def plugins() -> Plugins:
    ProbeChannel.life.clear()
    return load_plugins(extra=[sys.modules[__name__]], entry_points=False)


def build(tmp_path: Path, plugins: Plugins, text: str) -> Router:
    (tmp_path / "rules.yaml").write_text(text)
    settings = Settings(rules=tmp_path / "rules.yaml", templates=builtin_templates())
    return build_router(settings, plugins)


def idle_dispatcher(tmp_path: Path, plugins: Plugins) -> Dispatcher:
    """A dispatcher that is never run: a swap only replaces its channels."""
    store = open_store(str(tmp_path / "router.db"))
    return Dispatcher(store, plugins, RetryPolicy(), Redactor)


async def test_swap_keeps_unchanged_channels_and_closes_replaced_ones_when_idle(
    tmp_path: Path, plugins: Plugins
) -> None:
    first = build(tmp_path, plugins, rules({"same": "a", "changed": "a", "gone": "a"}))
    dispatcher = idle_dispatcher(tmp_path, plugins)
    dispatcher.channels = await open_channels(first.rules.channels)
    live = Live(first)
    kept = dispatcher.channels["same"]
    # An in-flight send of a channel the new rules change: it must finish first.
    sending = asyncio.get_running_loop().create_future()
    in_flight = asyncio.ensure_future(sending)
    dispatcher.channels["changed"].tasks.add(in_flight)
    ProbeChannel.life.clear()

    second = build(tmp_path, plugins, rules({"same": "a", "changed": "b", "new": "a"}))
    retiring = await swap(live, dispatcher, second)

    assert live.router is second
    assert dispatcher.channels["same"] is kept
    assert sorted(dispatcher.channels) == ["changed", "new", "same"]
    assert dispatcher.channels["changed"].definition.config == ProbeConfig(label="b")
    assert sorted(ProbeChannel.life) == [("open", "changed", "b"), ("open", "new", "a")]
    await asyncio.sleep(0)
    assert not retiring.done()  # waits for the replaced channel's send
    sending.set_result(None)
    await asyncio.wait_for(retiring, timeout=5)
    assert sorted(ProbeChannel.life)[:2] == [("close", "changed", "a"), ("close", "gone", "a")]
    await close_channels(dispatcher.channels)


async def test_reload_rules_keeps_the_running_rules_when_the_file_is_bad(
    tmp_path: Path, plugins: Plugins
) -> None:
    first = build(tmp_path, plugins, rules({"one": "a"}))
    dispatcher = idle_dispatcher(tmp_path, plugins)
    dispatcher.channels = await open_channels(first.rules.channels)
    live, status = Live(first), ReloadStatus()
    settings = Settings(rules=tmp_path / "rules.yaml", templates=builtin_templates())

    (tmp_path / "rules.yaml").write_text(rules({"one": "a"}).replace("type: probe", "type: prob"))
    await reload_rules(live, dispatcher, status, lambda: build_router(settings, plugins), "test")
    assert (status.ok, status.failed, status.succeeded, status.trigger) == (False, 1, 0, "test")
    assert "unknown channel type 'prob'" in status.errors[0]
    assert live.router is first

    (tmp_path / "rules.yaml").write_text(rules({"one": "a", "two": "a"}))
    await reload_rules(live, dispatcher, status, lambda: build_router(settings, plugins), "test")
    assert (status.ok, status.errors, status.failed, status.succeeded) == (True, [], 1, 1)
    assert live.router is not first and sorted(live.router.rules.channels) == ["one", "two"]
    assert sorted(dispatcher.channels) == ["one", "two"]
    await asyncio.gather(*status.retiring)
    await close_channels(dispatcher.channels)
