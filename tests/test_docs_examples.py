"""Every example in README.md, docs/*.md and bench/README.md is checked against the real router.

A fenced block's kind comes from its language, and from a marker on the line just
before it, ``<!-- check: KIND [key=value ...] -->``:

- ``yaml``: a whole rules file that ``router validate --strict`` accepts as it is.
  ``rules-fragment``: a part of one (a ``channels:`` or ``rules:`` section), completed
  (``version: 1``; a log-only webhook for every channel a rule names but the block does
  not define; a rule notifying every channel the block defines) and then validated the
  same way; ``files=a,b`` creates those files first, for ``*_file`` keys.
  ``rules-invalid``: ``router validate`` must reject it with every ``rules.yaml:`` line
  of the next block (the output the page shows).
- ``sh``: every command is parsed. ``router`` commands by the CLI itself (click parses
  and type-checks every option and argument, nothing runs), ``curl`` lines are sent to a
  real router and must hit one of its routes, other programs are checked for the files,
  extras and modules they name. An unknown program fails the test, so a new kind of
  example gets a check.
- a block without language whose lines start with ``router ``: a usage synopsis; it
  shows every ``--option`` of that command and no other, and every command of the CLI
  has one.
- ``jinja`` marked ``template event=NAME``: saved as ``NAME.j2`` and rendered by
  ``router test`` on ``examples/events/NAME.json``.
- ``yaml`` marked ``manifest``: Kubernetes documents, each with apiVersion and kind.
- ``python`` compiles, ``toml`` parses.
- any block marked ``file path=PATH`` (a compose file, a Dockerfile, a piece of the
  example rules.yaml): it must appear verbatim in that file of the repository.

Also checked here: the README's two quick-start commands (``.ci/run`` runs the second)
and its length; every ``ROUTER_*`` name in the pages is a setting, and every setting is
in docs/operations.md; relative links and their anchors resolve.
"""

import glob
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from aiohttp.test_utils import make_mocked_request
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from router.cli import cli
from router.settings import Settings
from router.testing import run_router

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
GUIDE_PLUGIN_MARKER = "# router_gotify.py"
MARKER = re.compile(r"^<!-- check: (?P<kind>[\w-]+)(?P<options>[^>]*?)\s*-->$")
FENCE = re.compile(r"^```(?P<lang>\w*)[^\n]*$")
QUICK_START = [
    "python3.11 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/router serve",
    "python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]'"
    " -e examples/router-mattermost && .venv/bin/pytest",
]
# ROUTER_* variables that are not settings: the plugin trace, the container test's cache.
OTHER_ROUTER_VARIABLES = {"ROUTER_TRACE_PLUGINS", "ROUTER_CONTAINER_CACHE"}
# Values for ${VAR} references without a default, so that validation sees them set.
SECRET_VALUE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Block:
    """One fenced block of a page, with its marker and the block after it."""

    page: Path
    line: int
    lang: str
    code: str
    kind: str = ""
    options: dict[str, str] = field(default_factory=dict)
    following: "Block | None" = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        end = lines.index("```", index + 1)
        block = Block(page, index + 1, fence["lang"], "\n".join(lines[index + 1 : end]) + "\n")
        marker = MARKER.match(lines[index - 1]) if index else None
        if marker:
            block.kind = marker["kind"]
            block.options = dict(item.split("=", 1) for item in marker["options"].split())
        if found:
            found[-1].following = block
        found.append(block)
        index = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def blocks(lang: str) -> list[Block]:
    return [block for block in ALL_BLOCKS if block.lang == lang]


def ids(items: list[Block]) -> list[str]:
    return [block.where for block in items]


def test_every_page_has_checked_examples() -> None:
    """The parser finds the blocks (a broken fence pattern would check nothing)."""
    for page in PAGES:
        assert blocks_of(page), f"no code blocks found in {page}"
    kinds = {block.kind for block in ALL_BLOCKS}
    assert {"rules-fragment", "rules-invalid", "template", "file"} <= kinds


# -- the front door ------------------------------------------------------------------


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 250


def test_quick_start_commands_are_the_two_and_ci_runs_the_second() -> None:
    quick = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [
        line
        for block in blocks_of_text(quick)
        for line in block.splitlines()
        if line.startswith("python3.11")
    ]
    assert commands == QUICK_START
    assert QUICK_START[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def blocks_of_text(text: str) -> list[str]:
    return re.findall(r"^```\w*\n(.*?)^```", text, re.S | re.M)


def test_commands_after_the_quick_start_name_the_venv() -> None:
    """Commands after the quick start use `.venv/bin/router`: a bare `router` is not on
    the PATH of someone who followed it."""
    after = README.read_text().split("## Quick start", 1)[1]
    for code in blocks_of_text(after):
        for command in commands_in(code):
            assert command[0] != "router", f"README: use .venv/bin/router in {command}"


# -- YAML: through router validate ---------------------------------------------------


@pytest.fixture
def guide_plugin_dir(tmp_path: Path) -> Path:
    """docs/plugins.md's example plugin, so that examples may use `type: gotify`."""
    guide = (ROOT / "docs" / "plugins.md").read_text()
    [code] = [code for code in blocks_of_text(guide) if code.startswith(GUIDE_PLUGIN_MARKER)]
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "router_gotify.py").write_text(code)
    return directory


def completed(fragment: dict[str, Any]) -> dict[str, Any]:
    """A rules file around a fragment: every channel defined, notified and known."""
    rules_file = {"version": 1, **fragment}
    channels = dict(rules_file.get("channels") or {})
    for rule in rules_file.get("rules") or []:
        for name in rule.get("notify", []):
            channels.setdefault(name, {"type": "webhook", "url": ""})
    rules_file["channels"] = channels
    if "rules" not in rules_file:
        rules_file["rules"] = [{"name": "docs-example", "events": ["*"], "notify": [*channels]}]
    return rules_file


def validate(
    code: str, directory: Path, plugins_dir: Path, monkeypatch: pytest.MonkeyPatch, *extra: str
) -> tuple[int, str]:
    for name in re.findall(r"\$\{(\w+)\}", code):
        monkeypatch.setenv(name, SECRET_VALUE if name.endswith("SECRET") else "example-value")
    (directory / "rules.yaml").write_text(code)
    monkeypatch.chdir(directory)
    result = CliRunner().invoke(
        cli,
        [
            "validate",
            "rules.yaml",
            "--templates",
            str(ROOT / "templates"),
            "--plugins-dir",
            str(plugins_dir),
            *extra,
        ],
    )
    return result.exit_code, result.output


YAML = [
    block for block in blocks("yaml") if block.kind not in ("rules-invalid", "file", "manifest")
]


@pytest.mark.parametrize("block", YAML, ids=ids(YAML))
def test_yaml_example_validates(
    block: Block, tmp_path: Path, guide_plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert block.kind in ("", "yaml", "rules", "rules-fragment"), f"{block.where}: {block.kind!r}"
    document = yaml.safe_load(block.code)
    if block.kind == "rules-fragment":
        assert "version" not in document, f"{block.where}: a whole file, not a fragment"
        code = yaml.safe_dump(completed(document), sort_keys=False)
    else:
        assert "version" in document, f"{block.where}: mark a fragment `rules-fragment`"
        code = block.code
    for name in filter(None, block.options.get("files", "").split(",")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("example-secret\n")
    status, output = validate(code, tmp_path, guide_plugin_dir, monkeypatch, "--strict")
    assert status == 0, f"{block.where}:\n{code}\n{output}"
    assert "rules.yaml: OK" in output


INVALID = [block for block in blocks("yaml") if block.kind == "rules-invalid"]


@pytest.mark.parametrize("block", INVALID, ids=ids(INVALID))
def test_invalid_yaml_example_shows_the_real_errors(
    block: Block, tmp_path: Path, guide_plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert block.following is not None, f"{block.where}: the errors must follow"
    shown = [line for line in block.following.code.splitlines() if line.startswith("rules.yaml:")]
    assert shown, f"{block.where}: the next block shows no rules.yaml: lines"
    status, output = validate(block.code, tmp_path, guide_plugin_dir, monkeypatch)
    assert status == 1
    printed = output.splitlines()
    assert [line for line in shown if line not in printed] == [], output


MANIFESTS = [block for block in blocks("yaml") if block.kind == "manifest"]


@pytest.mark.parametrize("block", MANIFESTS, ids=ids(MANIFESTS))
def test_kubernetes_manifest_example_is_well_formed(block: Block) -> None:
    """A Kubernetes manifest: YAML documents with apiVersion and kind, and every
    ROUTER_* variable it sets is a setting."""
    documents = [doc for doc in yaml.safe_load_all(block.code) if doc is not None]
    assert documents, block.where
    for document in documents:
        assert {"apiVersion", "kind"} <= set(document), f"{block.where}: {document}"
    for name in re.findall(r"name: (ROUTER_[A-Z_]+)", block.code):
        assert name in settings_variables(), f"{block.where}: {name} is not a setting"


# -- templates: rendered by router test ----------------------------------------------

TEMPLATES = [block for block in blocks("jinja") if block.kind == "template"]


@pytest.mark.parametrize("block", TEMPLATES, ids=ids(TEMPLATES))
def test_template_example_renders(block: Block, tmp_path: Path) -> None:
    event = block.options.get("event")
    assert event, f"{block.where}: say which event: <!-- check: template event=NAME -->"
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / f"{event}.j2").write_text(block.code)
    (tmp_path / "rules.yaml").write_text(
        "version: 1\n"
        "channels: {ops: {type: webhook, url: ''}}\n"
        f"rules: [{{name: example, events: [{event}], notify: [ops]}}]\n"
    )
    result = CliRunner().invoke(
        cli,
        [
            "test",
            str(tmp_path / "rules.yaml"),
            str(ROOT / "examples" / "events" / f"{event}.json"),
            "--templates",
            str(templates),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "+ example -> ops" in result.output
    assert "title: " in result.output and "error" not in result.output.lower(), result.output


# -- shell: parsed by the CLI, curl against the real routes --------------------------


def commands_in(code: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments and a `$ `
    prompt dropped, and `&&`, `||`, `;` and `|` separating commands."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        current: list[str] = []
        for token in shlex.split(line, comments=True):
            if token in ("&&", "||", ";", "|"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands


def settings_variables() -> set[str]:
    return {f"ROUTER_{name.upper()}" for name in Settings.model_fields}


def without_assignments(command: list[str]) -> list[str]:
    """The command without its leading `NAME=value` words, each `ROUTER_*` a setting."""
    while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]):
        name = command.pop(0).split("=", 1)[0]
        if name.startswith("ROUTER_"):
            assert name in settings_variables() | OTHER_ROUTER_VARIABLES, name
    return command


def parse_router_command(args: list[str]) -> click.Context:
    """Parse `router ARGS` as the CLI would, without running it: click checks every
    option, argument, choice and type. Globs are expanded from the repository root."""
    expanded: list[str] = []
    for arg in args:
        if "/" in arg and any(char in arg for char in "*?["):  # a path; not `--channel 'slack-*'`
            matches = sorted(glob.glob(arg, root_dir=ROOT))
            assert matches, f"{arg} matches no file"
            expanded.extend(matches)
        else:
            expanded.append(arg)
    parent = click.Context(cli, info_name="router")
    command: click.Command = cli
    while isinstance(command, click.Group):
        assert expanded, f"router {' '.join(args)}: no command"
        name, expanded = expanded[0], expanded[1:]
        found = command.get_command(parent, name)
        assert found is not None, f"router has no command {name!r}"
        command = found
        if isinstance(command, click.Group):
            parent = click.Context(command, info_name=name, parent=parent)
    return command.make_context(command.name or "", expanded, parent=parent)


def check_pip(args: list[str]) -> None:
    assert args[0] in ("install", "show"), args
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    for arg in args[1:]:
        target = re.fullmatch(r"(?P<path>\.[^\[]*|examples/[^\[]*)(\[(?P<extras>[\w,]+)\])?", arg)
        if target:
            assert (ROOT / target["path"]).exists(), arg
            for extra in filter(None, (target["extras"] or "").split(",")):
                assert extra in extras, f"pyproject.toml has no extra {extra!r}"


def check_container_tool(args: list[str]) -> None:
    """A container or cluster command: the files it names (`-f`, `--file`) exist."""
    words = iter(args)
    for word in words:
        if word in ("-f", "--file", "--filename"):
            name = next(words)
            assert (ROOT / name).exists(), f"{name} does not exist"
        elif word.startswith(("--file=", "--filename=")):
            name = word.split("=", 1)[1]
            assert (ROOT / name).exists(), f"{name} does not exist"


def check_python(args: list[str]) -> None:
    assert args[0] == "-m", args
    module = args[1]
    if module in ("venv", "pip", "pytest"):
        return
    assert module.split(".")[0] == "bench", f"python -m {module}"
    path = ROOT.joinpath(*module.split("."))
    source = (path / "__main__.py" if path.is_dir() else path.with_suffix(".py")).read_text()
    for option in [arg.split("=")[0] for arg in args[2:] if arg.startswith("--")]:
        assert f'"{option}"' in source, f"python -m {module} has no option {option}"


def check_command(where: str, command: list[str]) -> None:
    command = without_assignments(list(command))
    if not command:
        return
    program, args = command[0], command[1:]
    if program in ("router", ".venv/bin/router"):
        parse_router_command(args)
    elif program == "curl":
        curl_request(args)  # sent to a real router by test_curl_examples_hit_real_routes
    elif program in ("pip", ".venv/bin/pip"):
        check_pip(args)
    elif program in ("python", "python3.11", ".venv/bin/python"):
        check_python(args)
    elif program == ".venv/bin/pytest":
        assert all((ROOT / arg).exists() for arg in args if not arg.startswith("-")), args
    elif program == ".venv/bin/ruff":
        assert args[0] in ("check", "format"), args
    elif program == ".venv/bin/lint-imports":
        config = tomllib.loads((ROOT / "pyproject.toml").read_text())
        assert config["tool"]["importlinter"]["contracts"], "no import contracts"
    elif program == "export":
        without_assignments(args)
    elif program == "apt-get":
        assert args[0] in ("update", "install"), args
    elif program in ("docker", "podman", "buildah", "kubectl"):
        check_container_tool(args)
    elif program == ".ci/run":
        assert (ROOT / ".ci" / "run").exists()
    else:
        pytest.fail(f"{where}: no check for `{program}`; add one to tests/test_docs_examples.py")


SHELL = blocks("sh")


@pytest.mark.parametrize("block", SHELL, ids=ids(SHELL))
def test_shell_example_parses(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    commands = commands_in(block.code)
    assert commands, f"{block.where}: no command"
    for command in commands:
        try:
            check_command(block.where, command)
        except click.ClickException as exc:
            pytest.fail(f"{block.where}: {shlex.join(command)}: {exc.format_message()}")


@pytest.mark.parametrize(
    "line",
    [
        ".venv/bin/router serve --prot 8080",  # no such option
        ".venv/bin/router dlq show forty-two",  # not an int
        ".venv/bin/router deliveries --state lost",  # not a choice
        "router validate rules.yaml && router tset rules.yaml x.json",  # no such command
        "ROUTER_NO_SUCH_SETTING=1 .venv/bin/router serve",
        ".venv/bin/pip install -e '.[tests]'",  # no such extra
        ".venv/bin/python -m bench --fast",
        "podman build -f Dockerfile.missing .",
        "curl -s localhost:9090/events",  # not the router's address
        "wget localhost:8080/metrics",  # no check for this program
    ],
)
def test_shell_checks_reject_what_is_wrong(line: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: each of these lines is refused."""
    monkeypatch.chdir(ROOT)
    with pytest.raises((AssertionError, click.ClickException, pytest.fail.Exception)):
        for command in commands_in(line):
            check_command("example", command)


def curl_request(args: list[str]) -> tuple[str, str, dict[str, str], bytes | None]:
    """Method, path with query, headers and body of a curl command line."""
    method, headers, body, url = None, {}, None, None
    words = iter(args)
    for word in words:
        if word in ("-s", "-i", "-v", "--silent"):
            continue
        if word in ("-X", "--request"):
            method = next(words)
        elif word in ("-H", "--header"):
            name, value = next(words).split(":", 1)
            headers[name.strip()] = os.path.expandvars(value.strip())
        elif word in ("--data", "-d", "--data-binary"):
            data = next(words)
            body = (ROOT / data[1:]).read_bytes() if data.startswith("@") else data.encode()
        else:
            assert url is None and not word.startswith("-"), f"curl option {word} unknown here"
            url = word
    assert url is not None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    assert (parts.hostname, parts.port) == ("localhost", 8080), url
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return method or ("POST" if body is not None else "GET"), path, headers, body


def curl_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for block in SHELL:
        for command in commands_in(block.code):
            command = without_assignments(list(command))
            if command and command[0] == "curl":
                lines.append((block.where, command[1:]))
    return lines


async def test_curl_examples_hit_real_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each curl line is sent to a real router with the admin API on: its route exists
    (resolved by the app's own router) and the answer is not an error of the request."""
    lines = curl_lines()
    assert len(lines) >= 5
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", "docs-admin-token")
    monkeypatch.setenv("ROUTER_INGEST_TOKEN", "docs-ingest-token")
    rules = """
        version: 1
        channels: {audit: {type: webhook, url: ""}}
        rules: [{name: all, events: ["*"], notify: [audit]}]
    """
    async with run_router(rules, admin_token="docs-admin-token") as router:
        for where, args in lines:
            method, path, headers, body = curl_request(args)
            match = await router.app.router.resolve(make_mocked_request(method, path))
            assert match.http_exception is None, f"{where}: {method} {path}: no such route"
            response = await router.client.request(method, path, headers=headers, data=body)
            text = await response.text()
            if path == "/events":
                assert response.status == 202, f"{where}: {response.status} {text}"
            else:
                # The example's dead letter 1 may not exist: 404 from the handler is fine.
                assert response.status in (200, 404), f"{where}: {response.status} {text}"


# -- usage synopses, other languages -------------------------------------------------

SYNOPSES = [
    block for block in blocks("") if block.code.startswith(("router ", ".venv/bin/router "))
]


def leaf_commands(command: click.Command, path: str = "router") -> dict[str, click.Command]:
    if not isinstance(command, click.Group):
        return {path: command}
    parent = click.Context(command)
    return {
        name: leaf
        for sub in command.list_commands(parent)
        for name, leaf in leaf_commands(command.get_command(parent, sub), f"{path} {sub}").items()
    }


def synopsis_entries(block: Block) -> list[str]:
    """Each command of a synopsis, its continuation lines joined."""
    entries: list[str] = []
    for line in block.code.splitlines():
        if line.startswith((" ", "\t")) and entries:
            entries[-1] += line
        elif line.strip():
            entries.append(line.removeprefix(".venv/bin/"))
    return entries


@pytest.mark.parametrize("block", SYNOPSES, ids=ids(SYNOPSES))
def test_usage_synopsis_shows_every_option_of_the_command(block: Block) -> None:
    commands = leaf_commands(cli)
    for entry in synopsis_entries(block):
        [name] = [name for name in commands if f"{entry} ".startswith(f"{name} ")]
        options = {opt for param in commands[name].params for opt in param.opts}
        options = {opt for opt in options if opt.startswith("--")}
        shown = set(re.findall(r"--[a-z][a-z-]*", entry))
        assert shown == options, f"{block.where}: {entry}: not shown {options - shown}, " + (
            f"unknown {shown - options}"
        )


def test_every_command_has_a_synopsis() -> None:
    shown = {
        name
        for block in SYNOPSES
        for entry in synopsis_entries(block)
        for name in leaf_commands(cli)
        if f"{entry} ".startswith(f"{name} ")
    }
    assert set(leaf_commands(cli)) - shown == set()


PYTHON = blocks("python")


@pytest.mark.parametrize("block", PYTHON, ids=ids(PYTHON))
def test_python_example_compiles(block: Block) -> None:
    compile(block.code, block.where, "exec")


TOML = blocks("toml")


@pytest.mark.parametrize("block", TOML, ids=ids(TOML))
def test_toml_example_parses(block: Block) -> None:
    tomllib.loads(block.code)


COPIES = [block for block in ALL_BLOCKS if block.kind == "file"]


@pytest.mark.parametrize("block", COPIES, ids=ids(COPIES))
def test_copy_of_a_file_matches_it(block: Block) -> None:
    path = ROOT / block.options["path"]
    assert block.code in path.read_text(), f"{block.where}: not as in {block.options['path']}"


# -- names and links -----------------------------------------------------------------


def test_router_variables_in_docs_are_real_and_every_setting_is_documented() -> None:
    text = "\n".join(page.read_text() for page in PAGES)
    named = set(re.findall(r"\bROUTER_[A-Z_]*[A-Z]\b", text))
    assert named - settings_variables() - OTHER_ROUTER_VARIABLES == set()
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert {name for name in settings_variables() if name not in operations} == set()


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a page, and its explicit `<a id>` ones."""
    text = page.read_text()
    found = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found


LINKED = [*PAGES, ROOT / "bench" / "NOTES.md"]


@pytest.mark.parametrize("page", LINKED, ids=[str(p.relative_to(ROOT)) for p in LINKED])
def test_relative_links_resolve(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.relative_to(ROOT)}: broken link {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.relative_to(ROOT)}: no anchor {target}"


async def test_every_route_and_metric_is_documented() -> None:
    """The endpoints table and the metrics table of docs/operations.md against a real
    router with the admin API on: every route and metric family is named there, and
    every `router_*` metric named in the pages exists."""
    text = "\n".join(page.read_text() for page in PAGES)
    rules = """
        version: 1
        channels: {audit: {type: webhook, url: ""}}
        rules: [{name: all, events: ["*"], notify: [audit]}]
    """
    async with run_router(rules, admin_token="docs-admin-token") as router:
        paths = {route.resource.canonical for route in router.app.router.routes()}
        response = await router.client.get("/metrics")
        exposition = await response.text()
    assert {"/events", "/metrics", "/-/dlq/{id}"} <= paths
    assert {path for path in paths if f"{path}`" not in text} == set()
    families = {
        family.name
        for family in text_string_to_metric_families(exposition)
        # prometheus-client also exposes each counter's start time as `<name>_created`.
        if family.name.startswith("router_") and not family.name.endswith("_created")
    }
    assert families, exposition
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert {name for name in families if f"`{name}" not in operations} == set()
    # Metric names: the metrics section's, and elsewhere the unmistakable ones (plugin
    # modules are named router_* too).
    metrics_section = operations.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(router_[a-z_]+)`", metrics_section)) | set(
        re.findall(r"`(router_[a-z_]+_(?:total|seconds|bytes))`", text)
    )
    assert len(named) > 10
    assert {name for name in named if name.removesuffix("_total") not in families} == set()
