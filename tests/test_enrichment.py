"""Enrichment and per-person recipients through the real router (both stores), against
the fake Canvas API on 127.0.0.1 and a verifying webhook receiver."""

import copy
import shutil
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.config_source import ConfigErrors
from router.plugins import load_plugins
from router.rules import load_rules
from tests.canvas_fake import TOKEN, FakeCanvas
from tests.conftest import ROOT, ServiceFactory, StoreDB, example
from tests.receiver import SECRET, WebhookReceiver
from tests.test_delivery import deliveries, until

ADMIN = "admin-token-for-tests"
SYLLABUS_TEMPLATE = """\
{% block title %}Syllabus changed: {{ course.name if course else 'course ' ~ body.course_id }}\
{% endblock %}
{% block text %}
Teachers: {{ (teachers or []) | map(attribute='name') | join(', ') }}
{% if recipient is defined %}Dear {{ recipient.name }} <{{ recipient.email }}>{% endif %}
{% endblock %}
"""


@pytest.fixture(autouse=True)
def templates(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "default.j2").write_text("{{ event_name }}\n")
    (directory / "syllabus_updated.j2").write_text(SYLLABUS_TEMPLATE)
    return directory


@pytest.fixture
async def canvas() -> AsyncIterator[FakeCanvas]:
    fake = FakeCanvas(max_per_page=10)
    fake.courses["565"] = {"id": 565, "name": "Computer Science I", "workflow_state": "available"}
    for n in range(1, 13):
        fake.add_user(str(100 + n), f"Teacher {n}", f"t{n}@example.edu")
        fake.enroll("565", str(100 + n), "teacher")
    await fake.start()
    yield fake
    await fake.close()


def rules(canvas: FakeCanvas, hook: str, rule: str, *, canvas_extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        canvas:
          url: "{canvas.url}"
          token: "{TOKEN}"
          cache: 1h
          {canvas_extra}
        channels:
          hook: {{type: webhook, url: "{hook}", secret: "{SECRET}", timeout: 5}}
        rules:
        """
    ) + textwrap.indent(textwrap.dedent(rule), "  ")


SYLLABUS_RULE = """\
- name: syllabus
  events: [syllabus_updated]
  enrich: [course, teachers]
  match: {course.name: {startswith: "Computer"}}
  if: "course.workflow_state == 'available' and teachers | length > 10"
  notify: [hook]
- name: never
  events: [syllabus_updated]
  enrich: [course]
  match: {course.name: "Biology"}
  notify: [hook]
"""


def syllabus(n: int = 0) -> dict[str, Any]:
    event = copy.deepcopy(example("syllabus_updated"))
    event["body"]["syllabus_body"] += f"<p>edit {n}</p>"
    return event


async def test_names_from_canvas_reach_match_if_and_templates(
    service: ServiceFactory, canvas: FakeCanvas, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    client = await service(rules(canvas, receiver.url, SYLLABUS_RULE))
    resp = await client.post("/events", json=syllabus())
    assert resp.status == 202
    [got] = await receiver.wait_for(1)
    assert got.body["title"] == "Syllabus changed: Computer Science I"
    assert "Teacher 1, Teacher 2" in got.body["text"] and "Teacher 12" in got.body["text"]
    [row] = deliveries(store_db)
    assert row["rule"] == "syllabus"
    stored = orjson.loads(row["message"])
    assert stored["canvas"]["course"]["name"] == "Computer Science I"
    assert len(stored["canvas"]["teachers"]) == 12


async def test_a_burst_about_one_course_costs_one_request_each(
    service: ServiceFactory, canvas: FakeCanvas, receiver: WebhookReceiver
) -> None:
    client = await service(rules(canvas, receiver.url, SYLLABUS_RULE))
    for n in range(6):
        assert (await client.post("/events", json=syllabus(n))).status == 202
    await receiver.wait_for(6)
    assert canvas.hits["/api/v1/courses/21070000000000565"] == 1
    assert canvas.hits["/api/v1/courses/21070000000000565/users"] == 2  # two pages, once
    metrics = await (await client.get("/metrics")).text()
    assert "router_canvas_api_cache_hits_total" in metrics


async def test_an_outage_holds_the_event_and_loses_nothing(
    service: ServiceFactory, canvas: FakeCanvas, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    canvas.fail_next = 3  # 503s: the first rounds of routing find Canvas down
    client = await service(rules(canvas, receiver.url, SYLLABUS_RULE))
    await client.post("/events", json=syllabus())
    await until(lambda: canvas.fail_next == 0, timeout=15)
    [got] = await receiver.wait_for(1, timeout=20)
    # Nothing went out half-filled: the one message has the names.
    assert got.body["title"] == "Syllabus changed: Computer Science I"
    assert len(deliveries(store_db)) == 1
    metrics = await (await client.get("/metrics")).text()
    assert "router_canvas_api_events_held_total 0.0" not in metrics
    assert 'router_canvas_api_requests_total{outcome="error"} 3.0' in metrics


async def test_throttling_holds_the_event_until_canvas_lets_it_through(
    service: ServiceFactory, canvas: FakeCanvas, receiver: WebhookReceiver
) -> None:
    canvas.throttle_next, canvas.retry_after = 1, "1"
    client = await service(rules(canvas, receiver.url, SYLLABUS_RULE))
    await client.post("/events", json=syllabus())
    [got] = await receiver.wait_for(1, timeout=20)
    assert got.body["title"] == "Syllabus changed: Computer Science I"
    metrics = await (await client.get("/metrics")).text()
    assert 'router_canvas_api_requests_total{outcome="throttled"}' in metrics


async def test_after_max_wait_it_routes_without_the_data_and_says_so(
    service: ServiceFactory, canvas: FakeCanvas, receiver: WebhookReceiver
) -> None:
    canvas.fail_next = 10**6  # down for good
    rule = """\
    - name: syllabus
      events: [syllabus_updated]
      enrich: [course, teachers]
      notify: [hook]
    """
    client = await service(rules(canvas, receiver.url, rule, canvas_extra="max_wait: 2s"))
    await client.post("/events", json=syllabus())
    [got] = await receiver.wait_for(1, timeout=20)
    assert got.body["title"] == "Syllabus changed: course 21070000000000565"
    assert "Sent without Canvas data: course (Canvas API unavailable: HTTP 503)" in got.body["text"]
    status = await (await client.get("/")).text()
    assert "Canvas API" in status and "HTTP 503" in status
    assert TOKEN not in status and TOKEN not in await (await client.get("/metrics")).text()


async def test_a_course_deleted_in_canvas_is_none_not_an_error(
    service: ServiceFactory, canvas: FakeCanvas, receiver: WebhookReceiver
) -> None:
    del canvas.courses["565"]
    rule = """\
    - name: syllabus
      events: [syllabus_updated]
      enrich: [course, teachers]
      notify: [hook]
    """
    client = await service(rules(canvas, receiver.url, rule))
    await client.post("/events", json=syllabus())
    [got] = await receiver.wait_for(1)
    assert got.body["title"] == "Syllabus changed: course 21070000000000565"
    assert "without Canvas data" not in got.body["text"]


async def test_fan_out_one_delivery_per_teacher_with_its_own_key(
    service: ServiceFactory, canvas: FakeCanvas, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    rule = """\
    - name: tell-teachers
      events: [syllabus_updated]
      enrich: [course]
      recipients: teachers
      notify: [hook]
    """
    client = await service(rules(canvas, receiver.url, rule))
    event = syllabus()
    await client.post("/events", json=event)
    got = await receiver.wait_for(12)
    keys = sorted(r.webhook_id for r in got)
    event_id = deliveries(store_db)[0]["key"].split(":")[0]
    assert keys == sorted(f"{event_id}:tell-teachers:hook:{100 + n}" for n in range(1, 13))
    texts = {r.webhook_id.rsplit(":", 1)[1]: r.body["text"] for r in got}
    assert "Dear Teacher 3 <t3@example.edu>" in texts["103"]
    # The list a rule fans out to is stored as the one recipient, not per delivery.
    stored = orjson.loads(deliveries(store_db)[0]["message"])
    assert "teachers" not in stored["canvas"] and stored["recipient"]["id"] in keys[0]


async def test_a_dead_letter_keeps_what_was_used_and_replays_the_same_message(
    service: ServiceFactory, canvas: FakeCanvas, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    receiver.script.append((400, {}))  # permanent: a dead letter at once
    client = await service(rules(canvas, receiver.url, SYLLABUS_RULE), admin_token=ADMIN)
    await client.post("/events", json=syllabus())
    await until(lambda: [r["state"] for r in deliveries(store_db)] == ["dead"])
    auth = {"Authorization": f"Bearer {ADMIN}"}
    [dead] = (await (await client.get("/-/dlq", headers=auth)).json())["dead_letters"]
    shown = await (await client.get(f"/-/dlq/{dead['id']}", headers=auth)).json()
    assert shown["message"]["canvas"]["course"]["name"] == "Computer Science I"
    # Canvas changes meanwhile (and the cache is gone): the replay sends what was used.
    canvas.courses["565"]["name"] = "Renamed"
    store_db.rows("DELETE FROM canvas_cache")
    resp = await client.post("/-/dlq/replay", json={"ids": [dead["id"]]}, headers=auth)
    assert (await resp.json())["replayed"] == 1
    [got] = await receiver.wait_for(1)
    assert got.body["title"] == "Syllabus changed: Computer Science I"


def _load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    load_rules(path, load_plugins().channel_types)


def test_validate_names_bad_enrichments_and_a_missing_canvas_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as caught:
        _load(
            tmp_path,
            """\
            version: 1
            channels:
              hook: {type: webhook, url: "http://127.0.0.1:9/"}
            rules:
              - name: a
                events: [syllabus_updated]
                enrich: [coures, teachers]
                notify: [hook]
              - name: b
                events: [syllabus_updated]
                recipients: course
                notify: [hook]
              - name: c
                events: [syllabus_updated]
                recipients: teachers
                digest: {wait: 10m}
                notify: [hook]
            """,
        )
    text = str(caught.value)
    assert "bad.yaml:7:" in text and "rules[0].enrich[0]: unknown enrichment 'coures'" in text
    assert "(did you mean 'course'?)" in text
    assert "rules[0].enrich: this rule reads the Canvas API, but the file has no `canvas:`" in text
    assert "rules[1].recipients: recipients 'course' is not a person or a list of people" in text
    assert "rules[2].recipients: recipients and digest cannot be combined" in text


def test_the_canvas_token_is_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            version: 1
            canvas: {url: "https://canvas.example.edu", token: "${CANVAS_API_TOKEN}"}
            channels:
              hook: {type: webhook, url: "http://127.0.0.1:9/"}
            rules:
              - {name: a, events: [syllabus_updated], enrich: [course], notify: [hook]}
            """
        )
    )
    loaded = load_rules(
        path, load_plugins().channel_types, environ={"CANVAS_API_TOKEN": "tok-5e9a"}
    )
    assert "tok-5e9a" in loaded.secrets
    assert loaded.canvas is not None and "tok-5e9a" not in repr(loaded.canvas)
    assert loaded.canvas.max_wait == 3600 and loaded.canvas.cache == 3600


async def test_the_default_templates_use_names_where_a_rule_enriches(
    service: ServiceFactory,
    canvas: FakeCanvas,
    receiver: WebhookReceiver,
    templates: Path,
) -> None:
    shutil.rmtree(templates)
    shutil.copytree(ROOT / "templates", templates)  # the shipped templates
    canvas.add_user("48", "Ada Student", "ada@example.edu")
    canvas.assignments[("565", "355")] = {"id": 355, "name": "Essay 1", "course_id": 565}
    rule = """\
    - name: grades
      events: [grade_change]
      enrich: [user, assignment, course]
      notify: [hook]
    """
    client = await service(rules(canvas, receiver.url, rule))
    await client.post("/events", json=example("grade_change"))
    [got] = await receiver.wait_for(1)
    assert got.body["title"] == "Grade changed: 4 → 5 for Ada Student"
    assert "Essay 1" in got.body["text"] and "Ada Student" in got.body["text"]
    assert "user 48" not in got.body["text"]


async def test_a_burst_during_an_outage_is_routed_whole_once_canvas_is_back(
    service: ServiceFactory, canvas: FakeCanvas, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    canvas.fail_next = 6
    client = await service(rules(canvas, receiver.url, SYLLABUS_RULE))
    for n in range(5):
        assert (await client.post("/events", json=syllabus(n))).status == 202
    got = await receiver.wait_for(5, timeout=30)
    assert [r.body["title"] for r in got] == ["Syllabus changed: Computer Science I"] * 5
    assert len(deliveries(store_db)) == 5
    assert store_db.rows("SELECT count(*) FROM events WHERE state = 'pending'") == [(0,)]


async def test_a_reload_with_another_canvas_section_uses_it(
    service: ServiceFactory, canvas: FakeCanvas, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    client = await service(
        rules(canvas, receiver.url, SYLLABUS_RULE).replace(TOKEN, "wrong-token"),
        admin_token=ADMIN,
        reload_poll=0,
    )
    await client.post("/events", json=syllabus())
    await until(lambda: canvas.hits["/api/v1/courses/21070000000000565"] >= 1)
    assert receiver.received == []  # 401: the event waits
    (tmp_path / "rules.yaml").write_text(rules(canvas, receiver.url, SYLLABUS_RULE))
    resp = await client.post("/-/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status == 200
    [got] = await receiver.wait_for(1, timeout=20)
    assert got.body["title"] == "Syllabus changed: Computer Science I"
