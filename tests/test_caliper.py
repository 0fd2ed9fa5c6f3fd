"""Caliper 1.1: every canvas-lms example through ingest and routing, the names they get,
their fields matched at Caliper paths, their templates, and refused envelopes."""

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from router.caliper import CALIPER_NAMES, caliper_name
from router.cli import cli
from router.events import InvalidEvents, parse_body
from router.testing import RouterHarness, run_router
from tests.conftest import example

ROOT = Path(__file__).resolve().parent.parent
CALIPER = ROOT / "examples" / "caliper"
FILES = sorted(CALIPER.glob("*.json"))

LOG_ALL = """
    version: 1
    channels:
      log: {type: webhook, url: "", log_only: true}
    rules:
      - {name: everything, events: ["*"], notify: [log]}
"""


def envelope(name: str) -> dict[str, Any]:
    return orjson.loads((CALIPER / f"{name}.json").read_bytes())


async def settled(router: RouterHarness, count: int) -> list[Any]:
    """Wait (bounded) for ``count`` deliveries to exist, then for them to settle."""
    deadline = time.monotonic() + 15
    while len(router.deliveries()) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return await router.wait_until_settled()


def test_every_table_entry_has_its_example() -> None:
    names = set(CALIPER_NAMES.values()) | {"enrollment_state_created", "enrollment_state_updated"}
    assert {path.stem for path in FILES} == names


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_example_is_named_as_its_canvas_twin(path: Path) -> None:
    [event] = parse_body(path.read_bytes(), ndjson=False, max_items=10)
    assert event.name == path.stem
    item = envelope(path.stem)["data"][0]
    assert orjson.loads(event.payload) == item  # the Caliper event itself, unchanged


async def test_every_example_is_accepted_and_routed_over_http() -> None:
    async with run_router(LOG_ALL) as router:
        for path in FILES:
            async with router.client.post(
                "/events", data=path.read_bytes(), headers={"Content-Type": "application/json"}
            ) as resp:
                assert resp.status == 202, (path.name, await resp.text())
                [answer] = (await resp.json())["accepted"]
                assert not answer["duplicate"]
        deliveries = await settled(router, len(FILES))
    assert sorted(d.event_name for d in deliveries) == sorted(p.stem for p in FILES)
    assert {
        (d.event_name, d.state, d.last_error) for d in deliveries if d.state != "logged"
    } == set()


async def test_canvas_and_caliper_forms_fire_the_same_rule() -> None:
    rules = """
        version: 1
        channels:
          log: {type: webhook, url: "", log_only: true}
        rules:
          - {name: new-courses, events: [course_created], notify: [log]}
    """
    async with run_router(rules) as router:
        await router.send(example("course_created"))
        await router.send(envelope("course_created"))
        await router.send(envelope("logged_in"))  # another event: no rule
        deliveries = await settled(router, 2)
    assert [d.rule for d in deliveries] == ["new-courses", "new-courses"]
    texts = sorted(d.text for d in deliveries)
    assert any("Linear Algebra" in text for text in texts)


async def test_caliper_fields_match_at_their_paths() -> None:
    rules = """
        version: 1
        channels:
          log: {type: webhook, url: "", log_only: true}
        rules:
          - name: oxana-courses
            events: [course_updated]
            match:
              extensions.com.instructure.canvas.hostname: oxana.instructure.com
              object.type: CourseOffering
              object.extensions.com.instructure.canvas.workflow_state: available
              actor.id: {startswith: "urn:instructure:canvas:user:"}
            notify: [log]
          - name: other-host
            events: [course_updated]
            match: {extensions.com.instructure.canvas.hostname: elsewhere.instructure.com}
            notify: [log]
    """
    async with run_router(rules) as router:
        await router.send(envelope("course_updated"))
        [delivery] = await settled(router, 1)
    assert delivery.rule == "oxana-courses"


@pytest.mark.parametrize(
    ("name", "title", "lines"),
    [
        (
            "course_created",
            "Course created: Linear Algebra",
            [
                "Course Linear Algebra (course 56) was created",
                "by oxana@example.com",
                "Course: https://oxana.instructure.com/courses/56",
            ],
        ),
        (
            "course_updated",
            "Course updated: Linear Algebra",
            ["was updated", "state: available", "https://oxana.instructure.com/courses/56"],
        ),
        (
            "syllabus_updated",
            "Syllabus updated in course 565",
            [
                "The syllabus of course 565 was updated by oxana@example.com",
                "Syllabus: https://oxana.instructure.com/courses/565/assignments/syllabus",
            ],
        ),
    ],
)
async def test_default_templates_give_caliper_course_events_a_useful_message(
    name: str, title: str, lines: list[str]
) -> None:
    async with run_router(LOG_ALL) as router:
        await router.send(envelope(name))
        [delivery] = await settled(router, 1)
    assert delivery.title == title
    for line in lines:
        assert line in delivery.text, delivery.text


def test_unknown_caliper_event_gets_a_name_of_its_own() -> None:
    item = {"type": "ToolUseEvent", "action": "Used", "object": {"type": "SoftwareApplication"}}
    assert caliper_name(item) == "caliper:ToolUseEvent.Used"
    body = {"sensor": "x", "sendTime": "now", "dataVersion": "v1p1", "data": [item]}
    [event] = parse_body(json.dumps(body).encode(), ndjson=False, max_items=10)
    assert event.name == "caliper:ToolUseEvent.Used"


async def test_partly_invalid_envelope_is_refused_whole_naming_each_bad_item() -> None:
    good = envelope("logged_in")["data"][0]
    body = {
        "sensor": "http://oxana.instructure.com/",
        "sendTime": "2019-11-16T02:09:11.771Z",
        "dataVersion": "http://purl.imsglobal.org/ctx/caliper/v1p1",
        "data": [good, {"type": "Event"}, "not an event", {"type": "", "action": "Created"}],
    }
    async with run_router(LOG_ALL) as router:
        async with router.client.post("/events", json=body) as resp:
            assert resp.status == 422
            errors = (await resp.json())["errors"]
        assert router.deliveries() == []
        async with router.client.get("/metrics") as resp:
            assert "router_events_accepted_total 0.0" in await resp.text()
    assert [(e["index"], e["field"]) for e in errors] == [
        (0, "data[1].action"),
        (0, "data[2]"),
        (0, "data[3].type"),
    ]
    with pytest.raises(InvalidEvents):
        parse_body(json.dumps({**body, "data": []}).encode(), ndjson=False, max_items=10)


async def test_envelopes_in_ndjson_and_batches_each_item_its_own_event() -> None:
    two = envelope("course_created")
    two["data"].append(envelope("course_updated")["data"][0])
    lines = b"\n".join(orjson.dumps(e) for e in (two, envelope("logged_in")))
    async with run_router(LOG_ALL) as router:
        async with router.client.post(
            "/events", data=lines, headers={"Content-Type": "application/x-ndjson"}
        ) as resp:
            assert resp.status == 202
            accepted = (await resp.json())["accepted"]
        assert len({a["id"] for a in accepted}) == 3
        async with router.client.post(
            "/events", data=lines, headers={"Content-Type": "application/x-ndjson"}
        ) as resp:  # the same events again: each a duplicate by its canonical id
            assert [a["duplicate"] for a in (await resp.json())["accepted"]] == [True] * 3
        deliveries = await settled(router, 3)
    assert sorted(d.event_name for d in deliveries) == [
        "course_created",
        "course_updated",
        "logged_in",
    ]


def test_router_test_accepts_caliper_files(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\n"
        "channels:\n  log: {type: webhook, url: ''}\n"
        "rules:\n  - {name: syllabus, events: [syllabus_updated], notify: [log]}\n"
    )
    result = CliRunner().invoke(
        cli, ["test", str(rules), str(CALIPER / "syllabus_updated.json")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "syllabus_updated" in result.output
    assert "+ syllabus -> log" in result.output
    assert "title: Syllabus updated in course 565" in result.output
