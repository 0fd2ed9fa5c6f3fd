"""Quiet hours: windows (crossing midnight, in another time zone, dates), their
validation, and deliveries held then released, or dropped, on a store of each backend
with an injected clock (a window opens and closes during the test, without waiting)."""

import asyncio
import datetime as dt
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from click.testing import CliRunner

from router.cli import cli
from router.config_source import ConfigErrors
from router.plugins import load_plugins
from router.quiet_hours import HORIZON_DAYS, Mutes, MuteWindow, compile_window
from router.routing import Router, RoutingWorker, build_router
from router.settings import Settings
from router.store import Store, open_store
from tests.conftest import ROOT, ServiceFactory, example

NY = ZoneInfo("America/New_York")


def ny(*parts: int) -> float:
    """A wall-clock time in New York as unix seconds."""
    return dt.datetime(*parts, tzinfo=NY).timestamp()


def window(**spec: object) -> Mutes:
    return Mutes([compile_window(MuteWindow.model_validate(spec), None)])


# -- windows ---------------------------------------------------------------------------------


def test_a_night_crossing_midnight_in_another_time_zone() -> None:
    # Friday nights only, 22:00 to 07:00 New York time. 2026-12-04 is a Friday.
    nights = window(days=["fri"], times="22:00-07:00", time_zone="America/New_York")
    assert nights.until(ny(2026, 12, 4, 21, 59)) is None
    assert nights.until(ny(2026, 12, 4, 22, 0)) == ny(2026, 12, 5, 7, 0)
    assert nights.until(ny(2026, 12, 5, 3, 0)) == ny(2026, 12, 5, 7, 0)  # Friday's night
    assert nights.until(ny(2026, 12, 5, 7, 0)) is None
    assert nights.until(ny(2026, 12, 4, 3, 0)) is None  # Thursday's night: not muted
    assert nights.until(ny(2026, 12, 5, 23, 0)) is None  # Saturday evening
    # In UTC the same window is 03:00-12:00 on Saturday (EST is UTC-5).
    utc = dt.datetime(2026, 12, 5, 3, 30, tzinfo=dt.UTC).timestamp()
    assert nights.until(utc) == dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC).timestamp()


def test_dates_days_and_windows_that_join() -> None:
    holidays = window(dates=["2026-12-21/2027-01-04", "2027-02-14"], time_zone="America/New_York")
    assert holidays.until(ny(2026, 12, 20, 23, 59)) is None
    assert holidays.until(ny(2026, 12, 25, 12, 0)) == ny(2027, 1, 5, 0, 0)
    assert holidays.until(ny(2027, 2, 14, 8, 0)) == ny(2027, 2, 15, 0, 0)
    weekend = window(days=["sat-sun"])
    saturday = dt.datetime(2026, 12, 5, 10, tzinfo=dt.UTC).timestamp()
    assert weekend.until(saturday) == dt.datetime(2026, 12, 7, tzinfo=dt.UTC).timestamp()
    # Evenings and nights that touch make one quiet period.
    both = Mutes(
        [
            compile_window(MuteWindow(times="18:00-22:00"), "UTC"),
            compile_window(MuteWindow(times="22:00-07:00"), "UTC"),
        ]
    )
    evening = dt.datetime(2026, 12, 7, 19, tzinfo=dt.UTC).timestamp()
    assert both.until(evening) == dt.datetime(2026, 12, 8, 7, tzinfo=dt.UTC).timestamp()
    # A window that never ends (every day) is quiet up to a horizon, not forever.
    always = window(days=["mon-sun"])
    assert always.until(evening) == evening + HORIZON_DAYS * 86400


RULES = """\
version: 1
defaults:
  time_zone: America/New_York
  windows:
    nights: {times: "22:00-07:00"}
    break: {dates: ["2026-12-21/2027-01-04"]}
channels:
  hook: {type: webhook, url: "http://127.0.0.1:9/x"}
  pager: {type: webhook, url: "http://127.0.0.1:9/y", mute: [nights], during_mute: drop}
rules:
  - name: sections
    events: [course_section_created]
    notify: [hook, pager]
  - name: completed
    events: [course_completed]
    notify: [hook]
    mute: [break, {days: [sat, sun]}]
  - name: digested
    events: [course_progress]
    notify: [hook]
    mute: [nights]
    digest: {group_by: [body.course.id], wait: 10m}
"""


def make_router(tmp_path: Path, text: str) -> Router:
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    settings = Settings(rules=rules, templates=ROOT / "templates", db=str(tmp_path / "x.db"))
    return build_router(settings, load_plugins())


def test_validate_names_every_bad_window(tmp_path: Path) -> None:
    bad = RULES.replace('times: "22:00-07:00"}', 'times: "22:00-31:00"}').replace(
        "mute: [break,", "mute: [brake,"
    )
    bad = bad.replace("{days: [sat, sun]}", "{days: [sat, sunday, caturday], time_zone: Mars/Base}")
    with pytest.raises(ConfigErrors) as caught:
        make_router(tmp_path, bad)
    text = "\n".join(str(e) for e in caught.value.errors)
    assert "rules.yaml:5:" in text and "defaults.windows.nights.times" in text
    assert "hours run 00-23" in text
    assert "unknown mute window 'brake' (did you mean 'break'?)" in text
    assert "unknown day 'caturday'" in text
    assert "unknown time zone 'Mars/Base'" in text
    assert "'nights'" not in text  # its error is reported once, where it is declared
    make_router(tmp_path, RULES)  # the good file loads


# -- held, released, dropped -----------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    store = open_store(db_url)
    await store.open()
    yield store
    await store.close()


def event(name: str, request_id: str) -> tuple[str, str, bytes]:
    payload = example(name)
    payload["metadata"]["request_id"] = request_id
    return (f"{name}-{request_id}", name, orjson.dumps(payload))


async def test_a_night_opens_and_closes_holding_then_dropping(tmp_path: Path, store: Store) -> None:
    router = make_router(tmp_path, RULES)
    clock = Clock(ny(2026, 12, 7, 21, 59))  # a Monday, a minute before the night
    worker = RoutingWorker(store, lambda: router, lambda: None, clock=clock)

    async def route(request_id: str) -> None:
        await store.accept_events(
            [event("course_section_created", request_id)], dedupe_window=60, now=clock.now
        )
        assert await worker.route_once() == 1

    await route("before")
    clock.now = ny(2026, 12, 7, 23, 30)  # the night opened
    await route("during")
    by_state = {}
    for record in await store.list_deliveries(limit=10):
        by_state.setdefault(record.state, []).append((record.event_id[-6:], record.channel))
    # Before: both channels. During: the pager drops (muted), the hook is untouched.
    assert sorted(by_state.pop("pending")) == [
        ("before", "hook"),
        ("before", "pager"),
        ("during", "hook"),
    ]
    assert by_state == {"muted": [("during", "pager")]}
    assert worker.metrics.by_label("router_muted_total", "rule", "outcome") == {
        ("sections", "dropped"): 1.0
    }


async def test_held_deliveries_are_released_when_the_window_ends(
    tmp_path: Path, db_url: str
) -> None:
    hold = RULES.replace("during_mute: drop", "during_mute: hold")
    router = make_router(tmp_path, hold)
    clock = Clock(ny(2026, 12, 7, 23, 0))
    store = open_store(db_url)
    await store.open()
    worker = RoutingWorker(store, lambda: router, lambda: None, clock=clock)
    await store.accept_events(
        [event("course_section_created", "night")], dedupe_window=60, now=clock.now
    )
    await worker.route_once()
    [held] = await store.list_deliveries(state="held")
    assert (held.channel, held.next_attempt_at) == ("pager", pytest.approx(ny(2026, 12, 8, 7, 0)))
    await store.close()
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["deliveries", "--state", "held", "--db", db_url]
    )
    assert "held until 2026-12-08 12:00:00 UTC (quiet hours)" in result.output  # 07:00 in NY

    store = open_store(db_url)  # held deliveries survive a restart
    await store.open()
    try:
        worker = RoutingWorker(store, lambda: router, lambda: None, clock=clock)
        clock.now = ny(2026, 12, 8, 6, 59)
        assert await worker.release_held() == 0
        assert await store.claim_deliveries("pager", 10, lease=30, now=clock.now) == []
        clock.now = ny(2026, 12, 8, 7, 0)  # the night is over
        assert await worker.release_held() == 1
        [job] = await store.claim_deliveries("pager", 10, lease=30, now=clock.now)
        assert job.key == held.key
    finally:
        await store.close()


async def test_a_digest_rule_holds_its_events_for_one_digest_on_release(
    tmp_path: Path, store: Store
) -> None:
    router = make_router(tmp_path, RULES)
    clock = Clock(ny(2026, 12, 7, 23, 0))
    worker = RoutingWorker(store, lambda: router, lambda: None, clock=clock)
    for n in range(3):
        clock.now += 600
        await store.accept_events(
            [event("course_progress", f"p{n}")], dedupe_window=60, now=clock.now
        )
        await worker.route_once()
        assert await worker.flush_digests() == 0  # its wait is over, but the night is not
    clock.now = ny(2026, 12, 8, 7, 0)
    assert await worker.flush_digests() == 1
    [digest] = await store.list_deliveries(state="pending")
    assert digest.key.startswith("digest-") and digest.rule == "digested"


async def test_router_test_says_when_a_rule_would_be_muted(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    payload = example("course_section_created")
    payload["metadata"]["event_time"] = "2026-12-08T04:30:00Z"  # 23:30 in New York
    path = tmp_path / "night.json"
    path.write_bytes(orjson.dumps(payload))
    result = CliRunner().invoke(
        cli, ["test", str(rules), str(path), "--templates", str(ROOT / "templates")]
    )
    assert result.exit_code == 0, result.output
    assert "+ sections -> pager" in result.output
    assert "muted at the event's time: dropped" in result.output
    hold = tmp_path / "hold.yaml"
    hold.write_text(RULES.replace("during_mute: drop", "during_mute: hold"))
    result = CliRunner().invoke(
        cli, ["test", str(hold), str(path), "--templates", str(ROOT / "templates"), "--json"]
    )
    [report] = orjson.loads(result.output)
    [pager] = [m for m in report["messages"] if m["channel"] == "pager"]
    assert pager["muted"] == {"during_mute": "hold", "until": ny(2026, 12, 8, 7, 0)}


async def test_the_status_page_shows_held_deliveries_with_their_release_time(
    service: ServiceFactory,
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    tomorrow = today + dt.timedelta(days=1)
    client = await service(
        textwrap.dedent(
            f"""\
            version: 1
            channels:
              hook: {{type: webhook, url: "http://127.0.0.1:9/x", log_only: true}}
            rules:
              - name: sections
                events: [course_section_created]
                notify: [hook]
                mute: [{{dates: ["{today}/{tomorrow}"], time_zone: UTC}}]
            """
        )
    )
    await client.post("/events", json=example("course_section_created"))
    release = dt.datetime.combine(tomorrow + dt.timedelta(days=1), dt.time(), dt.UTC)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        html = await (await client.get("/")).text()
        if 'id="held-' in html:
            break
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    row = html[html.index('id="held-') :]
    row = row[: row.index("</tr>")]
    assert "sections" in row and f"{release:%Y-%m-%d %H:%M:%S} UTC" in row
