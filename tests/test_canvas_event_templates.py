"""A useful message for every Canvas event type: every example payload Canvas documents
(saved in examples/events/) goes through a real router to every built-in channel, and
through the default templates of every registered channel type. Each message has a
title that is not the event name, and every link it makes points at the event's own
Canvas host."""

import json
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from router.canvas_events import CANVAS_EVENTS
from router.config_source import ConfigErrors
from router.plugins import load_plugins
from router.rules import load_rules
from router.templates import Rendered, Templates, builtin_templates, template_context
from router.testing import Delivery, run_router
from tests.conftest import ROOT, all_examples
from tests.receiver import SECRET, WebhookReceiver

TEMPLATES = ROOT / "templates"
EXAMPLES = all_examples()  # file stem -> event; several files may hold one event type

# Canvas' docs name these two differently from what their examples carry.
DOC_NAMES = {"outcomes_retry_outcome_alignment_clone": "outcomes.retry_outcome_alignment_clone"}

# Examples that name no object Canvas has a page for, on a host that is known: a
# submission_created example without any course id (the only metadata is the request).
NO_LINK = {"submission_created"}

MRKDWN_LINK = re.compile(r"<(https?://[^|>]+)(?:\|[^>]*)?>")
HREF = re.compile(r'href="([^"]+)"')


def canvas_host(event: dict[str, Any]) -> str | None:
    """Where the event came from: metadata.hostname, else the host of metadata.url, else
    the root account's domain some bodies carry (jobs send no request metadata)."""
    metadata, body = event["metadata"], event.get("body") or {}
    if metadata.get("hostname"):
        return str(metadata["hostname"])
    if metadata.get("url"):
        return urlsplit(metadata["url"]).netloc
    return body.get("domain")


def links(title: str, text: str, blocks: dict[str, str]) -> list[str]:
    """Every link a rendered message makes: its link block, the "Open in Canvas" line,
    HTML hrefs, Slack buttons and Slack mrkdwn links."""
    found = [blocks["link"]] if blocks.get("link") else []
    found += [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("Open in")]
    found += [href.replace("&amp;", "&") for href in HREF.findall(blocks.get("html", ""))]
    found += MRKDWN_LINK.findall(text)
    if "slack_blocks" in blocks:
        for block in json.loads(blocks["slack_blocks"]):
            found += [e["url"] for e in block.get("elements", []) if "url" in e]
            found += MRKDWN_LINK.findall((block.get("text") or {}).get("text", ""))
    return found


def check_message(
    stem: str, event: dict[str, Any], title: str, text: str, blocks: dict[str, str]
) -> None:
    name = event["metadata"]["event_name"]
    assert title.strip(), stem
    assert title != name, stem
    assert not title.startswith("Canvas event:"), (stem, title)  # the fallback for others
    assert "\n" not in title
    assert text.strip(), stem
    host = canvas_host(event)
    made = links(title, text, blocks)
    for link in made:
        assert urlsplit(link).scheme == "https", (stem, link)
        assert urlsplit(link).netloc == host, (stem, link, host)
    if host and stem not in NO_LINK:
        assert blocks.get("link"), f"{stem}: no link to Canvas although the host is {host}"
    if not host:
        assert not made, stem


def test_every_documented_canvas_event_type_has_an_example_and_a_template() -> None:
    event_names = {event["metadata"]["event_name"] for event in EXAMPLES.values()}
    documented = {DOC_NAMES.get(name, name) for name in CANVAS_EVENTS}
    stems = {stem.split(".")[0] for stem in EXAMPLES}
    assert {name.replace(".", "_") for name in documented} <= stems
    for name in documented | event_names:
        own = [TEMPLATES / f"{name}.j2", TEMPLATES / "events" / f"{name}.j2"]
        assert any(path.is_file() for path in own), f"no template for {name}"


async def test_every_example_through_a_router_to_every_builtin_channel() -> None:
    receiver = WebhookReceiver()
    runner = await receiver.start()
    rules = f"""
        version: 1
        channels:
          hook: {{type: webhook, url: "{receiver.url}", secret: "{SECRET}"}}
          chat: {{type: slack, token: "", channel: "#canvas"}}
          mail: {{type: email, host: "", sender: lms@example.edu, to: [ops@example.edu]}}
        rules:
          - {{name: everything, events: ["*"], notify: [hook, chat, mail]}}
    """
    try:
        async with run_router(rules) as router:
            stems = sorted(EXAMPLES)
            ids = await router.send([EXAMPLES[stem] for stem in stems])
            deliveries = await router.wait_until_settled(timeout=60)
            arrived = await receiver.wait_for(len(stems))
    finally:
        await runner.cleanup()
    assert len(set(ids)) == len(stems)  # every example is an event of its own
    by_event: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        by_event.setdefault(delivery.event_id, []).append(delivery)
    for stem, event_id in zip(stems, ids, strict=True):
        sent = {d.channel: d for d in by_event[event_id]}
        assert set(sent) == {"hook", "chat", "mail"}, stem
        assert sent["hook"].state == "delivered", (stem, sent["hook"].last_error)
        assert sent["chat"].state == sent["mail"].state == "logged", stem
        for delivery in sent.values():
            check_message(stem, EXAMPLES[stem], delivery.title, delivery.text, delivery.blocks)
        assert sent["mail"].blocks["html"].startswith("<div"), stem
        json.loads(sent["chat"].blocks["slack_blocks"])
    titles = {received.body["event_id"]: received.body["title"] for received in arrived}
    assert titles == {event_id: by_event[event_id][0].title for event_id in ids}


REGISTERED_TYPES = sorted(load_plugins().channel_types)


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates(builtin_templates(), {})


def render(templates: Templates, event: dict[str, Any], channel_type: str) -> Rendered:
    name = templates.resolve(None, event["metadata"]["event_name"], channel_type)
    context = template_context(event, event_id="ev1", rule="rule1", channel="chan1")
    return templates.render(name, context)


@pytest.mark.parametrize("channel_type", REGISTERED_TYPES)
def test_every_example_renders_for_every_registered_channel_type(
    templates: Templates, channel_type: str
) -> None:
    """Chat channels added by plugins get the same messages (their `default.<type>.j2`,
    or `default.j2`), with the link block for an "Open in Canvas" button."""
    assert {"slack", "email", "webhook"} <= set(REGISTERED_TYPES)
    for stem, event in sorted(EXAMPLES.items()):
        rendered = render(templates, event, channel_type)
        check_message(stem, event, rendered.title, rendered.text, rendered.blocks)
        assert "link" in rendered.blocks, (stem, rendered.template)


def test_messages_name_the_important_fields(templates: Templates) -> None:
    grade = render(templates, EXAMPLES["grade_change"], "webhook")
    assert grade.title == "Grade changed: 4 → 5 for user 48"
    assert "on assignment 355 in course 565 changed from 4 to 5" in grade.text
    assert "(graded by user 987)" in grade.text and "2019-11-01 13:11 MDT" in grade.text
    link = "https://oxana.instructure.com/courses/565/assignments/355/submissions/48"
    assert grade.blocks["link"] == link and f"Open in Canvas: {link}" in grade.text

    enrolled = render(templates, EXAMPLES["enrollment_created"], "email")
    assert enrolled.title == "Student enrolled: Isaac Newton"
    assert "course 565, section 4811" in enrolled.text
    assert "https://oxana.instructure.com/courses/565/users/20064" in enrolled.blocks["html"]

    received = render(templates, EXAMPLES["submission_updated"], "slack")
    assert received.title == "Submission graded: user 47"
    button = json.loads(received.blocks["slack_blocks"])[2]["elements"][0]
    assert button["text"]["text"] == "Open in Canvas"
    assert button["url"].endswith("/courses/565/assignments/396/submissions/47")

    page = render(templates, EXAMPLES["wiki_page_updated"], "webhook")
    assert page.title == "Page renamed: Page 1 Created → Page 1 Updated"
    assert "- page 1\n+ page 1 - updated" in page.text

    deleted = render(templates, EXAMPLES["wiki_page_deleted"], "webhook")
    assert deleted.blocks["link"] == "https://oxana.instructure.com/courses/565/pages"


def test_enriched_names_replace_ids(templates: Templates) -> None:
    """With `enrich:`, a rule's variables `course`, `user`, `assignment` (Canvas API
    objects) name what the event only has ids for."""
    event = EXAMPLES["grade_change"]
    context = template_context(event, event_id="ev1", rule="rule1", channel="chan1")
    context |= {
        "course": {"id": 565, "name": "Linear Algebra"},
        "user": {"id": 48, "name": "Ada Lovelace"},
        "assignment": {"id": 355, "name": "Homework 3"},
    }
    name = templates.resolve(None, "grade_change", "webhook")
    rendered = templates.render(name, context)
    assert rendered.title == "Grade changed: 4 → 5 for Ada Lovelace"
    assert "Ada Lovelace (SIS ABC.123) on Homework 3 in Linear Algebra" in rendered.text


def test_events_without_a_template_get_a_titled_message(templates: Templates) -> None:
    event = {
        "metadata": {
            "event_name": "quiz_archived",
            "hostname": "oxana.instructure.com",
            "context_type": "Course",
            "context_id": "21070000000000565",
        },
        "body": {},
    }
    for channel_type in ("webhook", "slack", "email"):
        rendered = render(templates, event, channel_type)
        assert rendered.title == "Canvas event: quiz archived"
        assert "Canvas event quiz_archived in course 565" in rendered.text
        assert rendered.blocks["link"] == "https://oxana.instructure.com/courses/565"


@pytest.mark.parametrize("name", ["../default", "layouts/../default", "/etc/passwd", "a\\b"])
def test_event_names_cannot_pick_templates_outside_events(templates: Templates, name: str) -> None:
    rendered = render(templates, {"metadata": {"event_name": name}, "body": {}}, "webhook")
    assert rendered.title.startswith("Canvas event:")


def test_a_failing_event_template_is_named_with_its_line(tmp_path: Path) -> None:
    directory = tmp_path / "templates"
    (directory / "events").mkdir(parents=True)
    (directory / "layouts").mkdir()
    for name in ("default.j2", "layouts/event.j2", "layouts/canvas.j2", "events/other.j2"):
        (directory / name).write_text((TEMPLATES / name).read_text())
    (directory / "events" / "grade_change.j2").write_text(
        '{% extends "layouts/event.j2" %}\n'
        "{% block title %}Grade{% endblock %}\n"
        "{% block text %}\n{{ body.missing.field }}\n{% endblock %}\n"
        "{% block link %}{% endblock %}\n"
    )
    templates = Templates(directory, {})
    with pytest.raises(Exception, match=r"template events/grade_change.j2 line 4: UndefinedError"):
        render(templates, EXAMPLES["grade_change"], "webhook")


# --- docs/canvas-events.md ---------------------------------------------------------------

GUIDE = ROOT / "docs" / "canvas-events.md"
TABLE_ROW = re.compile(r"^\| `([^`]+)` \| (.*) \| (.*) \|$", re.M)


def table_rows(templates: Templates) -> list[tuple[str, str, str]]:
    """(event, title of Canvas' first example, the link's path) per documented event."""
    rows = []
    for stem, event in sorted(EXAMPLES.items()):
        if "." in stem and not stem.startswith("outcomes."):
            continue  # one row per event type
        rendered = render(templates, event, "webhook")
        link = urlsplit(rendered.blocks["link"])
        path = link.path + (f"#{link.fragment}" if link.fragment else "")
        name = DOC_NAMES.get(stem, stem)
        rows.append((name, rendered.title.replace("|", "\\|"), f"`{path}`" if path else "—"))
    return rows


def test_the_guide_lists_every_event_with_its_example_message(templates: Templates) -> None:
    table = GUIDE.read_text().split("\n## The event types\n", 1)[1]
    documented = [(name, title, link) for name, title, link in TABLE_ROW.findall(table)]
    assert documented == table_rows(templates)


def test_the_guides_rules_and_templates_work(tmp_path: Path) -> None:
    blocks = re.findall(r"^```(\w+)\n(.*?)^```", GUIDE.read_text(), re.S | re.M)
    rules = [code for language, code in blocks if language == "yaml"]
    jinja = [code for language, code in blocks if language == "jinja"]
    assert rules and jinja
    channel_types = load_plugins().channel_types
    for code in rules:
        path = tmp_path / "rules.yaml"
        path.write_text(code)
        load_rules(path, channel_types, templates=Templates(builtin_templates(), {}))
    misspelt = rules[0].replace(
        "display_time_zone: America/Chicago", "display_time_zone: America/Chicgo"
    )
    (tmp_path / "rules.yaml").write_text(misspelt)
    with pytest.raises(ConfigErrors) as caught:
        load_rules(tmp_path / "rules.yaml", channel_types)
    [error] = caught.value.errors
    shown = str(error).replace(str(tmp_path) + "/", "")
    assert f"`{shown}`" in GUIDE.read_text()
    directory = tmp_path / "templates"
    shutil.copytree(builtin_templates(), directory)
    for code in jinja:
        name = code.splitlines()[0].removeprefix("{#- ").split(":")[0].strip()
        (directory / name).write_text(code)
        copy = Templates(directory, {})
        assert copy.check(name) is None, name
    teams = Templates(directory, {})
    rendered = render(teams, EXAMPLES["grade_change"], "teams")
    assert rendered.template == "default.teams.j2"
    assert rendered.title == "Grade changed: 4 → 5 for user 48"
    assert json.loads(rendered.blocks["card"])["actions"][0]["url"] == rendered.blocks["link"]
