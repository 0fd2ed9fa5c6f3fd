"""The command line: validate, plugins, help, and settings from the environment."""

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from router.cli import cli
from router.settings import Settings
from router.templates import builtin_templates
from tests.conftest import ROOT


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout


def test_example_rules_file_validates() -> None:
    code, out = run("validate", str(ROOT / "rules.yaml"), "--templates", str(ROOT / "templates"))
    assert code == 0, out
    assert out.strip().endswith("OK (5 rules, 3 channels)")


def test_validate_reports_every_error_with_file_line_and_key(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            version: 1
            channels:
              hook: {type: webhook, url: "${HOOK_URL}", secret: "${HOOK_SECRET:-}", timeot: 3}
            rules:
              - name: a
                events: [course_created]
                notfy: [hook]
              - name: b
                events: [course_updated]
                notify: [hook]
                template: no_such_template
            """
        )
    )
    (tmp_path / "templates").mkdir()
    code, out = run("validate", str(rules), "--templates", str(tmp_path / "templates"))
    assert code == 1
    lines = out.strip().splitlines()
    assert lines == [
        f"{rules}:3:30: channels.hook.url: environment variable HOOK_URL is not set",
        f"{rules}:3:73: channels.hook.timeot: unknown key 'timeot' (did you mean 'timeout'?)",
        f"{rules}:5:5: rules[0]: missing required key 'notify'",
        f"{rules}:7:5: rules[0].notfy: unknown key 'notfy' (did you mean 'notify'?)",
        f"{rules}:11:15: rules[1].template: template 'no_such_template' not found for channel"
        f" 'hook' (looked for no_such_template.webhook.j2, no_such_template.j2 in"
        f" {tmp_path / 'templates'})",
        "5 error(s)",
    ]


def test_validate_checks_templates_the_rules_name(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            version: 1
            channels:
              hook: {type: webhook}
            rules:
              - {name: a, events: [x], notify: [hook], template: missing}
              - {name: b, events: [x], notify: [hook], template: broken}
              - {name: c, events: [x], notify: [hook], template: course_creatd}
            """
        )
    )
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "broken.webhook.j2").write_text("ok\n{% if %}\n")
    (templates / "course_created.j2").write_text("{{ body.name | no_such_filter }}\n")
    code, out = run("validate", str(rules), "--templates", str(templates))
    assert code == 1
    assert out.splitlines() == [
        f"{rules}:5:54: rules[0].template: template 'missing' not found for channel 'hook'"
        f" (looked for missing.webhook.j2, missing.j2 in {templates})",
        f"{rules}:6:54: rules[1].template: template broken.webhook.j2 line 2:"
        " Expected an expression, got 'end of statement block'",
        f"{rules}:7:54: rules[2].template: template 'course_creatd' not found for channel"
        f" 'hook' (looked for course_creatd.webhook.j2, course_creatd.j2 in {templates})"
        " (did you mean 'course_created'?)",
        f"{templates}/broken.webhook.j2:2:1: Expected an expression, got 'end of statement block'",
        f"{templates}/course_created.j2:1:1: No filter named 'no_such_filter'.",
        "5 error(s)",
    ]


def test_validate_warns_of_an_event_name_one_slip_from_a_canvas_event(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            version: 1
            channels:
              hook: {type: webhook}
              spare: {type: webhook}
            rules:
              - {name: a, events: [course_complted, grade_change], notify: [hook]}
              - {name: b, events: [course_archived, "course_*"], notify: [hook]}
            """
        )
    )
    result = CliRunner().invoke(cli, ["validate", str(rules)], catch_exceptions=False)
    assert result.exit_code == 0  # a warning: any event name may arrive
    assert result.stdout.strip().endswith("OK (2 rules, 2 channels)")
    # Canvas events, globs and names unlike any (another source's) are left alone.
    assert result.stderr.splitlines() == [  # in file order
        f"warning: {rules}:4:3: channels.spare: channel 'spare' is not notified by any rule",
        f"warning: {rules}:6:24: rules[0].events[0]: 'course_complted' is not a Canvas"
        " event (did you mean 'course_completed'?); the rule fires only for events named"
        " exactly so",
    ]
    strict = CliRunner().invoke(cli, ["validate", "--strict", str(rules)])
    assert strict.exit_code == 1
    assert strict.stderr.splitlines()[-1] == "2 warning(s), and --strict"
    assert "OK" not in strict.stdout
    # The dry run says so too, before its report.
    event = ROOT / "examples" / "events" / "course_completed.json"
    dry = CliRunner().invoke(
        cli, ["test", str(rules), str(event), "--templates", str(ROOT / "templates")]
    )
    assert dry.exit_code == 0
    assert dry.stderr == result.stderr


def test_validate_shows_every_error_and_warning_in_one_run(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            version: 1
            surprise: 1
            channels:
              hook: {type: webhook, timeout: -1}
            rules:
              - name: done
                events: [course_complted]
                notify: [hook]
                if: "body.x = 1"
              - {name: other, events: [course_created], notify: [hook], template: nosuch}
            """
        )
    )
    (tmp_path / "templates").mkdir()
    args = ["validate", str(rules), "--templates", str(tmp_path / "templates")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 1
    # A top-level error and a broken channel hide neither the rules' checks (each
    # rule uses the broken channel) nor the warnings.
    # One report on one stream: the errors, the warnings, then the count on a line of
    # its own (it used to go to stderr, and ran into the last error where the two
    # streams were shown one after the other).
    assert result.stdout.splitlines() == [
        f"{rules}:2:1: surprise: unknown key 'surprise'",
        f"{rules}:4:34: channels.hook.timeout: Input should be greater than 0",
        f"{rules}:9:9: rules[0].if: invalid expression: chunk after expression",
        f"{rules}:10:71: rules[1].template: template 'nosuch' not found for channel 'hook'"
        f" (looked for nosuch.webhook.j2, nosuch.j2 in {tmp_path / 'templates'})",
        f"warning: {rules}:7:14: rules[0].events[0]: 'course_complted' is not a Canvas"
        " event (did you mean 'course_completed'?); the rule fires only for events named"
        " exactly so",
        "4 error(s), 1 warning(s)",
    ]
    assert result.stderr == ""
    # The real command, its output captured apart from its errors: the same report.
    captured = subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (captured.returncode, captured.stderr) == (1, "")
    assert captured.stdout.splitlines() == result.stdout.splitlines()


def test_validate_warns_when_deliveries_would_die_before_the_breaker_holds_them(
    tmp_path: Path,
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            version: 1
            channels:
              few: {type: webhook, max_attempts: 3}
              tight: {type: webhook, max_attempts: 3, circuit_breaker: 3}
              never: {type: webhook, max_attempts: 1, circuit_breaker: 0}
              late: {type: webhook, circuit_breaker: 12}
            rules:
              - {name: a, events: [course_created], notify: [few, tight, never, late]}
            """
        )
    )
    result = CliRunner().invoke(
        cli, ["validate", str(rules)], env={"ROUTER_MAX_ATTEMPTS": "10"}, catch_exceptions=False
    )
    assert result.exit_code == 0  # a warning
    assert result.stderr.splitlines() == [
        f"warning: {rules}:3:38: channels.few.max_attempts: max_attempts 3 is below"
        " circuit_breaker 5: deliveries are dead-lettered before the circuit breaker can hold"
        " them; raise max_attempts to at least 5 or lower circuit_breaker",
        f"warning: {rules}:6:42: channels.late.circuit_breaker: max_attempts 10 (the"
        " service's ROUTER_MAX_ATTEMPTS) is below circuit_breaker 12: deliveries are"
        " dead-lettered before the circuit breaker can hold them; raise max_attempts to at"
        " least 12 or lower circuit_breaker",
    ]
    strict = CliRunner().invoke(cli, ["validate", "--strict", str(rules)])
    assert strict.exit_code == 1


def test_the_example_rules_file_has_no_warnings() -> None:
    result = CliRunner().invoke(
        cli,
        ["validate", "--strict", str(ROOT / "rules.yaml"), "--templates", str(ROOT / "templates")],
    )
    assert result.exit_code == 0 and result.stderr == ""


def test_validate_missing_file(tmp_path: Path) -> None:
    code, out = run("validate", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert "nope.yaml:1:1: cannot read: No such file or directory" in out


def test_plugins_lists_versions_hooks_and_failures(tmp_path: Path) -> None:
    code, out = run("plugins")
    assert code == 0
    assert "webhook 0.1.0  (entry point router_webhook)" in out
    assert "hooks: register_channels" in out
    (tmp_path / "bad.py").write_text("raise ImportError('missing dependency foo')\n")
    code, out = run("plugins", "--plugins-dir", str(tmp_path))
    assert code == 1
    assert "FAILED plugin 'bad': failed to import" in out and "missing dependency foo" in out
    # validate goes on without it, unless --strict.
    example = [str(ROOT / "rules.yaml"), "--templates", str(ROOT / "templates")]
    assert run("validate", *example, "--plugins-dir", str(tmp_path))[0] == 0
    assert run("validate", "--strict", *example, "--plugins-dir", str(tmp_path))[0] == 1


def test_help_documents_every_command_and_env_var() -> None:
    code, out = run("--help")
    assert code == 0
    for command in ("serve", "validate", "plugins"):
        assert command in out
    code, out = run("serve", "--help")
    for option in ("--rules", "--templates", "--db", "--host", "--port", "--plugins-dir"):
        assert option in out
    for name in Settings.model_fields:
        assert f"ROUTER_{name.upper()}" in out.replace("\n", " ").replace("  ", " ") or (
            name in {"jwt_audience", "jwt_issuer"}
        ), name


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_PORT", "9191")
    monkeypatch.setenv("ROUTER_DB", "/tmp/x.db")
    monkeypatch.setenv("ROUTER_INGEST_TOKEN", "abc")
    settings = Settings()
    assert (settings.port, settings.db) == (9191, "/tmp/x.db")
    assert "abc" not in repr(settings)
    # Explicit values (the command line) win over the environment.
    assert Settings(port=1234).port == 1234


def test_bad_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ROUTER_PORT", "eighty")
    result = CliRunner().invoke(cli, ["validate", str(ROOT / "rules.yaml")])
    assert result.exit_code == 2
    assert "setting port: Input should be a valid integer" in result.output


RULES_FOR_TEST = """\
version: 1
channels:
  hook: {type: webhook}
  raw: {type: webhook, body: event}
rules:
  - name: completions
    events: [course_completed]
    match: {body.progress.requirement_count: {gt: 0}}
    notify: [hook, raw]
  - name: big-courses
    events: [course_completed]
    match: {body.progress.requirement_count: {gt: 100}}
    notify: [hook]
  - name: syllabus
    events: [syllabus_updated]
    notify: [hook]
    digest: {group_by: [body.course_id], wait: 10m}
"""


def test_router_test_shows_matches_messages_and_reasons(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_FOR_TEST)
    events = ROOT / "examples" / "events"
    code, out = run(
        "test",
        str(rules),
        str(events / "course_completed.json"),
        str(events / "syllabus_updated.json"),
        "--templates",
        str(ROOT / "templates"),
        "--explain",
    )
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].endswith(
        "course_completed.json[0] course_completed (id 3b5ca34b0def1d73edc21081021bfea5)"
    )
    assert "  + completions -> hook" in lines
    assert "      title: Isaac Newton completed Computer Science I" in lines
    raw = lines.index("  + completions -> raw")
    assert lines[raw + 1] == "      sends the raw event (no template)"
    assert "  - big-courses: body.progress.requirement_count gt 100: got 6" in lines
    assert "  - syllabus: events ['syllabus_updated'] do not select 'course_completed'" in lines
    assert "  + syllabus: joins digest group {'body.course_id': '21070000000000565'}" in lines


def test_router_test_json_and_bad_event_files(tmp_path: Path) -> None:
    import json

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_FOR_TEST)
    ndjson = tmp_path / "events.ndjson"
    event = (ROOT / "examples" / "events" / "course_completed.json").read_text()
    ndjson.write_text(
        json.dumps(json.loads(event)) + "\n" + json.dumps({"metadata": {"event_name": "x"}}) + "\n"
    )
    code, out = run(
        "test", str(rules), str(ndjson), "--json", "--templates", str(ROOT / "templates")
    )
    assert code == 0
    reports = json.loads(out)
    assert [(r["index"], r["event_name"], r["fired"]) for r in reports] == [
        (0, "course_completed", ["completions"]),
        (1, "x", []),
    ]
    assert reports[0]["messages"][0]["title"] == "Isaac Newton completed Computer Science I"
    bad = tmp_path / "bad.json"
    bad.write_text('{"metadata": {}}')
    result = CliRunner().invoke(cli, ["test", str(rules), str(bad)])
    assert result.exit_code == 1
    assert "not an event: [0] metadata.event_name: is required" in result.stderr


def test_serve_on_a_taken_port_says_so(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable, "-m", "router.cli", "serve",
                "--rules", str(ROOT / "rules.yaml"), "--templates", str(ROOT / "templates"),
                "--db", str(tmp_path / "r.db"), "--port", str(port), "--log-format", "json",
            ],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}:" in result.stderr
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert "rules file:" not in result.stderr  # the example rules have no warnings
    assert "listening on" not in result.stderr  # said only once the port is bound


def test_serve_says_which_store_it_cannot_open_and_why(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = closed.getsockname()[1]  # bound, never listening: refused
        for db, expected in [
            (
                str(tmp_path / "no" / "such" / "dir" / "r.db"),
                f"error: cannot open the store {tmp_path}/no/such/dir/r.db:"
                " FileNotFoundError: No such file or directory",
            ),
            (
                f"postgresql://router:s3cret-pw@127.0.0.1:{nobody}/test",
                f"error: cannot open the store postgresql://router:***@127.0.0.1:{nobody}/test:"
                " ConnectionRefusedError:",
            ),
        ]:
            result = subprocess.run(
                [
                    sys.executable, "-m", "router.cli", "serve",
                    "--rules", str(ROOT / "rules.yaml"), "--templates", str(ROOT / "templates"),
                    "--db", db, "--port", "0", "--log-format", "json",
                ],
                capture_output=True, text=True, timeout=60, cwd=tmp_path,
            )  # fmt: skip
            assert result.returncode == 1
            [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert error.startswith(expected), error
            assert "Traceback" not in result.stderr and "s3cret-pw" not in result.stderr


def test_serve_logs_the_rules_warnings_at_startup(tmp_path: Path) -> None:
    import json
    import socket
    import subprocess
    import sys

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "version: 1\nchannels: {hook: {type: webhook}}\n"
        "rules: [{name: a, events: [syllabus_updatd], notify: [hook]}]\n"
    )
    with socket.socket() as taken:  # it stops right after startup, on the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable, "-m", "router.cli", "serve", "--rules", str(rules),
                "--templates", str(ROOT / "templates"), "--db", str(tmp_path / "r.db"),
                "--port", str(port), "--log-format", "json",
            ],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [(r["level"], r["message"]) for r in logged if r["level"] == "warning"] == [
        (
            "warning",
            f"rules file: {rules}:3:28: rules[0].events[0]: 'syllabus_updatd' is not a Canvas"
            " event (did you mean 'syllabus_updated'?); the rule fires only for events named"
            " exactly so",
        )
    ]


def test_validate_names_a_missing_templates_directory(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nchannels: {hook: {type: webhook}}\nrules: []\n")
    code, out = run("validate", str(rules), "--templates", str(tmp_path / "nope"))
    assert code == 1
    assert out.splitlines() == [
        f"{tmp_path / 'nope'}:1:1: templates directory not found"
        " (set --templates or ROUTER_TEMPLATES)",
        f"warning: {rules}:2:12: channels.hook: channel 'hook' is not notified by any rule",
        "1 error(s), 1 warning(s)",
    ]


def test_without_a_templates_directory_the_shipped_templates_are_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./templates here
    monkeypatch.delenv("ROUTER_TEMPLATES", raising=False)
    assert Settings().templates == builtin_templates()
    assert (builtin_templates() / "course_completed.slack.j2").is_file()
    (tmp_path / "rules.yaml").write_text((ROOT / "rules.yaml").read_text())
    code, out = run("validate")
    assert code == 0, out
    # ./templates, when there is one, and a directory given explicitly win.
    (tmp_path / "templates").mkdir()
    assert Settings().templates == Path("templates")
    assert Settings(templates=tmp_path / "nope").templates == tmp_path / "nope"
    monkeypatch.setenv("ROUTER_TEMPLATES", str(tmp_path / "mine"))
    assert Settings().templates == tmp_path / "mine"


def test_the_wheel_ships_the_templates(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("router-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            name.removeprefix("router/builtin_templates/")
            for name in archive.namelist()
            if name.startswith("router/builtin_templates/")
        }
    templates = ROOT / "templates"
    assert shipped == {str(path.relative_to(templates)) for path in templates.rglob("*.j2")}
    assert "events/grade_change.j2" in shipped and "layouts/event.j2" in shipped
