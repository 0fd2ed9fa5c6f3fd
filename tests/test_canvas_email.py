"""End to end: a syllabus_updated emails each of the course's teachers (two pages of
them at the fake Canvas API) with the course's name in the subject, through the default
templates, the real router and a real SMTP server (aiosmtpd)."""

import asyncio
import copy
import textwrap
from collections.abc import AsyncIterator, Iterator

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner

from router.cli import cli
from tests.canvas_fake import TOKEN, FakeCanvas
from tests.conftest import ServiceFactory, StoreDB, example
from tests.test_delivery import deliveries, until
from tests.test_email import Mailbox, free_port


@pytest.fixture
def mail() -> Iterator[tuple[Mailbox, Controller]]:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield mailbox, controller
    controller.stop()


@pytest.fixture
async def canvas() -> AsyncIterator[FakeCanvas]:
    fake = FakeCanvas(max_per_page=10)  # 13 teachers: two pages
    fake.courses["565"] = {"id": 565, "name": "Computer Science I", "workflow_state": "available"}
    for n in range(1, 13):
        fake.add_user(str(100 + n), f"Teacher {n}", f"t{n}@example.edu")
        fake.enroll("565", str(100 + n), "teacher")
    fake.add_user("200", "Nomail Teacher", None)  # the token may not see their email
    fake.enroll("565", "200", "teacher")
    fake.add_user("7", "Ada Student", "ada@example.edu")
    fake.enroll("565", "7", "student")
    await fake.start()
    yield fake
    await fake.close()


async def test_syllabus_updated_emails_each_teacher_with_the_course_name(
    service: ServiceFactory,
    canvas: FakeCanvas,
    mail: tuple[Mailbox, Controller],
    store_db: StoreDB,
    db_url: str,
) -> None:
    mailbox, controller = mail
    rules = textwrap.dedent(
        f"""\
        version: 1
        canvas: {{url: "{canvas.url}", token: "{TOKEN}"}}
        channels:
          teachers-mail:
            type: email
            host: 127.0.0.1
            port: {controller.port}
            sender: lms@example.edu
            to: "{{{{ recipient.email }}}}"
        rules:
          - name: syllabus-to-teachers
            events: [syllabus_updated]
            enrich: [course]
            recipients: teachers
            notify: [teachers-mail]
        """
    )
    client = await service(rules)
    event = copy.deepcopy(example("syllabus_updated"))
    event["body"]["syllabus_body"] = "<p>Week 1: recursion</p>"
    assert (await client.post("/events", json=event)).status == 202
    await until(lambda: len(mailbox.received) == 12, timeout=20)
    await until(lambda: {r["state"] for r in deliveries(store_db)} == {"delivered", "dead"})
    assert sorted(r for m in mailbox.received for r in m.rcpt_tos) == sorted(
        f"t{n}@example.edu" for n in range(1, 13)
    )
    for got in mailbox.received:
        assert "Computer Science I" in got.message["Subject"]
        assert got.message["Subject"].startswith("Syllabus updated in Computer Science I")
    assert canvas.hits["/api/v1/courses/21070000000000565/users"] == 2  # Link rel="next"
    [dead] = [r for r in deliveries(store_db) if r["state"] == "dead"]
    assert dead["key"].endswith(":syllabus-to-teachers:teachers-mail:200")
    assert "Nomail Teacher (Canvas user 200) has no email address" in dead["last_error"]
    assert len(deliveries(store_db)) == 13
    # The dead-letter view shows who it was for and the Canvas data the message used.
    show = ["dlq", "show", str(dead["id"]), "--db", db_url]
    result = await asyncio.to_thread(CliRunner().invoke, cli, show)  # it runs its own loop
    assert result.exit_code == 0, result.output
    assert '"name": "Nomail Teacher"' in result.output
    assert "Canvas data used (enrich:):" in result.output
    assert '"name": "Computer Science I"' in result.output
    assert TOKEN not in result.output
