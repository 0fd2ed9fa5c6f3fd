"""The canvas_inbox channel through the real router, against the fake Canvas API's
Conversations endpoint on 127.0.0.1."""

import copy
import textwrap
from collections.abc import AsyncIterator

import pytest
from router_canvas_inbox import SUBJECT_MAX, CanvasInboxChannel, CanvasInboxConfig

from router import Message, PermanentError
from tests.canvas_fake import TOKEN, FakeCanvas
from tests.conftest import ServiceFactory, StoreDB, example
from tests.test_delivery import deliveries, until


@pytest.fixture
async def canvas() -> AsyncIterator[FakeCanvas]:
    fake = FakeCanvas()
    fake.courses["565"] = {"id": 565, "name": "Computer Science I", "workflow_state": "available"}
    for n in range(1, 4):
        fake.add_user(str(100 + n), f"Teacher {n}", f"t{n}@example.edu")
        fake.enroll("565", str(100 + n), "teacher")
    await fake.start()
    yield fake
    await fake.close()


def rules(canvas: FakeCanvas, recipients: str = "teachers") -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        canvas: {{url: "{canvas.url}", token: "{TOKEN}"}}
        channels:
          inbox: {{type: canvas_inbox, url: "{canvas.url}", token: "{TOKEN}", max_attempts: 3}}
        rules:
          - name: syllabus-inbox
            events: [syllabus_updated]
            enrich: [course]
            recipients: {recipients}
            notify: [inbox]
        """
    )


def syllabus() -> dict:
    event = copy.deepcopy(example("syllabus_updated"))
    event["body"]["syllabus_body"] = "<p>Week 1: recursion</p>"
    return event


async def test_each_teacher_gets_a_conversation_in_the_course(
    service: ServiceFactory, canvas: FakeCanvas, store_db: StoreDB
) -> None:
    # The first POST is throttled: retried, not lost.
    canvas.throttle_next, canvas.throttle_method = 1, "POST"
    client = await service(rules(canvas))
    await client.post("/events", json=syllabus())
    await until(lambda: len(canvas.conversations) == 3, timeout=20)
    await until(lambda: {r["state"] for r in deliveries(store_db)} == {"delivered"})
    sent = sorted(canvas.conversations, key=lambda c: c["recipients"])
    assert [c["recipients"] for c in sent] == [["101"], ["102"], ["103"]]
    for conversation in sent:
        assert conversation["context_code"] == "course_21070000000000565"
        assert conversation["force_new"] == "true"
        assert conversation["group_conversation"] == "false"
        assert "Computer Science I" in conversation["subject"]
        assert "recursion" in conversation["body"]
    assert max(r["attempts"] for r in deliveries(store_db)) == 2


async def test_canvas_refusals_are_permanent_and_name_the_person(
    service: ServiceFactory, canvas: FakeCanvas, store_db: StoreDB
) -> None:
    canvas.unreachable.add("102")
    client = await service(rules(canvas))
    await client.post("/events", json=syllabus())
    await until(lambda: {r["state"] for r in deliveries(store_db)} == {"delivered", "dead"})
    [dead] = [r for r in deliveries(store_db) if r["state"] == "dead"]
    assert dead["attempts"] == 1
    assert dead["last_error"] == (
        "Canvas refused the message to Teacher 2 (Canvas user 102): HTTP 400:"
        " recipients: invalid recipients"
    )


async def test_a_concluded_course_is_a_permanent_failure(
    service: ServiceFactory, canvas: FakeCanvas, store_db: StoreDB
) -> None:
    canvas.courses["565"]["workflow_state"] = "completed"
    client = await service(rules(canvas))
    await client.post("/events", json=syllabus())
    await until(lambda: [r["state"] for r in deliveries(store_db)] == ["dead"] * 3)
    for row in deliveries(store_db):
        assert "Course concluded, unable to send messages" in row["last_error"]
        assert row["attempts"] == 1
    assert canvas.conversations == []


async def test_the_subject_is_cut_to_canvas_limit_and_a_recipient_is_required() -> None:
    channel = CanvasInboxChannel(
        "inbox", CanvasInboxConfig(url="https://canvas.example.edu", token="t")
    )
    message = Message(
        key="k",
        event_id="e",
        event_name="syllabus_updated",
        rule="r",
        channel="inbox",
        title="x" * 400,
        text="body",
        event=example("syllabus_updated"),
        recipient={"id": "101", "name": "Teacher 1"},
    )
    form = dict(channel.form(message))
    assert len(form["subject"]) == SUBJECT_MAX
    with pytest.raises(PermanentError, match="recipients:"):
        channel.form(message.model_copy(update={"recipient": None}))
