"""Issue 18, finding 2: a rules file cannot expand without bound ("billion laughs"),
nest without bound or be of any size; a hot reload of such a file is refused at
file:line and the service keeps serving its old rules."""

import asyncio
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from router import config_source
from router.config_source import ConfigErrors, load_yaml
from tests.conftest import ServiceFactory, example, webhook_rules
from tests.receiver import WebhookReceiver

ADMIN = {"Authorization": "Bearer admin-s3cret"}


def laughs(levels: int = 9) -> str:
    """The classic: nine aliases of nine aliases of ... of one string."""
    lines = ['lol0: &lol0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_an_alias_bomb_is_refused_at_the_line_where_it_goes_over() -> None:
    before = peak_rss_mb()
    with pytest.raises(ConfigErrors) as caught:
        load_yaml(laughs(), "rules.yaml")
    [error] = caught.value.errors
    assert (error.file, error.line) == ("rules.yaml", 7)  # 9**6 > 200000
    assert "more than 200000 values once aliases are expanded" in error.message
    assert peak_rss_mb() - before < 50


def test_ordinary_aliases_and_merges_still_load() -> None:
    text = "base: &base {a: 1, b: [1, 2]}\nx: *base\ny: {<<: *base, b: 3}\n"
    data, _ = load_yaml(text, "r.yaml")
    assert data == {
        "base": {"a": 1, "b": [1, 2]},
        "x": {"a": 1, "b": [1, 2]},
        "y": {"a": 1, "b": 3},
    }


def test_deep_nesting_is_refused() -> None:
    deep = "".join(f"{'  ' * i}k{i}:\n" for i in range(100)) + "  " * 100 + "end: 1\n"
    with pytest.raises(ConfigErrors) as caught:
        load_yaml(deep, "r.yaml")
    [error] = caught.value.errors
    assert error.line == 65  # the root mapping is level 1
    assert "nested more than 64 levels deep" in error.message
    with pytest.raises(ConfigErrors, match="maximum nesting depth"):
        load_yaml("[" * 100_000 + "]" * 100_000, "r.yaml")


def test_a_control_character_is_a_located_error_not_a_crash() -> None:
    # Found by tests/fuzz: the reader's error is not a MarkedYAMLError.
    with pytest.raises(ConfigErrors) as caught:
        load_yaml("version: 1\nrules: x\x02y\n", "r.yaml")
    assert str(caught.value) == "r.yaml:2:9: character U+0002 is not allowed in YAML"


def test_a_huge_file_is_refused_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_source, "MAX_YAML_BYTES", 1000)
    with pytest.raises(ConfigErrors, match="the file is 2003 bytes, over the limit of 1000"):
        load_yaml("x: " + "y" * 2000, "r.yaml")


def test_router_validate_refuses_the_bomb_quickly(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\n" + laughs())
    done = subprocess.run(
        [str(Path(sys.executable).parent / "router"), "validate", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"{rules}:8:" in done.stdout + done.stderr
    assert "aliases are expanded" in done.stdout + done.stderr


async def test_a_reload_of_a_bomb_is_refused_and_the_service_keeps_serving(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    client = await service(webhook_rules(receiver.url), admin_token="admin-s3cret", reload_poll=0)
    rules = tmp_path / "rules.yaml"
    good = rules.read_text()
    rules.write_text(good + laughs())
    resp = await client.post("/-/reload", headers=ADMIN)
    assert resp.status == 422
    [error] = (await resp.json())["errors"]
    assert error.startswith(f"{rules}:") and "aliases are expanded" in error
    assert (await client.get("/healthz")).status == 200
    await client.post("/events", json=example("course_created"))
    [got] = await receiver.wait_for(1)
    assert got.body["rule"] == "everything"


SLOW_PLUGIN = textwrap.dedent(
    """
    import time
    from pydantic import field_validator
    from router import Channel, hookimpl
    from router.channels import ChannelConfig


    class SlowConfig(ChannelConfig):
        seconds: float = 0

        @field_validator("seconds")
        @classmethod
        def _wait(cls, value):
            time.sleep(value)  # a plugin whose config check is slow (a DNS lookup, say)
            return value


    class SlowChannel(Channel):
        type = "slowcheck"
        Config = SlowConfig

        async def send(self, message):
            pass


    @hookimpl
    def register_channels(register):
        register(SlowChannel)
    """
)


async def test_a_reload_that_takes_too_long_is_abandoned(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "slowcheck.py").write_text(SLOW_PLUGIN)
    client = await service(
        webhook_rules(receiver.url),
        admin_token="admin-s3cret",
        reload_poll=0,
        plugins_dir=plugins,
        reload_timeout=0.5,
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        rules.read_text().replace(
            "channels:\n", "channels:\n  slow: {type: slowcheck, seconds: 3}\n"
        )
    )
    started = time.monotonic()
    resp = await client.post("/-/reload", headers=ADMIN)
    assert time.monotonic() - started < 2.5
    assert resp.status == 422
    [error] = (await resp.json())["errors"]
    assert "reload abandoned" in error and "reload_timeout (0.5s)" in error
    await client.post("/events", json=example("course_created"))
    [got] = await receiver.wait_for(1)
    assert got.body["rule"] == "everything"
    await asyncio.sleep(0)  # the abandoned thread finishes on its own
