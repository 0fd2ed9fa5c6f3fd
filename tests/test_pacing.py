"""Ingest first: when background work gives way, and how much (router/pacing.py).
A fake clock drives the pacing itself: no sleeps, no timing. The workers' tests check
what they report as work."""

import asyncio
from typing import Any

import pytest

from router.http.keys import DISPATCHER, ROUTING, STORE
from router.pacing import CROWDED, CROWDED_FOR, LONGEST_PAUSE, PAUSE_SLICE, IngestPressure
from tests.conftest import ServiceFactory, StoreDB, example, webhook_rules
from tests.receiver import WebhookReceiver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def crowd(pressure: IngestPressure) -> None:
    """Bring the requests in flight to CROWDED, then answer them all (group commit
    answers in bunches)."""
    for _ in range(CROWDED):
        pressure.enter()
    for _ in range(CROWDED):
        pressure.leave()


def start_burst(clock: Clock, pressure: IngestPressure) -> None:
    """Crowd again and again, CROWDED_FOR / 2 apart, for 1.5 x CROWDED_FOR: a burst."""
    for _ in range(4):
        clock.now += CROWDED_FOR / 2
        crowd(pressure)


def flooded(share: float) -> tuple[Clock, IngestPressure]:
    """A burst under way, with CROWDED requests in flight."""
    clock = Clock()
    pressure = IngestPressure(share=share, clock=clock)
    start_burst(clock, pressure)
    for _ in range(CROWDED):
        pressure.enter()
    return clock, pressure


def test_fewer_requests_in_flight_is_never_crowded() -> None:
    clock = Clock()
    pressure = IngestPressure(clock=clock)
    for _ in range(100):
        for _ in range(CROWDED - 1):
            pressure.enter()
        clock.now += CROWDED_FOR / 4
        for _ in range(CROWDED - 1):
            pressure.leave()
    assert pressure.in_flight == 0
    assert not pressure.crowded


def test_crowding_again_and_again_for_a_while_is_a_burst_until_it_stops() -> None:
    clock = Clock()
    pressure = IngestPressure(clock=clock)
    crowd(pressure)
    assert not pressure.crowded  # one moment is no burst
    for _ in range(3):
        clock.now += CROWDED_FOR / 2
        crowd(pressure)
    assert pressure.crowded  # crowded again and again, for 1.5 x CROWDED_FOR
    clock.now += CROWDED_FOR / 2
    assert pressure.crowded  # between bunches of answers it still is
    clock.now += CROWDED_FOR
    assert not pressure.crowded  # no crowding for longer than CROWDED_FOR: over


def test_a_stall_shorter_than_the_window_is_not_a_burst() -> None:
    clock = Clock()
    pressure = IngestPressure(clock=clock)
    for _ in range(4):
        clock.now += CROWDED_FOR / 5
        crowd(pressure)
    assert not pressure.crowded  # 0.6 x CROWDED_FOR of crowding
    clock.now += 2 * CROWDED_FOR
    crowd(pressure)  # a new stall starts a new episode
    assert not pressure.crowded


def test_a_share_of_one_turns_pacing_off() -> None:
    clock = Clock()
    pressure = IngestPressure(share=1.0, clock=clock)
    for _ in range(10):
        clock.now += CROWDED_FOR / 2
        crowd(pressure)
    assert not pressure.crowded


@pytest.mark.parametrize(
    ("share", "worked", "pause"),
    [(0.25, 0.01, 0.03), (0.1, 0.001, 0.009), (0.1, 0.05, 0.45), (0.25, 1.0, LONGEST_PAUSE)],
)
async def test_background_work_pauses_for_its_share_only_while_crowded(
    monkeypatch: pytest.MonkeyPatch, share: float, worked: float, pause: float
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    clock = Clock()
    pressure = IngestPressure(share=share, clock=clock)
    await pressure.give_way(worked)
    assert slept == []  # not crowded: no pause at all
    start_burst(clock, pressure)
    await pressure.give_way(worked)
    # In slices, each a chance to see the burst end; the whole share, however long
    # the work took (a cap at one slice gave a batch of work most of the time).
    assert sum(slept) == pytest.approx(pause)
    assert all(0 < step <= PAUSE_SLICE for step in slept)


async def test_a_pause_after_which_ingest_has_caught_up_ends_the_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, pressure = flooded(share=0.25)
    ingest_keeps_up = False

    async def sleep(seconds: float) -> None:
        while ingest_keeps_up and pressure.in_flight:
            pressure.leave()
        clock.now += seconds

    monkeypatch.setattr(asyncio, "sleep", sleep)
    clock.now += 0.001
    await pressure.pause(0.01)
    assert pressure.crowded  # a saturating flood: still crowded after the pause
    ingest_keeps_up = True
    await pressure.pause(0.01)
    assert pressure.in_flight == 0
    assert not pressure.crowded  # ingest caught up: background work resumes


async def test_a_long_pause_ends_with_the_first_slice_in_which_ingest_kept_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, pressure = flooded(share=0.1)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:  # the flood stops during the third slice
            while pressure.in_flight:
                pressure.leave()
        clock.now += seconds

    monkeypatch.setattr(asyncio, "sleep", sleep)
    await pressure.pause(LONGEST_PAUSE)
    assert slept == [PAUSE_SLICE] * 3
    assert not pressure.crowded


async def test_a_flood_that_dips_below_crowded_between_commits_is_still_a_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, pressure = flooded(share=0.1)

    async def sleep(seconds: float) -> None:
        # CROWDED requests in flight for most of the pause, then a commit answers them.
        clock.now += seconds * 0.9
        while pressure.in_flight:
            pressure.leave()
        clock.now += seconds * 0.1

    monkeypatch.setattr(asyncio, "sleep", sleep)
    await pressure.pause(0.01)
    assert pressure.in_flight == 0
    assert pressure.crowded  # the count at the end of the pause is not the measure


async def test_a_pause_that_ends_in_a_stall_still_ends_the_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    pressure = IngestPressure(share=0.1, clock=clock)

    async def sleep(seconds: float) -> None:
        # Ingest kept up (one request at a time) until a stall piled up CROWDED more.
        pressure.enter()
        clock.now += seconds * 0.9
        for _ in range(CROWDED):
            pressure.enter()
        clock.now += seconds * 0.1

    monkeypatch.setattr(asyncio, "sleep", sleep)
    start_burst(clock, pressure)
    await pressure.pause(0.01)
    assert pressure.in_flight > CROWDED
    assert not pressure.crowded  # on average ingest kept up: the burst is over


class RecordingPressure(IngestPressure):
    """Paces nothing; records the work each give_way reports."""

    def __init__(self) -> None:
        super().__init__(share=1.0)
        self.worked: list[float] = []

    async def give_way(self, worked: float) -> None:
        self.worked.append(worked)


def slow_down(store: Any, method: str, seconds: float = 0.2) -> None:
    """Make one of the store's methods take ``seconds`` longer."""
    original = getattr(store, method)

    async def slowed(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(seconds)
        return await original(*args, **kwargs)

    setattr(store, method, slowed)


async def test_delivery_reports_the_time_its_attempts_took(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    receiver.delay = 0.2
    client = await service(webhook_rules(receiver.url))
    pressure = client.app[DISPATCHER].pressure = RecordingPressure()
    await client.post("/events", json=example("course_created"))
    await receiver.wait_for(1)
    for _ in range(100):
        if sum(pressure.worked) >= 0.2:
            break
        await asyncio.sleep(0.02)
    # One attempt of at least 0.2 s (the receiver's delay), reported once in all.
    assert 0.2 <= sum(pressure.worked) < 1.0, pressure.worked


async def test_delivery_reports_recording_its_outcomes_as_work(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    # The outcome is recorded after the channel's slot is freed, but it is still the
    # dispatcher's work: pacing must see it, or a flood of failing deliveries would
    # take more than its share.
    client = await service(webhook_rules(receiver.url))
    pressure = client.app[DISPATCHER].pressure = RecordingPressure()
    slow_down(client.app[STORE], "finish_delivery")
    await client.post("/events", json=example("course_created"))
    await receiver.wait_for(1)
    for _ in range(100):
        if store_db.dicts("SELECT state FROM deliveries") == [{"state": "delivered"}]:
            break
        await asyncio.sleep(0.02)
    for _ in range(100):  # the dispatcher reports at the start of its next round
        if sum(pressure.worked) >= 0.2:
            break
        await asyncio.sleep(0.02)
    assert 0.2 <= sum(pressure.worked) < 1.0, pressure.worked


async def test_routing_reports_its_store_round_trips_as_work(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    client = await service(webhook_rules(receiver.url))
    routing = client.app[ROUTING]
    pressure = routing.pressure = RecordingPressure()
    slow_down(client.app[STORE], "record_routing")
    await client.post("/events", json=example("course_created"))
    await receiver.wait_for(1)
    assert pressure.worked and pressure.worked[0] >= 0.2, pressure.worked
