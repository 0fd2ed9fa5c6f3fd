"""docs/enrichment.md stays true: every YAML example is a rules file the router accepts
without a warning, and the table of `enrich:` names matches the lookups the router has."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from router.canvas_lookups import LOOKUPS
from router.cli import cli
from router.plugins import load_plugins
from router.rules import load_rules
from router.templates import Templates
from tests.conftest import ROOT

PAGE = ROOT / "docs" / "enrichment.md"
YAML = re.findall(r"^```yaml\n(.*?)^```$", PAGE.read_text(), flags=re.M | re.S)
ENV = {"CANVAS_API_TOKEN": "t-1", "CANVAS_INBOX_TOKEN": "t-2", "SLACK_BOT_TOKEN": "xoxb-1"}


def test_the_page_has_examples() -> None:
    assert len(YAML) >= 4


@pytest.mark.parametrize("text", YAML, ids=[f"yaml-{n}" for n in range(len(YAML))])
def test_every_yaml_example_validates_without_warnings(tmp_path: Path, text: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    rules = load_rules(
        path,
        load_plugins().channel_types,
        templates=Templates(ROOT / "templates"),
        environ=ENV,
    )
    assert rules.warnings == []
    assert rules.canvas is not None
    assert any(rule.enrich for rule in rules.rules)


def test_the_table_documents_every_name_and_its_call() -> None:
    rows = {
        match[1]: match[2]
        for match in re.finditer(r"^\| `(\w+)` \| .*? \| `(GET [^`]+)`", PAGE.read_text(), re.M)
    }
    assert rows == {name: lookup.call for name, lookup in LOOKUPS.items()}


def test_router_test_shows_what_an_enriching_rule_would_send(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(YAML[0])
    result = CliRunner().invoke(
        cli,
        [
            "test",
            str(rules),
            str(ROOT / "examples" / "events" / "syllabus_updated.json"),
            "--templates",
            str(ROOT / "templates"),
        ],
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    assert "syllabus-changed" in result.output
    assert "router test does not call the Canvas API" in result.output
