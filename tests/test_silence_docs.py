"""docs/silences.md: its rules file validates strictly, every shell line parses with
the real CLI (nothing runs), and the synopsis shows every option of the silence
commands (the conventions of the docs' example checks)."""

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from router.cli import cli
from tests.conftest import ROOT

PAGE = ROOT / "docs" / "silences.md"


def fenced(lang: str) -> list[str]:
    """The page's fenced blocks of this language ("" for none), in order."""
    found, current, kind = [], None, ""
    for line in PAGE.read_text().splitlines():
        if current is None and line.startswith("```"):
            current, kind = [], line[3:].strip()
        elif current is not None and line == "```":
            if kind == lang:
                found.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return found


def test_the_rules_file_validates(tmp_path: Path) -> None:
    [text] = fenced("yaml")
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    result = CliRunner().invoke(cli, ["validate", "--strict", str(rules)])
    assert result.exit_code == 0, result.output


def parse(words: list[str]) -> None:
    """Resolve a router command line as click would, without running it."""
    command: click.Command = cli
    context = None
    args = words
    while isinstance(command, click.Group) and args:
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"no command {args[0]!r}"
        context = click.Context(command, parent=context)
        command, args = sub, args[1:]
    command.make_context(command.name or "", list(args), parent=context)


@pytest.mark.parametrize(
    "line", [line for block in fenced("sh") for line in block.splitlines() if line.strip()]
)
def test_every_shell_line_parses(line: str) -> None:
    words = shlex.split(line)
    assert words[0] == "router"
    parse(words[1:])


def test_the_checks_can_fail() -> None:
    for bad in ("silence add --rulez x", "silence expire", "test r.yaml --db x --show many"):
        with pytest.raises((click.ClickException, AssertionError)):
            parse(shlex.split(bad))


def test_the_synopsis_shows_every_option() -> None:
    synopsis = [b for b in fenced("") if b.startswith("router silence")]
    assert synopsis, "no synopsis of router silence"
    lines = synopsis[0].splitlines()
    group = cli.get_command(click.Context(cli), "silence")
    assert isinstance(group, click.Group)
    assert [line.split()[2] for line in lines] == list(group.commands)
    for line in lines:
        command = group.commands[line.split()[2]]
        shown = set(re.findall(r"--[\w-]+", line))
        options = {o for p in command.params for o in p.opts if o.startswith("--")}
        assert shown == options - {"--help"}, line
