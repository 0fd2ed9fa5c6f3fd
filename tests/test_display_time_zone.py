"""`defaults.display_time_zone`: one institution-wide zone for every time a message
shows, instead of each event's own metadata.time_zone. An unknown zone is a validate
error naming the line."""

import textwrap
from pathlib import Path

import pytest

from router.config_source import ConfigErrors
from router.plugins import load_plugins
from router.rules import load_rules
from router.templates import Templates
from router.testing import run_router
from tests.conftest import ROOT, example

CHANNEL_TYPES = load_plugins().channel_types
TEMPLATES = Templates(ROOT / "templates")


def rules_file(tmp_path: Path, defaults: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            version: 1
            defaults:
            {textwrap.indent(defaults, "  ")}
            channels:
              hook: {{type: webhook}}
            rules:
              - {{name: all, events: ["*"], notify: [hook]}}
            """
        )
    )
    return path


def test_display_time_zone_is_validated(tmp_path: Path) -> None:
    rules = load_rules(
        rules_file(tmp_path, "display_time_zone: Europe/Berlin"), CHANNEL_TYPES, templates=TEMPLATES
    )
    assert rules.defaults.display_time_zone == "Europe/Berlin"
    assert load_rules(rules_file(tmp_path, "{}"), CHANNEL_TYPES).defaults.display_time_zone is None
    for bad in ("Mars/Olympus_Mons", "'../../etc/passwd'", "''", "7"):
        with pytest.raises(ConfigErrors) as caught:
            load_rules(rules_file(tmp_path, f"display_time_zone: {bad}"), CHANNEL_TYPES)
        [error] = caught.value.errors
        assert (error.line, error.path) == (3, "defaults.display_time_zone"), bad
        assert "unknown time zone" in error.message or "string" in error.message, error.message
    with pytest.raises(ConfigErrors) as caught:
        load_rules(rules_file(tmp_path, "display_time_zone: Mars/Olympus_Mons"), CHANNEL_TYPES)
    assert caught.value.errors[0].message == (
        "unknown time zone 'Mars/Olympus_Mons' (an IANA name such as 'America/New_York')"
    )


async def test_every_time_is_shown_in_the_display_time_zone() -> None:
    completed = example("course_completed")  # metadata.time_zone: America/New_York
    graded = example("grade_change")  # metadata.time_zone: America/Denver
    updated = example("course_updated")  # no metadata.time_zone
    rules = """
        version: 1
        defaults: {time_zone: America/Chicago, display_time_zone: Europe/Berlin}
        channels:
          hook: {type: webhook}
          chat: {type: slack, token: "", channel: "#canvas"}
        rules:
          - {name: all, events: ["*"], notify: [hook, chat]}
    """
    async with run_router(rules) as router:
        await router.send([completed, graded, updated])
        deliveries = await router.wait_until_settled()
    texts = {(d.event_name, d.channel): d.text for d in deliveries}
    slack = {d.event_name: d.blocks["slack_blocks"] for d in deliveries if d.channel == "chat"}
    # 2019-11-05T13:38:00Z, 2019-11-01T19:11:05Z and 2019-11-05 07:38 -0800 in Berlin.
    assert "2019-11-05 14:38 CET" in texts[("course_completed", "hook")]
    assert "2019-11-01 20:11 CET" in texts[("grade_change", "hook")]
    assert "2019-11-01 20:11 CET" in texts[("grade_change", "chat")]
    assert "2019-11-01 20:11 CET" in slack["grade_change"]  # the footer too
    assert "2019-11-05 16:38 CET" in texts[("course_updated", "hook")]
    assert not [text for text in texts.values() if "EST" in text or "MST" in text]


async def test_without_it_each_event_keeps_its_own_zone() -> None:
    rules = """
        version: 1
        defaults: {time_zone: America/Chicago}
        channels: {hook: {type: webhook}}
        rules:
          - {name: all, events: ["*"], notify: [hook]}
    """
    async with run_router(rules) as router:
        await router.send([example("grade_change"), example("course_updated")])
        deliveries = await router.wait_until_settled()
    texts = {d.event_name: d.text for d in deliveries}
    assert "2019-11-01 13:11 MDT" in texts["grade_change"]  # the event's own zone
    assert "2019-11-05 09:38 CST" in texts["course_updated"]  # defaults.time_zone
