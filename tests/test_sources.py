"""The source plugin hook: registration, validation in the rules file, supervision
(a failing source never stops the others), reloads that restart only what changed,
and the gate's back-pressure when the store fails."""

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from click.testing import CliRunner

from router import IngestUnavailable, Source, SourceConfig, SourceHost, hookimpl
from router.cli import cli
from router.config_source import ConfigErrors
from router.events import parse_body
from router.http.keys import METRICS, STORE
from router.http.reload import reload_now
from router.plugins import load_plugins
from router.rules import load_rules
from router.source_manager import IngestGate
from router.testing import RouterHarness, event, run_router


class TickConfig(SourceConfig):
    label: str = "tick"
    count: int = 1


class TickSource(Source):
    """Submits ``count`` events once, then idles; records each start."""

    type = "tick"
    Config = TickConfig
    started: ClassVar[list[str]] = []

    async def run(self, host: SourceHost) -> None:
        config = self.config
        assert isinstance(config, TickConfig)
        TickSource.started.append(self.name)
        host.set_state("running")
        events = [
            event("course_created", {"name": f"{config.label} {n}"}) for n in range(config.count)
        ]
        await host.submit(host.parse(orjson.dumps(events)))
        await asyncio.Event().wait()


class BrokenAtStart(Source):
    type = "broken"

    def __init__(self, name: str, config: SourceConfig) -> None:
        raise RuntimeError("no such device")

    async def run(self, host: SourceHost) -> None:  # pragma: no cover - never started
        raise AssertionError


class CrashingSource(Source):
    type = "crashing"
    runs: ClassVar[int] = 0

    async def run(self, host: SourceHost) -> None:
        CrashingSource.runs += 1
        raise ValueError("the upstream answered nonsense")


class Plugin:
    __name__ = "test_sources_plugin"

    @hookimpl
    def register_sources(self, register: Any) -> None:
        register(TickSource)
        register(BrokenAtStart)
        register(CrashingSource)


def rules(sources: str) -> str:
    return f"""
        version: 1
        sources:
{sources}
        channels:
          log: {{type: webhook, url: "", log_only: true}}
        rules:
          - {{name: everything, events: ["*"], notify: [log]}}
    """


async def readyz_sources(router: RouterHarness) -> dict[str, Any]:
    async with router.client.get("/readyz") as resp:
        assert resp.status == 200
        return (await resp.json())["sources"]


async def until(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture(autouse=True)
def _reset() -> None:
    TickSource.started.clear()
    CrashingSource.runs = 0


async def test_a_source_that_fails_never_stops_the_others(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    text = rules(
        "          good: {type: tick, count: 2}\n"
        "          bad: {type: broken}\n"
        "          crashy: {type: crashing}\n"
    )
    async with run_router(text, plugins=[Plugin()]) as router:

        async def two_delivered() -> bool:
            return len(router.deliveries()) == 2

        await until(two_delivered)

        async def crashed_twice() -> bool:
            return CrashingSource.runs >= 2

        await until(crashed_twice, timeout=10)
        status = await readyz_sources(router)
        await router.send(event("course_updated", {"name": "still open"}))  # POST /events
        await router.wait_until_settled()
        async with router.client.get("/") as resp:
            page = await resp.text()
    assert status["good"]["state"] == "running"
    assert status["bad"]["state"] == "failed"
    assert "RuntimeError: no such device" in status["bad"]["detail"]
    assert status["crashy"]["state"] == "failed"
    assert status["crashy"]["restarts"] >= 1
    assert "the upstream answered nonsense" in status["crashy"]["detail"]
    assert "no such device" in page and "<code>crashy</code>" in page
    logged = caplog.text
    assert "source 'bad' (plugin 'test_sources_plugin') failed to start" in logged
    assert "source 'crashy' (plugin 'test_sources_plugin') failed" in logged


async def test_a_reload_restarts_only_the_sources_that_changed(tmp_path: Path) -> None:
    before = rules(
        "          same: {type: tick, label: same}\n"
        "          changed: {type: tick, label: old}\n"
        "          removed: {type: tick, label: gone}\n"
    )
    after = rules(
        "          same: {type: tick, label: same}\n"
        "          changed: {type: tick, label: new}\n"
        "          added: {type: tick, label: added}\n"
    )
    async with run_router(before, plugins=[Plugin()], directory=tmp_path) as router:

        async def three_started() -> bool:
            return len(TickSource.started) == 3

        await until(three_started)
        (tmp_path / "rules.yaml").write_text(after.replace("\n        ", "\n"))
        status = await reload_now(router.app, "test")
        assert status.ok, status.errors

        async def five_started() -> bool:
            return len(TickSource.started) == 5

        await until(five_started)
        names = set(await readyz_sources(router))
    assert sorted(TickSource.started[3:]) == ["added", "changed"]
    assert names == {"same", "changed", "added"}


def test_source_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\n"
        "sources:\n"
        "  a: {type: tick, count: many}\n"
        "  b: {type: tik}\n"
        "  c: {label: x}\n"
        "  d: {type: tick, colour: blue}\n"
    )
    plugins = load_plugins(extra=[Plugin()])
    with pytest.raises(ConfigErrors) as info:
        load_rules(path, plugins.channel_types, source_types=plugins.source_types)
    text = "\n".join(str(e) for e in info.value.errors)
    assert ":3:" in text and "sources.a.count" in text
    assert "unknown source type 'tik' (did you mean 'tick'?)" in text
    assert "sources.c: missing key 'type'" in text
    assert "sources.d.colour" in text


def test_registration_problems_name_the_plugin() -> None:
    class NotASource:
        type = "nope"

    class NoRun(Source):
        type = "norun"

    class Bad:
        __name__ = "bad_sources"

        @hookimpl
        def register_sources(self, register: Any) -> None:
            register(NotASource)
            register(NoRun)
            register(TickSource)
            register(TickSource)

    plugins = load_plugins(extra=[Bad()], entry_points=False)
    problems = [str(p) for p in plugins.problems]
    assert any("not a router.Source subclass" in p for p in problems)
    assert any("NoRun.run must be an async method" in p for p in problems)
    assert any("source type 'tick' is already registered" in p for p in problems)
    assert list(plugins.source_types) == ["tick"]


def test_router_plugins_lists_source_types() -> None:
    result = CliRunner().invoke(cli, ["plugins"])
    assert "sqs 0.1.0" in result.output
    assert "    source types: sqs" in result.output


async def test_the_gate_holds_sources_back_while_the_store_fails() -> None:
    async with run_router(rules("          {}\n")) as router:
        store = router.app[STORE]
        gate = IngestGate(
            store,
            dedupe_window=60,
            wake=lambda: None,
            draining=asyncio.Event(),
            metrics=router.app[METRICS],
        )
        events = parse_body(orjson.dumps(event("course_created")), ndjson=False, max_items=1)
        [answer] = await gate.submit("t", events)
        assert not answer.duplicate
        await store.close()  # the store goes away under the source
        with pytest.raises(IngestUnavailable) as info:
            await gate.submit("t", events)
        assert "the store failed" in str(info.value)
        assert gate.unavailable() is not None  # every source holds back for a while
        with pytest.raises(IngestUnavailable):
            await gate.submit("t", events)
        await store.open()
