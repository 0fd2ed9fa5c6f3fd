"""docs/plugins.md is kept honest: every hook documented with its exact signature, and
the guide's example plugin, validation output and plugin test really work."""

import ast
import inspect
import re
import subprocess
import sys
import textwrap
import tomllib
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from router import hookspecs
from router.cli import cli
from router.testing import event, run_router

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
EXAMPLE_MARKER = "# router_gotify.py"
TEST_MARKER = "# tests/test_gotify.py"


def hook_specs() -> dict[str, Any]:
    """Every hook in router/hookspecs.py, by name."""
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, "router_spec")
    }


def expected_heading(name: str, function: Any) -> str:
    """The heading that documents a hook: its signature as ``inspect.signature``
    renders it (string annotations keep their quotes)."""
    return f"### {name}{inspect.signature(function)}"


def guide() -> str:
    return GUIDE.read_text()


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def block_starting(marker: str) -> str:
    [code] = [code for _, code in code_blocks(guide()) if code.startswith(marker)]
    return code


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_hooks_exist() -> None:
    assert set(hook_specs()) == {
        "register_channels",
        "register_template_filters",
        "delivery_finished",
    }


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_hook_is_documented_with_its_exact_signature(name: str) -> None:
    heading = expected_heading(name, hook_specs()[name])
    assert heading in guide().splitlines(), (
        f"docs/plugins.md needs a section for hook {name!r} headed exactly:\n{heading}"
    )


def test_hook_reference_documents_only_hooks() -> None:
    reference = section(guide(), "## Hook reference")
    headings = [line for line in reference.splitlines() if line.startswith("### ")]
    assert headings == [expected_heading(name, f) for name, f in _in_source_order()]


def _in_source_order() -> list[tuple[str, Any]]:
    return sorted(hook_specs().items(), key=lambda item: item[1].__code__.co_firstlineno)


def test_example_plugin_is_complete_and_short() -> None:
    code = block_starting(EXAMPLE_MARKER)
    assert len(code.splitlines()) <= 45
    compile(code, "router_gotify.py", "exec")


# -- the example plugin, loaded from the guide, in a real router ---------------------


class FakeGotify:
    """A Gotify server's POST /message on 127.0.0.1, with scripted answers."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.script: deque[tuple[int, dict[str, str]]] = deque()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.script:
            status, headers = self.script.popleft()
            return web.Response(status=status, headers=headers, text=f"scripted {status}")
        self.received.append(body)
        return web.Response(text="1")


@pytest.fixture
async def gotify() -> AsyncIterator[FakeGotify]:
    fake = FakeGotify()
    app = web.Application()
    app.router.add_post("/webhook", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhook"
    yield fake
    await runner.cleanup()


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "router_gotify.py").write_text(block_starting(EXAMPLE_MARKER))
    return directory


def gotify_rules(url: str) -> str:
    return f"""
        version: 1
        channels:
          ops: {{type: gotify, url: "{url}", timeout: 5}}
        rules:
          - {{name: all, events: ["*"], notify: [ops]}}
    """


async def test_guide_example_plugin_delivers(gotify: FakeGotify, plugins_dir: Path) -> None:
    async with run_router(gotify_rules(gotify.url), plugins_dir=plugins_dir) as router:
        [info] = [i for i in router.plugins.infos if i.name == "router_gotify"]
        assert info.hooks == ("register_channels",)
        await router.send(event("course_created", {"name": "Physics 101"}))
        [delivery] = await router.wait_until_settled()
    assert (delivery.state, delivery.attempts) == ("delivered", 1)
    assert gotify.received == [{"title": "Course created: Physics 101", "message": delivery.text}]


@pytest.mark.parametrize(
    ("answers", "state", "attempts", "error"),
    [
        ([(503, {}), (429, {"Retry-After": "0"})], "delivered", 3, None),
        ([(400, {})], "dead", 1, "HTTP 400: scripted 400"),
    ],
)
async def test_guide_example_plugin_retries_and_dead_letters(
    gotify: FakeGotify,
    plugins_dir: Path,
    answers: list[tuple[int, dict[str, str]]],
    state: str,
    attempts: int,
    error: str | None,
) -> None:
    gotify.script.extend(answers)
    async with run_router(gotify_rules(gotify.url), plugins_dir=plugins_dir) as router:
        await router.send(event("course_created", {"name": "Physics 101"}))
        [delivery] = await router.wait_until_settled()
    assert (delivery.state, delivery.attempts, delivery.last_error) == (state, attempts, error)


async def test_guide_example_plugin_without_url_logs(plugins_dir: Path) -> None:
    async with run_router(gotify_rules(""), plugins_dir=plugins_dir) as router:
        await router.send(event("course_created", {"name": "Physics 101"}))
        [delivery] = await router.wait_until_settled()
    assert delivery.state == "logged"


def test_guide_validate_output_is_real(
    plugins_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = guide()
    [rules] = [code for lang, code in code_blocks(text) if lang == "yaml" and "\n    ur: " in code]
    [shown] = [code for _, code in code_blocks(text) if code.startswith("$ router validate")]
    (tmp_path / "rules.yaml").write_text(rules)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli,
        [
            "validate",
            "rules.yaml",
            "--plugins-dir",
            str(plugins_dir),
            "--templates",
            str(ROOT / "templates"),
        ],
    )
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("rules.yaml:")]
    assert errors == [line for line in shown.splitlines() if line.startswith("rules.yaml:")]


def test_guide_pyproject_builds_and_installs_the_testing_extra() -> None:
    project = tomllib.loads(block_starting("[build-system]"))
    assert project["build-system"]["build-backend"] == "hatchling.build"
    assert project["project"]["entry-points"]["router"] == {"gotify": "router_gotify"}
    assert project["project"]["optional-dependencies"]["test"] == ["router[testing]"]
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    testing = {re.split(r"[<>=\[]", req)[0] for req in ours["optional-dependencies"]["testing"]}
    assert {"pytest", "pytest-asyncio", "pytest-aiohttp"} <= testing


def python_imports(code: str) -> set[str]:
    """The modules a piece of Python code imports from (``import x`` / ``from x ...``)."""
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_guide_imports_the_router_only_from_its_public_modules() -> None:
    """Plugins import from ``router`` (tests also from ``router.testing``), never from
    the modules behind them; the same holds for the built-in and example plugins."""
    public = {"router", "router.testing"}
    blocks = [code for lang, code in code_blocks(guide()) if lang == "python"]
    imported = set().union(*(python_imports(textwrap.dedent(code)) for code in blocks))
    assert "router" in imported
    assert {m for m in imported if m.split(".")[0] == "router"} <= public
    plugins = [*(ROOT / "plugins").glob("*/*.py"), *(ROOT / "examples").glob("*/src/*/*.py")]
    assert plugins
    for path in plugins:
        inside = {m for m in python_imports(path.read_text()) if m.split(".")[0] == "router"}
        assert inside <= {"router"}, path


def test_delivery_finished_docs_agree_with_the_hookspec() -> None:
    """Both say that attempts count from 1 and that attempt 0 is a delivery born dead."""
    spec = inspect.getdoc(hook_specs()["delivery_finished"]) or ""
    assert "attempt 0 (status ``dead``) is a delivery born dead" in " ".join(spec.split())
    docs = " ".join(section(guide(), "## Hook reference").split())
    assert "`attempt` (1 for the first try; 0 for a delivery born dead" in docs
    assert "`delivery_finished` sees it once, with `attempt` 0, `status` `dead`" in docs


def test_guide_plugin_test_passes(plugins_dir: Path, tmp_path: Path) -> None:
    """The guide's example test file, run by pytest against the guide's plugin."""
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_gotify.py").write_text(block_starting(TEST_MARKER))
    # The guide's pyproject.toml, as copied: its pytest settings run the test.
    (project / "pyproject.toml").write_text(block_starting("[build-system]"))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env={"PYTHONPATH": str(plugins_dir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
