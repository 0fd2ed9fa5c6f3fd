"""docs/channels.md's chat channel section is kept honest: every rules file in it loads
with the real plugins, and it documents every chat channel type and template block."""

import re
from pathlib import Path

import pytest

from router.plugins import load_plugins
from router.rules import load_rules

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "channels.md"
SECTION = "## Chat channels: Teams, Discord, Google Chat and Apprise"


def chat_section() -> str:
    text = DOC.read_text()
    start = text.index(f"\n{SECTION}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def yaml_blocks() -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", chat_section(), re.S | re.M)


def test_the_section_has_an_example_per_chat_channel() -> None:
    types = [re.search(r"^    type: (\w+)$", block, re.M) for block in yaml_blocks()]
    assert [m[1] for m in types if m] == ["teams", "discord", "google_chat", "apprise"]
    for block in ("teams_card", "discord_embeds", "google_chat_cards", "link"):
        assert f"`{block}`" in chat_section()
    assert "202 Accepted" in chat_section()  # Workflows accept first, fail later


@pytest.mark.parametrize("index", range(4))
def test_example_rules_files_load(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TEAMS_WEBHOOK_URL", "DISCORD_WEBHOOK_URL", "GOOGLE_CHAT_WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml_blocks()[index])
    loaded = load_rules(rules, load_plugins().channel_types)
    assert loaded.channels and loaded.rules
