"""The rules language: every operator, groups, if-expressions, continue, defaults,
indexing, and the errors `router validate` reports for each kind of mistake."""

import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.config_source import ConfigErrors
from router.matching import MatchContext
from router.plugins import load_plugins
from router.routing import Router
from router.rules import RuleSet, load_rules, parse_duration
from router.snapshots import previous_event
from router.store import InboxEvent
from router.templates import Templates
from tests.conftest import ROOT, example

CHANNEL_TYPES = load_plugins().channel_types


def ruleset(tmp_path: Path, rules: str, channels: str = "hook: {type: webhook}") -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\nchannels:\n"
        + textwrap.indent(channels, "  ")
        + "\nrules:\n"
        + textwrap.indent(textwrap.dedent(rules), "  ")
    )
    return load_rules(path, CHANNEL_TYPES, templates=Templates(ROOT / "templates"))


def fired(
    rules: RuleSet, event: dict[str, Any], previous: dict[str, Any] | None = None
) -> list[str]:
    ctx = MatchContext(event, previous)
    return [r.name for r in rules.evaluate(event["metadata"]["event_name"], ctx)]


def one_rule(tmp_path: Path, match: str) -> RuleSet:
    return ruleset(
        tmp_path,
        f"""\
        - name: r
          events: ["*"]
          match: {match}
          notify: [hook]
        """,
    )


COMPLETED = example("course_completed")


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ("{metadata.context_role: StudentEnrollment}", True),
        ("{metadata.context_role: TeacherEnrollment}", False),
        ("{body.course.account_id: 79}", True),  # Canvas ids are strings; 79 == "79"
        ("{body.course.account_id: {equals: '79'}}", True),
        ("{body.course.account_id: {not_equals: '79'}}", False),
        ("{body.course.account_id: {in: ['79', '80']}}", True),
        ("{body.course.account_id: {in: [80, 81]}}", False),
        ("{body.course.account_id: {not_in: ['80']}}", True),
        ("{body.course.name: {regex: '^Computer'}}", True),
        ("{body.course.name: {regex: 'science'}}", False),
        ("{body.course.name: {regex: '(?i)science'}}", True),
        ("{body.progress.completed_at: {exists: true}}", True),
        ("{body.progress.nope: {exists: false}}", True),
        ("{body.progress.nope: {exists: true}}", False),
        ("{body.progress.requirement_count: {gt: 5}}", True),
        ("{body.progress.requirement_count: {gt: 6}}", False),
        ("{body.progress.requirement_count: {gte: 6, lte: 6}}", True),
        ("{body.progress.requirement_count: {lt: 6}}", False),
        ("{body.course.id: {gt: 500}}", True),  # numeric strings compare as numbers
        ("{body.course.name: {contains: Science}}", True),
        ("{body.course.name: {startswith: Comp}}", True),
        ("{body.course.name: {startswith: Science}}", False),
        ("{metadata.user_login: {contains: '@example.com'}}", True),
        ("{body.nope.deeper: Computer Science I}", False),
        ("{any: [{body.course.id: '1'}, {body.course.id: '565'}]}", True),
        ("{any: [{body.course.id: '1'}, {body.course.id: '2'}]}", False),
        ("{all: [{body.course.id: '565'}, {body.user.id: '123'}]}", True),
        ("{not: {body.user.id: '123'}}", False),
        ("{not: {body.user.id: '999'}}", True),
    ],
)
def test_every_operator(tmp_path: Path, match: str, expected: bool) -> None:
    assert fired(one_rule(tmp_path, match), COMPLETED) == (["r"] if expected else [])


def test_contains_on_lists(tmp_path: Path) -> None:
    rules = one_rule(tmp_path, "{body.stuck_sis_fields: {contains: name}}")
    assert fired(rules, example("course_section_updated")) == ["r"]
    # The odd course_section_created example splits the list mid-string: no match.
    assert fired(rules, example("course_section_created")) == []


def test_changed_uses_old_syllabus_and_snapshots(tmp_path: Path) -> None:
    rules = one_rule(tmp_path, "{body.syllabus_body: {changed: true}, body.name: {changed: false}}")
    syllabus = example("syllabus_updated")
    assert fired(rules, syllabus, previous_event(syllabus, None)) == []  # bodies are equal
    syllabus["body"]["syllabus_body"] = "<p>new</p>"
    assert fired(rules, syllabus, previous_event(syllabus, None)) == ["r"]

    renamed = one_rule(tmp_path, "{body.name: {changed: true}}")
    updated = example("course_updated")
    assert fired(renamed, updated, None) == []  # nothing known before: not "changed"
    assert fired(renamed, updated, {"body": {"name": "Linear Algebra"}}) == []
    assert fired(renamed, updated, {"body": {"name": "Algebra I"}}) == ["r"]


def test_if_expression_and_sandbox(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """\
        - name: accounts
          events: [course_completed]
          if: "body.course.account_id in ['79', '80'] and body.progress.requirement_count > 5"
          notify: [hook]
        - name: escape
          events: [course_completed]
          if: "''.__class__.__mro__[1].__subclasses__()"
          notify: [hook]
        - name: missing-field
          events: [course_completed]
          if: "body.no_such.field == 1"
          notify: [hook]
        """,
    )
    assert fired(rules, COMPLETED) == ["accounts"]
    ctx = MatchContext(COMPLETED)
    escape = rules.rule_named("escape")
    assert escape is not None
    reason = escape.explain(ctx)
    assert reason is not None and "SecurityError" in reason


def test_continue_false_and_enabled_false(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """\
        - {name: disabled, events: ["*"], notify: [hook], enabled: false}
        - {name: first, events: [course_*], notify: [hook], continue: false}
        - {name: second, events: ["*"], notify: [hook]}
        """,
    )
    assert fired(rules, COMPLETED) == ["first"]
    assert fired(rules, example("syllabus_updated")) == ["second"]


def test_equality_index_gives_the_same_answers(tmp_path: Path) -> None:
    lines = [
        f"- {{name: r{i}, events: [course_completed], match: {{body.course.id: '{i}'}},"
        " notify: [hook]}"
        for i in range(300)
    ]
    lines.append("- {name: any, events: ['course_*'], notify: [hook]}")
    lines.append(
        "- {name: also565, events: [course_completed], match: {body.course.id: 565,"
        " body.user.id: '123'}, notify: [hook]}"
    )
    rules = ruleset(tmp_path, "\n".join(lines))
    assert fired(rules, COMPLETED) == ["any", "also565"]
    event = orjson.loads(orjson.dumps(COMPLETED))
    event["body"]["course"]["id"] = "42"
    assert fired(rules, event) == ["r42", "any"]


def test_durations() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400
    assert parse_duration("2d") == 172800
    assert parse_duration(30) == 30
    for bad in ("soon", "-1m", "0", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_validate_reports_rule_language_mistakes(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as caught:
        ruleset(
            tmp_path,
            """\
            - name: bad
              events: [course_completed]
              match:
                body.a: {gtt: 1}
                body.b: {regex: "(a)\\\\1"}
                body.c: {in: 5}
                body.d: {changed: maybe}
                any: []
              if: "body.x ==="
              notify: [hook]
              throttle: {key: "{{ body.user.id ", per: soon}
            - name: bad2
              events: [x]
              notify: [hook]
              digest: {group_by: [body.course_id], wait: 10m, max: 0}
            """,
        )
    messages = [f"{e.path}: {e.message}" for e in caught.value.errors]
    assert messages[0] == "rules[0].throttle.per: expects a duration such as 30s, 10m, 1h or 2d"
    assert messages[1] == ("rules[1].digest.max: Input should be greater than or equal to 1")
    assert len(messages) == 2  # model errors stop compilation of those two rules
    with pytest.raises(ConfigErrors) as caught:
        ruleset(
            tmp_path,
            """\
            - name: bad
              events: [course_completed]
              match:
                body.a: {gtt: 1}
                body.b: {regex: "(a)\\\\1"}
                body.c: {in: 5}
                body.d: {changed: maybe}
                any: []
              if: "body.x ==="
              notify: [hook]
              throttle: {key: "{{ body.user.id ", per: 1h}
            """,
        )
    rows = [(e.line, e.path, e.message) for e in caught.value.errors]
    assert rows[0] == (
        8,
        "rules[0].match.body.a.gtt",
        "unknown operator 'gtt' (did you mean 'gt'?); operators: changed, contains, equals,"
        " exists, gt, gte, in, lt, lte, not_equals, not_in, regex, startswith",
    )
    assert rows[1][:2] == (9, "rules[0].match.body.b.regex")
    assert "invalid regex '(a)\\\\1'" in rows[1][2] and "RE2" in rows[1][2]
    assert rows[2] == (10, "rules[0].match.body.c.in", "'in' expects a list")
    assert rows[3] == (11, "rules[0].match.body.d.changed", "'changed' expects true or false")
    assert rows[4] == (12, "rules[0].match.any", "'any' takes a non-empty list of match blocks")
    assert rows[5][:2] == (13, "rules[0].if") and rows[5][2].startswith("invalid expression")
    assert rows[6][:2] == (15, "rules[0].throttle.key")


def test_router_renders_with_defaults_and_previous(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            version: 1
            defaults: {time_zone: Europe/Paris, throttle: {per: 1h}}
            channels: {hook: {type: webhook}}
            rules:
              - {name: updates, events: [course_updated], notify: [hook], template: t}
            """
        )
    )
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "t.j2").write_text(
        "{% block title %}{{ previous.name if previous else 'new' }} -> {{ body.name }}"
        "{% endblock %}{% block text %}{{ body.updated_at | localtime }}{% endblock %}"
    )
    rules = load_rules(path, CHANNEL_TYPES, templates=Templates(templates))
    router = Router(rules, Templates(templates))
    payload = example("course_updated")  # no metadata.time_zone: defaults apply
    event = InboxEvent(1, "e1", "course_updated", orjson.dumps(payload), time.time())
    decision = router.decide(event, payload, {"name": "Algebra I"}, now=1000.0)
    [job] = decision.routed.deliveries
    message = orjson.loads(job.message)
    assert message["title"] == "Algebra I -> Linear Algebra"
    assert message["text"] == "2019-11-05 16:38 CET"
    assert job.throttle == ("updates:", 1000.0 + 3600)
    assert decision.routed.snapshot is not None
    key, body = decision.routed.snapshot
    assert key == "course:12340000000056"
    assert orjson.loads(body)["name"] == "Linear Algebra"


def test_secret_config_values_are_known_to_the_redactor(tmp_path: Path) -> None:
    secret = "whsec_" + "c2VjcmV0LXdyaXR0ZW4taW4tdGhlLWZpbGU="
    rules = ruleset(
        tmp_path,
        "- {name: r, events: ['*'], notify: [hook]}",
        channels=f'hook: {{type: webhook, url: "http://x", secret: "{secret}"}}',
    )
    assert secret in rules.secrets  # written in the file, not from ${ENV}: still a secret


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ body.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
        "{{ body.clear() }}",  # templates cannot change the event others render
        "{{ body.update({'course': 1}) }}",
        "{{ body.get.__self__ }}",
        "{{ body.get('course').pop('name') }}",
    ],
)
def test_templates_refuse_sandbox_escapes(tmp_path: Path, source: str) -> None:
    from router.templates import RenderError, template_context

    (tmp_path / "evil.j2").write_text(source)
    templates = Templates(tmp_path)
    context = template_context(COMPLETED, event_id="e", rule="r", channel="c")
    with pytest.raises(
        RenderError, match=r"template evil\.j2 line 1: (SecurityError|UndefinedError)"
    ):
        templates.render("evil.j2", context)


def render_counted(tmp_path: Path, source: str) -> tuple[Any, list[str]]:
    """Render ``source`` for COMPLETED; it may use a ``counted`` filter, which passes
    its value through and records it. Returns the rendered message and the values."""
    from router.templates import template_context

    calls: list[str] = []

    def counted(value: str) -> str:
        calls.append(value)
        return value

    (tmp_path / "counted.j2").write_text(source)
    templates = Templates(tmp_path, filters={"counted": counted})
    context = template_context(COMPLETED, event_id="e", rule="r", channel="c")
    return templates.render("counted.j2", context), calls


def test_a_block_reused_through_self_is_rendered_once(tmp_path: Path) -> None:
    rendered, calls = render_counted(
        tmp_path,
        "{% block title %}<b>{{ body.course.name | counted }}</b>{% endblock %}"
        "{% block text %}{{ self.title() }}|{{ self.title() | trim }}{% endblock %}"
        "{% block json %}{% autoescape true %}{{ self.title() }}{% endautoescape %}"
        "|{% autoescape true %}{{ body.course.name ~ '<i>' }}{% endautoescape %}"
        "{% endblock %}",
    )
    name = COMPLETED["body"]["course"]["name"]
    assert rendered.title == f"<b>{name}</b>"
    assert rendered.text == f"<b>{name}</b>|<b>{name}</b>"
    # Under autoescape a block comes back as markup (not escaped again), as in Jinja.
    assert rendered.blocks["json"] == f"<b>{name}</b>|{name}&lt;i&gt;"
    assert calls == [name]  # rendered once, reused three times


def test_the_html_block_is_rendered_once_and_escaped(tmp_path: Path) -> None:
    rendered, calls = render_counted(
        tmp_path,
        "{% block title %}t{% endblock %}{% block text %}x{% endblock %}"
        "{% block html %}<p>{{ (body.course.name ~ ' <i>') | counted }}</p>{% endblock %}",
    )
    name = COMPLETED["body"]["course"]["name"]
    assert rendered.blocks["html"] == f"<p>{name} &lt;i&gt;</p>"
    assert calls == [f"{name} <i>"]


def test_the_keys_the_router_reads_are_exactly_the_channel_options() -> None:
    from router.channels import HOST_KEYS
    from router.rules import ChannelOptions

    # A key in one and not the other would reach a plugin's model, or be dropped.
    assert set(HOST_KEYS) == set(ChannelOptions.model_fields)
