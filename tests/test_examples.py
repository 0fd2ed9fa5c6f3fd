"""The shipped rules.yaml and templates handle every Canvas example event cleanly."""

from pathlib import Path

from router.dryrun import dry_run
from router.plugins import load_plugins
from router.routing import build_router
from router.settings import Settings
from tests.conftest import EXAMPLES, ROOT


def test_every_example_event_through_the_shipped_rules_and_templates() -> None:
    settings = Settings(rules=ROOT / "rules.yaml", templates=ROOT / "templates")
    router = build_router(settings, load_plugins())
    files = sorted(Path(EXAMPLES).glob("*.json"))
    reports = dry_run(router, files)
    assert len(reports) == len(files) > 80  # every example Canvas documents
    for report in reports:
        assert "audit-everything" in report.fired, report.event_name
        for message in report.messages:
            assert "error" not in message, (report.event_name, message)
            if message["channel"] == "audit":  # body: event, so nothing to render
                assert message["template"] is None
                continue
            assert message["title"].strip(), (report.event_name, message["channel"])
            assert "\n" not in message["title"]
    fired = {r.event_name: set(r.fired) for r in reports}
    assert "course-completed" in fired["course_completed"]
    assert "new-sections" in fired["course_section_created"]
    # The example syllabus bodies are equal: "changed" must not fire.
    assert "syllabus-changed" not in fired["syllabus_updated"]
