"""A channel plugin that raises in any of its methods never stalls a delivery: the
delivery ends as a dead letter whose error names the plugin (and the method), and
``delivery_finished`` hears of it. ``close`` raising never stops a reload or shutdown."""

import asyncio
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest

from router import Channel, ChannelConfig, Message, hookimpl
from router.cli import startup_summary
from router.dispatch import open_channels
from router.http.app import create_app
from router.plugins import ChannelType, load_plugins
from router.rules import ChannelDef, ChannelOptions
from router.settings import Settings
from router.templates import builtin_templates
from router.testing import event, run_router

PLUGIN = "raising-plugin"


class RaisingConfig(ChannelConfig):
    fails_in: str


class RaisingChannel(Channel):
    """Works, except in the method its config names."""

    type = "raising"
    Config = RaisingConfig

    def _maybe_fail(self, method: str) -> None:
        if self.config.fails_in == method:  # type: ignore[attr-defined]
            raise ValueError(f"{method} broke")

    @classmethod
    def renders_message(cls, config: ChannelConfig) -> bool:
        if config.fails_in == "renders_message":  # type: ignore[attr-defined]
            raise ValueError("renders_message broke")
        return True

    def log_only_reason(self) -> str | None:
        self._maybe_fail("log_only_reason")
        return None

    async def open(self) -> None:
        self._maybe_fail("open")

    async def close(self) -> None:
        self._maybe_fail("close")

    async def send(self, message: Message) -> None:
        self._maybe_fail("send")


class RaisingPlugin:
    __name__ = PLUGIN

    @hookimpl
    def register_channels(self, register: Any) -> None:
        register(RaisingChannel)


def rules(fails_in: str) -> str:
    return f"""
        version: 1
        channels:
          flaky: {{type: raising, fails_in: {fails_in}}}
        rules:
          - {{name: all, events: ["*"], notify: [flaky]}}
    """


@pytest.mark.parametrize(
    ("method", "error", "attempts"),
    [
        # Born dead in routing: nothing is attempted.
        ("renders_message", "channel plugin 'raising-plugin' raised ValueError in"
         " renders_message(): renders_message broke", 0),
        # The channel is unusable: its deliveries fail, are retried, then dead-lettered.
        ("open", "gave up after 2 attempt(s): channel plugin 'raising-plugin' failed to open:"
         " ValueError: open broke", 2),
        ("log_only_reason", "gave up after 2 attempt(s): channel plugin 'raising-plugin'"
         " raised ValueError in log_only_reason(): log_only_reason broke", 2),
        ("send", "gave up after 2 attempt(s): channel plugin 'raising-plugin' raised"
         " ValueError: send broke", 2),
    ],
)  # fmt: skip
async def test_a_plugin_raising_ends_its_delivery_as_a_dead_letter_naming_it(
    method: str, error: str, attempts: int
) -> None:
    async with run_router(
        rules(method), plugins=[RaisingPlugin()], entry_points=False, max_attempts=2
    ) as router:
        await router.send(event("course_created", {"name": "Physics"}))
        [delivery] = await router.wait_until_settled()
        outcomes = router.outcomes
    assert (delivery.state, delivery.attempts, delivery.last_error) == ("dead", attempts, error)
    assert (outcomes[-1].status, outcomes[-1].attempt, outcomes[-1].error) == (
        "dead",
        attempts,
        error,
    )


async def test_a_plugin_raising_in_close_stops_neither_delivery_nor_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="router.dispatch")
    async with run_router(rules("close"), plugins=[RaisingPlugin()], entry_points=False) as router:
        await router.send(event("course_created", {"name": "Physics"}))
        [delivery] = await router.wait_until_settled()
    assert delivery.state == "delivered"
    [record] = [r for r in caplog.records if r.getMessage() == "channel failed to close"]
    assert (record.channel, record.plugin) == ("flaky", PLUGIN)  # type: ignore[attr-defined]


async def test_log_only_reason_is_asked_once_when_the_channel_opens() -> None:
    """The dispatcher and the status page read the decision; neither asks again."""
    asked = []

    class Counting(RaisingChannel):
        type = "counting"

        def log_only_reason(self) -> str | None:
            asked.append(self.name)
            return "no url configured"

    class CountingPlugin:
        __name__ = "counting-plugin"

        @hookimpl
        def register_channels(self, register: Any) -> None:
            register(Counting)

    text = rules("nothing").replace("type: raising", "type: counting")
    async with run_router(text, plugins=[CountingPlugin()], entry_points=False) as router:
        await router.send([event("course_created", {"name": n}) for n in ("A", "B", "C")])
        deliveries = await router.wait_until_settled()
        page = await router.client.get("/")
        assert "no url configured" in await page.text()
    assert [d.state for d in deliveries] == ["logged"] * 3
    assert asked == ["flaky"]


async def test_open_channels_closes_a_channel_whose_log_only_reason_raised() -> None:
    closed = asyncio.Event()

    class Closing(RaisingChannel):
        type = "closing"

        async def close(self) -> None:
            closed.set()

    definition = ChannelDef(
        "flaky",
        ChannelType("closing", Closing, PLUGIN),
        ChannelOptions(type="closing"),
        RaisingConfig(fails_in="log_only_reason"),
    )
    [runtime] = (await open_channels({"flaky": definition})).values()
    assert runtime.broken == (
        "channel plugin 'raising-plugin' raised ValueError in log_only_reason():"
        " log_only_reason broke"
    )
    assert closed.is_set()


def test_start_up_summary_names_the_error_type_of_a_raising_log_only_reason(
    tmp_path: Path,
) -> None:
    (tmp_path / "rules.yaml").write_text(textwrap.dedent(rules("log_only_reason")))
    settings = Settings(
        rules=tmp_path / "rules.yaml", templates=builtin_templates(), db=str(tmp_path / "r.db")
    )
    plugins = load_plugins(extra=[RaisingPlugin()], entry_points=False)
    summary = startup_summary(settings, create_app(settings, plugins=plugins))
    # The type only: the text of a plugin's exception may hold a secret.
    assert summary["log_only"] == "flaky (cannot tell: ValueError)"
