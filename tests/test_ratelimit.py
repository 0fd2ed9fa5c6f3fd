"""Per-channel rate limits: the limiter on a fake clock, and the dispatcher using it."""

import asyncio
import time
from pathlib import Path

import pytest

from router.plugins import load_plugins
from router.ratelimit import RateLimiter, parse_rate
from router.rules import load_rules
from tests.conftest import ServiceFactory, webhook_rules
from tests.receiver import WebhookReceiver


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("1/s", 1.0), ("20/min", 1 / 3), ("100/h", 100 / 3600), ("5/10s", 0.5), ("2 / second", 2)],
)
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("bad", ["fast", "0/s", "1/fortnight", "-1/s"])
def test_parse_rate_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(bad)


async def test_concurrent_callers_are_spaced_in_arrival_order() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, clock=clock, sleep=clock.sleep)
    waits = await asyncio.gather(*(limiter.acquire() for _ in range(5)))
    assert waits == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


async def test_tokens_refill_with_time_up_to_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, burst=3, clock=clock, sleep=clock.sleep)
    assert [await limiter.acquire() for _ in range(4)] == pytest.approx([0, 0, 0, 1.0])
    clock.now += 10  # idle: refills to the burst, not beyond
    assert [await limiter.acquire() for _ in range(4)] == pytest.approx([0, 0, 0, 1.0])


def test_slack_defaults_to_one_per_second_and_rules_can_override(tmp_path: Path) -> None:
    from router.channels import Channel
    from router.dispatch import ChannelRuntime

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nchannels:\n"
        "  a: {type: slack, token: x, channel: '#a'}\n"
        "  b: {type: slack, token: x, channel: '#b', rate_limit: 20/min}\n"
        "  c: {type: slack, token: x, channel: '#c', rate_limit: none}\n"
        "  d: {type: webhook, url: 'http://x'}\n"
        "  e: {type: webhook, url: 'http://x', rate_limit: often}\n"
        "rules: []\n"
    )
    with pytest.raises(Exception, match=r"channels\.e\.rate_limit: expects a rate"):
        load_rules(rules, load_plugins().channel_types)
    rules.write_text(
        rules.read_text().replace("  e: {type: webhook, url: 'http://x', rate_limit: often}\n", "")
    )
    loaded = load_rules(rules, load_plugins().channel_types)
    limits = {}
    for name, definition in loaded.channels.items():
        runtime = ChannelRuntime(definition, Channel(name, definition.config))
        limits[name] = None if runtime.limiter is None else runtime.limiter.rate
    assert limits == {"a": 1.0, "b": pytest.approx(1 / 3), "c": None, "d": None}


async def test_dispatcher_spaces_sends_of_a_limited_channel(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    rules = webhook_rules(receiver.url).replace("timeout: 5", "timeout: 5\n    rate_limit: 10/s")
    client = await service(rules)
    started = time.monotonic()
    events = [{"metadata": {"event_name": "tick"}, "body": {"n": n}} for n in range(6)]
    await client.post("/events", json=events)
    await receiver.wait_for(6)
    # Six sends at 10/s need at least five intervals of 0.1 s, however fast the receiver.
    assert time.monotonic() - started >= 0.5
