"""Log lines: JSON, one per accepted event and one per delivery outcome (with event id,
rule, channel and attempt), and no secret from the rules file or the event."""

import io
import logging
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.logs import JsonFormatter, RedactingFilter
from router.redact import Redactor
from tests.conftest import ROOT, ServiceFactory, example
from tests.receiver import SECRET, WebhookReceiver
from tests.test_metrics import until_metric

ACCESS_TOKEN = "111~sGvKF4Yzr2AqdwShKj7CwwopgwJuMFONBqWu44Upk1F4jgkFvpXc9HY20PCU5r0"
LOGIN = "oxana@example.com"  # made a secret below: the rules file takes it from the env


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines through the redacting filter, as `router serve`
    sets it up; the service points the filter at its rules' secrets when it starts."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(Redactor()))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_json_lines_one_per_event_and_outcome_without_secrets(
    service: ServiceFactory,
    receiver: WebhookReceiver,
    tmp_path: Path,
    json_log: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCH_LOGIN", LOGIN)
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "raw_url.j2").write_text(
        "{% block title %}section by {{ metadata.user_login }}{% endblock %}\n"
        "{% block text %}{{ metadata.url }}{% endblock %}\n"
    )
    rules = textwrap.dedent(
        f"""\
        version: 1
        channels:
          hook: {{type: webhook, url: "{receiver.url}", secret: "${{HOOK_SECRET}}"}}
          quiet: {{type: webhook}}
          raw: {{type: webhook, body: event}}
        rules:
          - name: sections
            events: [course_section_created]
            match: {{metadata.user_login: "${{WATCH_LOGIN}}"}}
            notify: [hook, quiet, raw]
            template: raw_url
        """
    )
    client = await service(rules, admin_token="admin-secret-token")
    event = example("course_section_created")
    assert ACCESS_TOKEN in event["metadata"]["url"]
    resp = await client.post("/events", json=event)
    [accepted] = (await resp.json())["accepted"]
    await receiver.wait_for(1)
    for channel in ("quiet", "raw"):
        await until_metric(
            client, "router_deliveries_completed_total", 1, channel=channel, result="logged"
        )
    await until_metric(
        client,
        "router_deliveries_completed_total",
        1,
        channel="hook",
        result="delivered_first_attempt",
    )

    text = json_log.getvalue()
    lines: list[dict[str, Any]] = [orjson.loads(line) for line in text.splitlines()]
    assert lines, "nothing was logged"
    for secret in (
        ACCESS_TOKEN,
        LOGIN,
        SECRET,
        SECRET.removeprefix("whsec_"),
        "admin-secret-token",
    ):
        assert secret not in text
    # The Canvas URL was logged (the log-only channel's text) with its token masked.
    assert "access_token=***" in text
    # The raw-event channel shows the event it would send, with secrets masked too.
    [shown] = [line for line in lines if line.get("channel") == "raw" and "event" in line]
    assert shown["event"]["metadata"]["event_name"] == "course_section_created"
    assert shown["event"]["metadata"]["user_login"] == "***"

    accepted_lines = [line for line in lines if line["message"] == "event accepted"]
    assert [line["event_id"] for line in accepted_lines] == [accepted["id"]]
    assert accepted_lines[0]["event_name"] == "course_section_created"

    outcomes = [line for line in lines if line["message"].startswith("delivery ")]
    assert sorted((line["message"], line["channel"]) for line in outcomes) == [
        ("delivery delivered", "hook"),
        ("delivery logged", "quiet"),
        ("delivery logged", "raw"),
    ]
    for line in outcomes:
        assert line["event_id"] == accepted["id"]
        assert line["rule"] == "sections"
        assert line["attempt"] == 1
        assert line["key"] == f"{accepted['id']}:sections:{line['channel']}"


async def test_a_template_failure_logs_its_dead_delivery(
    service: ServiceFactory, tmp_path: Path, json_log: io.StringIO
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "broken.j2").write_text("{{ body.no_such_field.deeper }}\n")
    rules = textwrap.dedent(
        """\
        version: 1
        channels:
          quiet: {type: webhook}
        rules:
          - {name: broken, events: ["*"], notify: [quiet], template: broken}
        """
    )
    client = await service(rules)
    resp = await client.post("/events", json=example("course_created"))
    [accepted] = (await resp.json())["accepted"]
    await until_metric(client, "router_dead_letters", 1)
    lines = [orjson.loads(line) for line in json_log.getvalue().splitlines()]
    [dead] = [line for line in lines if line["message"] == "delivery dead"]
    assert dead["event_id"] == accepted["id"]
    assert (dead["rule"], dead["channel"], dead["attempt"]) == ("broken", "quiet", 0)
    assert dead["error"].startswith("template broken.j2 line 1: UndefinedError")
