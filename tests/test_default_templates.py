"""The shipped templates: every example event renders for every channel type, copes with
missing or odd fields, produces valid Slack Block Kit JSON and escaped email HTML; the
digest templates render a list of events.

Examples are keyed by file stem (``asset_accessed.2`` is another asset_accessed); the
course and syllabus events have templates of their own per channel type, the other
event types one template in events/ that the default layouts extend."""

import copy
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from router.templates import Rendered, Templates, template_context
from tests.conftest import ROOT, all_examples, example

TEMPLATES = ROOT / "templates"
EXAMPLES = all_examples()
# One example per event type, for the slower tests of odd input.
ONE_PER_TYPE = {
    stem: event
    for stem, event in sorted(EXAMPLES.items())
    if "." not in stem or stem.startswith("outcomes.")
}
CHANNEL_TYPES = ["webhook", "slack", "email"]
DIGESTS = ["digest.j2", "digest.slack.j2", "digest.email.j2"]
SCRIPT = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates(Path(TEMPLATES), {})


@pytest.fixture(scope="module")
def autoescaping() -> Templates:
    """The same templates in an environment that autoescapes everything, as a channel that
    renders the ``html`` block with autoescape on would."""
    escaping = Templates(Path(TEMPLATES), {})
    escaping.env.autoescape = True  # before any template is compiled
    return escaping


def context(event: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """``template_context`` for the event, with ``previous`` (added here until
    ``template_context`` takes it)."""
    kwargs: dict[str, Any] = {"event_id": "ev1", "rule": "rule1", "channel": "chan1"}
    if "previous" in inspect.signature(template_context).parameters:
        return template_context(event, previous=previous, **kwargs)
    return {**template_context(event, **kwargs), "previous": previous}


def has_own_templates(event_name: str) -> bool:
    """The event types with a template per channel type (``<event>.<type>.j2``)."""
    return (TEMPLATES / f"{event_name}.j2").is_file()


def render(
    templates: Templates, event: dict[str, Any], channel_type: str, **extra: Any
) -> Rendered:
    name = templates.resolve(None, event["metadata"]["event_name"], channel_type)
    return templates.render(name, context(event, **extra))


def check(rendered: Rendered, channel_type: str) -> None:
    """What every channel needs from a rendered message."""
    assert rendered.title
    assert "\n" not in rendered.title
    assert rendered.text
    if channel_type == "slack":
        blocks = json.loads(rendered.blocks["slack_blocks"])
        assert isinstance(blocks, list) and blocks
        assert all(isinstance(block, dict) and block.get("type") for block in blocks)
        for block in blocks:
            if block["type"] == "header":
                assert 0 < len(block["text"]["text"]) <= 150
            if block["type"] == "section":
                assert 0 < len(block["text"]["text"]) <= 3000
    if channel_type == "email":
        assert rendered.blocks.get("html", "").startswith("<div")


@pytest.mark.parametrize("channel_type", CHANNEL_TYPES)
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_event_renders_for_every_channel_type(
    templates: Templates, name: str, channel_type: str
) -> None:
    event_name = EXAMPLES[name]["metadata"]["event_name"]
    resolved = templates.resolve(None, event_name, channel_type)
    if has_own_templates(event_name):
        own = f"{event_name}.j2" if channel_type == "webhook" else f"{event_name}.{channel_type}.j2"
        assert resolved == own  # course and syllabus events: one template per channel type
    else:  # the others: the channel's layout over events/<event>.j2
        assert resolved == (
            "default.j2" if channel_type == "webhook" else f"default.{channel_type}.j2"
        )
        assert (TEMPLATES / "events" / f"{event_name}.j2").is_file()
    rendered = render(templates, EXAMPLES[name], channel_type, previous=None)
    check(rendered, channel_type)
    assert "None" not in rendered.title
    if channel_type == "webhook":
        assert "json" not in rendered.blocks  # the webhook keeps its standard body


@pytest.mark.parametrize("channel_type", ["webhook", "email"])  # Slack builds its own blocks
def test_an_event_without_a_template_of_its_own_renders_as_the_others_do(
    templates: Templates, channel_type: str
) -> None:
    event = copy.deepcopy(EXAMPLES["course_created"])
    event["metadata"]["event_name"] = f"grade_change{SCRIPT}"
    name = templates.resolve(None, event["metadata"]["event_name"], channel_type)
    assert name.startswith("default.")
    rendered = render(templates, event, channel_type)
    check(rendered, channel_type)  # email: multipart, text and HTML, as the others
    assert rendered.text.startswith(f"Canvas event grade_change{SCRIPT} ")
    assert " at 2019-" in rendered.text  # events/other.j2: the event's time, localised
    if channel_type == "email":
        assert "<script" not in rendered.blocks["html"]
        assert "grade_change&lt;script&gt;" in rendered.blocks["html"]


def names_in(event: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The (dict, key) places of the names a template shows: for the course events
    their names, for the others every text field of the body."""
    body = event["body"]
    if not has_own_templates(event["metadata"]["event_name"]):
        return [(body, key) for key, value in body.items() if isinstance(value, str)]
    places = [(body, "name")] if "name" in body else []
    places += [(body[k], "name") for k in ("course", "user") if isinstance(body.get(k), dict)]
    return places


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_email_html_escapes_event_data(
    templates: Templates, autoescaping: Templates, name: str
) -> None:
    event = copy.deepcopy(EXAMPLES[name])
    for place, key in names_in(event):
        place[key] = SCRIPT
    if name == "syllabus_updated":
        event["body"]["syllabus_body"] = f"<p>New &amp; {SCRIPT} text</p>"
    event["metadata"]["user_login"] = SCRIPT
    for environment in (templates, autoescaping):
        html = render(environment, event, "email").blocks["html"]
        assert "<script" not in html
        assert "&lt;script&gt;" in html or name == "syllabus_updated"
        assert "<div" in html  # the template's own markup is not escaped


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_slack_json_survives_quotes_newlines_and_markup(templates: Templates, name: str) -> None:
    event = copy.deepcopy(EXAMPLES[name])
    nasty = 'A "quoted" \\ name\nwith <@U123> & `ticks` ```'
    for place, key in names_in(event):
        place[key] = nasty
    event["metadata"]["user_login"] = nasty
    rendered = render(templates, event, "slack")
    check(rendered, "slack")
    mrkdwn = [rendered.text]
    for block in json.loads(rendered.blocks["slack_blocks"]):
        texts = [block.get("text") or {}, *block.get("elements", [])]
        mrkdwn += [t["text"] for t in texts if t.get("type") == "mrkdwn"]
    assert not [text for text in mrkdwn if "<@U123>" in text]  # no pings from event data


def odd_bodies(event: dict[str, Any]) -> list[dict[str, Any]]:
    keys = list(event["body"])
    return [
        {},
        dict.fromkeys(keys),
        dict.fromkeys(keys, ""),
        dict.fromkeys(keys, 'x <&> "'),
        dict.fromkeys(keys, 7),
        {key: [] for key in keys},
        {k: {"name": None, "id": None} for k in keys},
    ]


@pytest.mark.parametrize("channel_type", CHANNEL_TYPES)
@pytest.mark.parametrize("name", sorted(ONE_PER_TYPE))
def test_missing_and_odd_fields_still_render(
    templates: Templates, name: str, channel_type: str
) -> None:
    event_name = EXAMPLES[name]["metadata"]["event_name"]
    for body in odd_bodies(EXAMPLES[name]):
        for metadata in (
            {"event_name": event_name},
            {**EXAMPLES[name]["metadata"], "time_zone": "X"},
        ):
            event = {"metadata": metadata, "body": body}
            check(render(templates, event, channel_type), channel_type)
            check(render(templates, event, channel_type, previous=body), channel_type)


def test_course_completed_keeps_its_message(templates: Templates) -> None:
    rendered = render(templates, example("course_completed"), "webhook")
    assert rendered.title == "Isaac Newton completed Computer Science I"
    assert "2019-11-05 08:38 EST" in rendered.text  # America/New_York, from metadata
    assert "https://oxana.instructure.com/courses/565" in rendered.text
    slack = render(templates, example("course_completed"), "slack")
    assert "<https://oxana.instructure.com/courses/565|Computer Science I>" in slack.text


def test_ids_are_local_and_links_point_at_canvas(templates: Templates) -> None:
    for channel_type in CHANNEL_TYPES:
        rendered = render(templates, example("syllabus_updated"), channel_type)
        assert "21070000000000565" not in rendered.title + rendered.text
        assert "course 565" in rendered.title
        created = render(templates, example("course_section_created"), channel_type)
        link = "https://oxana.instructure.com/courses/565/sections/1234567"
        assert link in created.text + created.blocks.get("html", "")


@pytest.mark.parametrize("channel_type", CHANNEL_TYPES)
def test_course_updated_says_what_changed_when_previous_is_known(
    templates: Templates, channel_type: str
) -> None:
    event = example("course_updated")
    plain = render(templates, event, channel_type, previous=None)
    assert plain.title == "Course updated: Linear Algebra"
    assert "was updated" in plain.text and "→" not in plain.text

    previous = {**event["body"], "name": "Linear Algebra (draft)", "updated_at": "2019-01-01"}
    previous["workflow_state"] = "claimed"
    changed = render(templates, event, channel_type, previous=previous)
    assert changed.title == "Course renamed: Linear Algebra (draft) → Linear Algebra"
    assert "Linear Algebra (draft) → Linear Algebra" in changed.text
    assert "claimed → available" in changed.text
    assert "updated at" not in changed.text  # timestamps are not changes
    if channel_type == "email":
        assert "Linear Algebra (draft)" in changed.blocks["html"]

    same = render(templates, event, channel_type, previous=dict(event["body"]))
    assert same.title == "Course updated: Linear Algebra"
    assert "no field changed" in same.text


def test_course_section_updated_lists_changes(templates: Templates) -> None:
    event = example("course_section_updated")
    previous = {**event["body"], "end_at": "2020-05-01T04:00:00Z"}
    rendered = render(templates, event, "webhook", previous=previous)
    assert "end at: 2020-04-30 22:00 MDT → 2020-06-16 22:00 MDT" in rendered.text


@pytest.mark.parametrize("channel_type", CHANNEL_TYPES)
def test_syllabus_updated_shows_whether_and_what_changed(
    templates: Templates, channel_type: str
) -> None:
    same = render(templates, example("syllabus_updated"), channel_type)
    assert "saved without changes" in same.title
    assert "saved without changes" in same.text

    event = example("syllabus_updated")
    event["body"]["old_syllabus_body"] = "<h1>Syllabus</h1><ul><li>Read ch. 1</li><li>Quiz</li>"
    event["body"]["syllabus_body"] = (
        '<h1>Syllabus</h1><ul><li>Read ch. 1 &amp; 2</li><li>Quiz</li></ul><p>"New" <b>lab'
    )
    changed = render(templates, event, channel_type)
    check(changed, channel_type)
    assert changed.title == "Syllabus updated in course 565"
    assert "was changed" in changed.text
    amp = "&amp;" if channel_type == "slack" else "&"  # Slack mrkdwn escapes &, <, >
    assert f'- • Read ch. 1\n+ • Read ch. 1 {amp} 2\n  • Quiz\n+\n+ "New" lab' in changed.text
    if channel_type == "email":
        html = changed.blocks["html"]
        assert "+ • Read ch. 1 &amp; 2" in html and "<pre" in html

    markup_only = example("syllabus_updated")
    markup_only["body"]["old_syllabus_body"] = "<p>Same text</p>"
    markup_only["body"]["syllabus_body"] = "<p><b>Same</b> text</p>"
    assert "formatting" in render(templates, markup_only, channel_type).text

    unknown = example("syllabus_updated")
    del unknown["body"]["old_syllabus_body"]
    unknown["body"]["syllabus_body"] = "<p>Brand new</p>"
    rendered = render(templates, unknown, channel_type)
    assert "was updated" in rendered.text and "Brand new" in rendered.text

    long = example("syllabus_updated")
    long["body"]["old_syllabus_body"] = ("<p>" + "old words " * 20 + "</p>") * 50
    long["body"]["syllabus_body"] = ("<p>" + "new words " * 20 + "</p>") * 50
    rendered = render(templates, long, channel_type)
    check(rendered, channel_type)
    assert "more lines" in rendered.text
    assert "8 KB" in rendered.text


def digest_context(events: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        **context(events[0]),
        "events": events,
        "count": len(events),
        "group": {},
        **extra,
    }


@pytest.mark.parametrize("name", DIGESTS)
def test_digest_templates_list_events(templates: Templates, name: str) -> None:
    events = [example("course_completed"), example("course_created"), example("syllabus_updated")]
    channel_type = {"digest.j2": "webhook"}.get(name, name.split(".")[1])
    rendered = templates.render(name, digest_context(events))
    check(rendered, channel_type)
    assert rendered.title == "Canvas digest: 3 events"
    text = rendered.text
    assert "course_completed" in text and "Isaac Newton" in text
    assert "Computer Science I" in text and "2019-11-05 08:38 EST" in text
    assert "Linear Algebra" in text
    assert "course 565" in text  # syllabus_updated has no names: its course
    assert len([line for line in text.split("\n") if line.startswith("• ")]) == 3
    if channel_type == "email":
        assert rendered.blocks["html"].count("<tr>") == 4  # heading row + 3 events

    grouped = templates.render(
        name, digest_context(events, count=5, group={"body.course.id": "21070000000000565"})
    )
    assert grouped.title == "Canvas digest: 5 events (course.id 565)"
    assert "… and 2 more" in grouped.text


@pytest.mark.parametrize("name", DIGESTS)
def test_digest_templates_cope_with_odd_events(
    templates: Templates, autoescaping: Templates, name: str
) -> None:
    odd = [{}, {"metadata": None, "body": "x"}, "not an event", {"metadata": {"event_name": "e"}}]
    hostile = copy.deepcopy(example("course_completed"))
    hostile["body"]["user"]["name"] = SCRIPT
    rendered = templates.render(name, digest_context([*odd, hostile]))
    assert rendered.title == "Canvas digest: 5 events"
    assert "json" not in rendered.blocks
    if "slack" in name:
        json.loads(rendered.blocks["slack_blocks"])
    if "email" in name:
        for environment in (templates, autoescaping):
            html = environment.render(name, digest_context([*odd, hostile])).blocks["html"]
            assert "<script" not in html and "&lt;script&gt;" in html
    empty = templates.render(name, {**context(example("course_created")), "events": []})
    assert empty.title == "Canvas digest: 0 events"
    assert "No events." in empty.text
    many = [example("course_created")] * 120
    assert "more" in templates.render(name, digest_context(many)).text


def test_every_template_compiles(templates: Templates) -> None:
    paths = sorted(TEMPLATES.rglob("*.j2"))
    assert len(paths) > 100  # the layouts and events/ too
    for path in paths:
        name = str(path.relative_to(TEMPLATES))
        assert templates.check(name) is None, name
