"""Issue 18, finding 1: no rules file or template can freeze or bloat the service.

Templates and ``if:`` run within ``defaults.render_timeout`` and
``defaults.render_max_output``; over a limit, that delivery fails (a dead letter naming
the template or rule and the limit) and nothing else. Constant expressions are not
evaluated at load, and ``router validate`` rejects the bombs it can see.
"""

import asyncio
import resource
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from router.config_source import ConfigErrors
from router.matching import MatchContext
from router.plugins import load_plugins
from router.rules import load_rules
from router.sandbox import LimitExceeded, RenderLimits, bounded
from router.templates import RenderError, Templates
from tests.conftest import ROOT, ServiceFactory, StoreDB, example
from tests.receiver import SECRET, WebhookReceiver

CHANNEL_TYPES = load_plugins().channel_types

# The bombs of the issue, each as written there.
CONSTANT_IF_BOMBS = [
    "'x'*1000000000",
    "[1]*10**9",
    "lipsum(100000, False, 1000, 100000)|length",
    "'%*d'|format(1000000000,1)",
    "range(10**9)|length",
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rules_file(tmp_path: Path, rule_extra: str, defaults: str = "") -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            version: 1
            defaults: {%s}
            channels:
              hook: {type: webhook, url: "http://127.0.0.1:9/"}
            rules:
              - name: bomb
                events: ["*"]
                notify: [hook]
            %s
            """
        )
        % (defaults, textwrap.indent(rule_extra, "    "))
    )
    return path


@pytest.mark.parametrize("expression", CONSTANT_IF_BOMBS)
def test_a_constant_bomb_in_if_is_not_evaluated_and_validate_names_it(
    tmp_path: Path, expression: str
) -> None:
    before = peak_rss_mb()
    path = rules_file(tmp_path, f"if: {expression!r}")
    with pytest.raises(ConfigErrors) as caught:
        load_rules(path, CHANNEL_TYPES, templates=Templates(ROOT / "templates"))
    [error] = caught.value.errors
    assert (error.line, error.path) == (9, "rules[0].if")
    assert "over a limit" in error.message
    assert "render_max_output" in error.message or "limit of 100000" in error.message
    assert peak_rss_mb() - before < 100


def test_nested_range_loops_in_a_template_fail_validate_with_file_and_line(
    tmp_path: Path,
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "course_created.j2").write_text(
        "title\n{% for i in range(100000) %}{% for j in range(100000) %}"
        "{{ i }}{% endfor %}{% endfor %}\n"
    )
    path = rules_file(tmp_path, "")
    with pytest.raises(ConfigErrors) as caught:
        load_rules(path, CHANNEL_TYPES, templates=Templates(templates))
    [error] = caught.value.errors
    assert error.file.endswith("course_created.j2")
    assert error.line == 2
    assert "nested loops of 10000000000 iterations" in error.message


def test_a_constant_bomb_in_a_throttle_key_is_rejected(tmp_path: Path) -> None:
    path = rules_file(tmp_path, "throttle: {per: 1m, key: \"{{ 'k' * 10**9 }}\"}")
    with pytest.raises(ConfigErrors) as caught:
        load_rules(path, CHANNEL_TYPES)
    assert "rules[0].throttle.key: over a limit" in str(caught.value)


# Each bomb is sized by the event (body.n), so validation cannot see it: the render does.
DATA_BOMBS = {
    "repeat": "{{ 'x' * body.n }}",
    "list repeat": "{{ ([1] * body.n)|length }}",
    "power": "{{ 10 ** (body.n * 100) }}",
    "lipsum": "{{ lipsum(body.n, False, 1000, 100000) }}",
    "format filter": "{{ '%*d'|format(body.n, 1) }}",
    "percent": "{{ '%*d' % (body.n, 1) }}",
    "str.format": "{{ '{:>{w}}'.format(1, w=body.n) }}",
    "ljust": "{{ 'x'.ljust(body.n) }}",
    "center": "{{ 'x'|center(body.n) }}",
    "replace": "{{ ('x' * 1000)|replace('x', 'y' * 1000)|replace('y', 'z' * (body.n // 10**6)) }}",
    "join": "{{ ('x' * 1000)|join('y' * 2000) }}",
    "concat doubling": "{% set ns = namespace(s='x') %}"
    "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "range": "{{ range(body.n)|length }}",
    "nested loops": "{% for i in range(body.n // 10000) %}{% for j in range(body.n // 10000) %}"
    "{% endfor %}{% endfor %}",
    "captured output": "{% set y %}{% for i in range(1000) %}{{ 'x' * 100000 }}"
    "{% endfor %}{% endset %}{{ y|length }}",
    "macro recursion": "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
    "{% endmacro %}{{ f(body.n // 10**7) }}",
}


@pytest.mark.parametrize("name", sorted(DATA_BOMBS))
def test_a_bomb_sized_by_the_event_fails_its_render_naming_template_and_limit(
    tmp_path: Path, name: str
) -> None:
    (tmp_path / "bomb.j2").write_text(DATA_BOMBS[name])
    templates = Templates(tmp_path)
    assert templates.problem("bomb.j2") is None  # nothing to see before an event comes
    before = peak_rss_mb()
    with pytest.raises(RenderError) as caught:
        templates.render("bomb.j2", {"body": {"n": 10**9}})
    message = str(caught.value)
    assert message.startswith("template bomb.j2")
    limits = ("render_max_output (1000000)", "limit of 100000", "render_timeout (2s)")
    assert any(limit in message for limit in limits), message
    assert peak_rss_mb() - before < 100


def test_a_slow_render_stops_at_render_timeout(tmp_path: Path) -> None:
    (tmp_path / "slow.j2").write_text(
        "{% for i in range(body.n) %}{% for j in range(body.n) %}{% endfor %}{% endfor %}"
    )
    templates = Templates(tmp_path)
    limits = RenderLimits(timeout=0.2, max_output=100_000_000)
    with pytest.raises(RenderError, match=r"took longer than render_timeout \(0.2s\)"):
        templates.render("slow.j2", {"body": {"n": 100_000}}, limits)


def test_an_ordinary_template_renders_within_the_limits(tmp_path: Path) -> None:
    (tmp_path / "ok.j2").write_text(
        "{% block title %}{{ 'a' ~ body.name }}{% endblock %}"
        "{% block text %}{% for x in body.items %}{{ x * 2 }} {% endfor %}"
        "{{ '%5d'|format(7) }} {{ '-' * 3 }} {{ body.items|join(',') }}{% endblock %}"
    )
    rendered = Templates(tmp_path).render("ok.j2", {"body": {"name": "b", "items": [1, 2]}})
    assert (rendered.title, rendered.text) == ("ab", "2 4     7 --- 1,2")


def test_a_small_render_max_output_is_honoured(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_text("{{ 'x' * 2000 }}")
    templates = Templates(tmp_path)
    assert templates.render("t.j2", {}).text == "x" * 2000
    with pytest.raises(RenderError, match=r"render_max_output \(1000\)"):
        templates.render("t.j2", {}, RenderLimits(max_output=1000))


def test_an_if_over_its_limit_fires_the_rule_with_the_error(tmp_path: Path) -> None:
    path = rules_file(tmp_path, "if: \"('x' * body.n)|length > 0\"")
    rules = load_rules(path, CHANNEL_TYPES)
    event = example("course_created")
    failed: dict[str, str] = {}
    small = MatchContext({**event, "body": {"n": 10}})
    assert [r.name for r in rules.evaluate("course_created", small, failed)] == ["bomb"]
    assert failed == {}
    big = MatchContext({**event, "body": {"n": 10**9}})
    assert [r.name for r in rules.evaluate("course_created", big, failed)] == ["bomb"]
    assert "rule 'bomb' if: a repeated sequence would be 1000000000 long" in failed["bomb"]
    # router test --explain says why, without raising.
    assert "render_max_output" in (rules.rules[0].explain(big) or "")


def test_defaults_set_the_limits(tmp_path: Path) -> None:
    path = rules_file(
        tmp_path,
        "if: \"('x' * body.n)|length > 0\"",
        defaults="render_timeout: 500ms, render_max_output: 5000",
    )
    with pytest.raises(ConfigErrors, match=r"defaults\.render_timeout"):
        load_rules(path, CHANNEL_TYPES)
    path = rules_file(
        tmp_path,
        "if: \"('x' * body.n)|length > 0\"",
        defaults="render_timeout: 1s, render_max_output: 5000",
    )
    rule = load_rules(path, CHANNEL_TYPES).rules[0]
    assert rule.limits == RenderLimits(timeout=1.0, max_output=5000)
    failed: dict[str, str] = {}
    load_rules(path, CHANNEL_TYPES).evaluate(
        "x", MatchContext({"metadata": {"event_name": "x"}, "body": {"n": 6000}}), failed
    )
    assert "render_max_output (5000)" in failed["bomb"]


def test_budgets_are_per_render() -> None:
    with bounded(RenderLimits(max_output=1000)):
        with bounded(RenderLimits(max_output=10)), pytest.raises(LimitExceeded):
            Templates(ROOT / "templates").env.from_string("{{ 'x' * 11 }}").render()


async def poll_latency(client: Any, until: float) -> float:
    """The slowest ``/healthz`` answer seen until ``until`` (monotonic)."""
    worst = 0.0
    while time.monotonic() < until:
        started = time.monotonic()
        assert (await client.get("/healthz")).status == 200
        worst = max(worst, time.monotonic() - started)
        await asyncio.sleep(0.01)
    return worst


@pytest.mark.sqlite_only("the render path does not depend on the store")
async def test_a_bomb_fails_its_delivery_and_the_service_keeps_serving(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path, store_db: StoreDB
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "slow.j2").write_text(
        "{% for i in range(body.n) %}{% for j in range(body.n) %}{% endfor %}{% endfor %}"
    )
    client = await service(
        textwrap.dedent(
            f"""\
            version: 1
            defaults: {{render_timeout: 1.5s, render_max_output: 100000000}}
            channels:
              hook: {{type: webhook, url: "{receiver.url}", secret: "{SECRET}", timeout: 5}}
            rules:
              - name: greedy-if
                events: [greedy]
                if: "('x' * body.n)|length > 1"
                notify: [hook]
              - name: slow-template
                events: [slow]
                template: slow
                notify: [hook]
              - name: fine
                events: [course_created]
                notify: [hook]
            """
        )
    )
    for name, n in (("greedy", 10**9), ("slow", 10**5)):
        event = {"metadata": {"event_name": name}, "body": {"n": n}}
        assert (await client.post("/events", json=event)).status == 202
    # While the slow template renders (1.5 s), the event loop keeps answering.
    worst = await poll_latency(client, time.monotonic() + 1.0)
    assert (await client.post("/events", json=example("course_created"))).status == 202
    [got] = await receiver.wait_for(1, timeout=15)
    assert got.body["event_name"] == "course_created"
    deadline = time.monotonic() + 15
    while len(dead := store_db.dicts("SELECT * FROM deliveries WHERE state = 'dead'")) < 2:
        assert time.monotonic() < deadline, "the bombs did not become dead letters"
        await asyncio.sleep(0.05)
    errors = {d["rule"]: d["last_error"] for d in dead}
    assert (
        "rule 'greedy-if' if: a repeated sequence would be 1000000000 long" in errors["greedy-if"]
    )
    assert errors["slow-template"].startswith("template slow.j2")
    assert "render_timeout (1.5s)" in errors["slow-template"]
    assert worst < 0.5, f"/healthz took {worst:.3f}s while a template rendered"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ 'Course 2000000: %s, %5.2f' % ('a', 1.5) }}", "Course 2000000: a,  1.50"),
        ("{{ '%-*s|' % (3, 'a') }}", "a  |"),
        ("{{ '{} {:>4}'.format(21070000000000565, 'b') }}", "21070000000000565    b"),
        ("{{ '{:>{w}}'.format('a', w=3) }}", "  a"),
        ("{{ '%s'|format(21070000000000565) }}", "21070000000000565"),
    ],
)
def test_formatting_that_stays_small_is_not_refused(template: str, expected: str) -> None:
    env = Templates(ROOT / "templates").env
    assert env.from_string(template).render() == expected


def test_router_test_is_bounded_the_same_way(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from router.cli import cli

    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "slow.j2").write_text(
        "{% for i in range(body.n) %}{% for j in range(body.n) %}{% endfor %}{% endfor %}"
    )
    limits = "render_timeout: 0.5s, render_max_output: 100000000"
    rules = rules_file(tmp_path, "template: slow", defaults=limits)
    event = tmp_path / "event.json"
    event.write_text('{"metadata": {"event_name": "x"}, "body": {"n": 100000}}')
    args = ["test", str(rules), str(event), "--templates", str(templates), "--json"]
    result = CliRunner().invoke(cli, args)
    assert "took longer than render_timeout (0.5s)" in result.output, result.output


def test_bounded_filters_keep_markup_under_autoescape() -> None:
    env = Templates(ROOT / "templates").html_env
    template = env.from_string(
        "{{ x | replace('\\n', '<br>' | safe) }}|{{ [x, '<i>' | safe] | join('<hr>' | safe) }}"
    )
    assert template.render(x="<b>\n") == "&lt;b&gt;<br>|&lt;b&gt;\n<hr><i>"
