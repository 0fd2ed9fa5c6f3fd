"""Tests for router.config_source: YAML loading with file:line:col error reporting."""

from __future__ import annotations

import textwrap
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from router.config_source import (
    ConfigError,
    ConfigErrors,
    SourceMap,
    errors_from_validation,
    expand_env,
    format_loc,
    load_yaml,
)

RULES = textwrap.dedent(
    """\
    version: 1
    # channels are referenced by name from rules
    channels:
      audit: {type: webhook, url: "https://audit.example.edu/canvas", secret: "${AUDIT_SECRET}"}
      course-slack:
        type: slack
        token: ${SLACK_TOKEN}
    rules:
      - name: course-completed
        events: [course_completed]
        notify: [audit]
      - name: grade-change
        events:
          - grade_change
          - submission_created
        notify: [course-slack, slak]
    """
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Webhook(Strict):
    type: Literal["webhook"]
    url: str
    secret: str | None = None


class Slack(Strict):
    type: Literal["slack"]
    token: str


class Rule(Strict):
    name: str
    events: list[str]
    notify: list[str] = []
    throttle_seconds: int = 0


class Config(Strict):
    version: int
    channels: dict[str, Annotated[Webhook | Slack, Field(discriminator="type")]]
    rules: list[Rule]

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != 1:
            raise ValueError("unsupported config version")
        return value


def col(line: str, needle: str) -> int:
    """1-based column of ``needle`` in ``line``."""
    return line.index(needle) + 1


def load(text: str) -> tuple[object, SourceMap]:
    return load_yaml(textwrap.dedent(text), "rules.yaml")


def validate(text: str) -> list[ConfigError]:
    data, source = load(text)
    with pytest.raises(ValidationError) as info:
        Config.model_validate(data)
    return errors_from_validation(info.value, source, Config)


# -- load_yaml ----------------------------------------------------------------------------


def test_load_returns_safe_loader_data() -> None:
    data, source = load_yaml(RULES, "rules.yaml")
    assert data["channels"]["audit"]["secret"] == "${AUDIT_SECRET}"
    assert data["rules"][1]["notify"] == ["course-slack", "slak"]
    assert source.file == "rules.yaml"


def test_marks_of_nested_values_items_and_keys() -> None:
    _, source = load_yaml(RULES, "rules.yaml")
    lines = RULES.splitlines()
    audit = lines[3]
    assert source.mark(("version",)) == (1, 10)
    assert source.mark(("channels", "audit")) == (4, col(audit, "{"))
    assert source.mark(("channels", "audit", "url")) == (4, col(audit, '"https'))
    assert source.key_mark(("channels", "audit", "url")) == (4, col(audit, "url:"))
    assert source.key_mark(("channels", "course-slack")) == (5, 3)
    assert source.mark(("channels", "course-slack", "token")) == (7, col(lines[6], "${"))
    assert source.mark(("rules", 0)) == (9, col(lines[8], "name"))
    assert source.key_mark(("rules", 1, "events")) == (13, 5)
    assert source.mark(("rules", 1, "events", 1)) == (15, col(lines[14], "submission"))
    assert source.mark(("rules", 1, "notify", 1)) == (16, col(lines[15], "slak"))
    assert source.error(("rules", 1, "notify", 1), "unknown channel 'slak'").__str__() == (
        "rules.yaml:16:28: rules[1].notify[1]: unknown channel 'slak'"
    )


def test_mark_falls_back_to_nearest_ancestor_and_root() -> None:
    _, source = load_yaml(RULES, "rules.yaml")
    assert source.mark(("rules", 1, "notify", 7)) == source.mark(("rules", 1, "notify"))
    assert source.mark(("rules", 1, "nope", "deeper")) == source.mark(("rules", 1))
    assert source.key_mark(("rules", 1, "nope")) == source.mark(("rules", 1))
    assert source.mark(()) == (1, 1)
    assert source.mark(("missing",)) == (1, 1)
    assert str(source.error((), "empty config")) == "rules.yaml:1:1: empty config"


def test_empty_document() -> None:
    assert load_yaml("# nothing here\n", "empty.yaml")[0] is None


def test_merge_keys_are_supported_and_not_duplicates() -> None:
    data, source = load(
        """\
        base: &base {type: webhook, url: "https://a.example"}
        channels:
          audit:
            <<: *base
            url: "https://b.example"
        """
    )
    assert data["channels"]["audit"] == {"type": "webhook", "url": "https://b.example"}
    assert source.mark(("channels", "audit", "url")) == (5, 10)
    assert source.mark(("channels", "audit", "type")) == (1, 20)


def test_python_tags_are_rejected() -> None:
    with pytest.raises(ConfigErrors) as info:
        load_yaml("version: !!python/object/apply:os.system ['true']\n", "evil.yaml")
    assert info.value.errors[0].line == 1
    assert "python/object/apply" in info.value.errors[0].message


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("rules:\n  - name: a\n    events: [x, y\n  - name: b\n", 4, 9, "expected ',' or ']'"),
        ("version: 1\nchannels:\n  audit: {type: webhook\n", 4, 1, "expected ',' or '}'"),
        ("version: 1\n  bad: indent\n", 2, 6, "mapping values are not allowed"),
        ("a: 1\n---\nb: 2\n", 2, 1, "expected a single document"),
        ('a: "unterminated\nb: 1\n', 3, 1, "while scanning a quoted scalar"),
        ("a:\n\t- x\n", 2, 1, "found character that cannot start any token"),
    ],
)
def test_syntax_error_position(text: str, line: int, column: int, fragment: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        load_yaml(text, "bad.yaml")
    [error] = info.value.errors
    assert (error.file, error.line, error.column, error.path) == ("bad.yaml", line, column, "")
    assert fragment in error.message
    assert str(info.value).startswith(f"bad.yaml:{line}:{column}: ")


def test_duplicate_keys_name_key_and_both_lines() -> None:
    text = """\
        version: 1
        rules:
          - name: first
            events: [a]
            name: second
        version: 2
        """
    with pytest.raises(ConfigErrors) as info:
        load(text)
    assert [str(e) for e in info.value.errors] == [
        "rules.yaml:5:5: rules[0].name: duplicate key 'name' on lines 3 and 5",
        "rules.yaml:6:1: version: duplicate key 'version' on lines 1 and 6",
    ]


def test_duplicate_keys_in_flow_mapping_and_reused_anchor_reported_once() -> None:
    text = """\
        a: &ch {type: webhook, type: slack}
        b: *ch
        """
    with pytest.raises(ConfigErrors) as info:
        load(text)
    assert [str(e) for e in info.value.errors] == [
        "rules.yaml:1:24: a.type: duplicate key 'type' on lines 1 and 1"
    ]


# -- errors / formatting ------------------------------------------------------------------


def test_format_loc() -> None:
    assert format_loc(("rules", 2, "notify", 0)) == "rules[2].notify[0]"
    assert format_loc(("channels", "audit", "url")) == "channels.audit.url"
    assert format_loc((3, "x")) == "[3].x"
    assert format_loc(()) == ""


def test_config_error_str_and_errors_sorted() -> None:
    late = ConfigError("r.yaml", 14, 9, "rules[2].notify[0]", "unknown channel 'slak'")
    early = ConfigError("r.yaml", 2, 30, "", "bad")
    middle = ConfigError("r.yaml", 14, 3, "rules[2]", "bad too")
    exc = ConfigErrors([late, early, middle])
    assert exc.errors == [early, middle, late]
    assert str(late) == "r.yaml:14:9: rules[2].notify[0]: unknown channel 'slak'"
    assert str(exc).splitlines() == [str(early), str(middle), str(late)]


# -- errors_from_validation ---------------------------------------------------------------


def test_unknown_key_with_suggestion_points_at_key() -> None:
    errors = validate(
        """\
        version: 1
        channels: {}
        rules:
          - name: course-completed
            events: [course_completed]
            notfy: [audit]
            throtle_seconds: 30
            colour: red
        """
    )
    assert [str(e) for e in sorted(errors)] == [
        "rules.yaml:6:5: rules[0].notfy: unknown key 'notfy' (did you mean 'notify'?)",
        "rules.yaml:7:5: rules[0].throtle_seconds: unknown key 'throtle_seconds'"
        " (did you mean 'throttle_seconds'?)",
        "rules.yaml:8:5: rules[0].colour: unknown key 'colour'",
    ]


def test_unknown_key_at_root_and_in_flow_mapping() -> None:
    errors = validate(
        """\
        version: 1
        chanels: {}
        channels:
          audit: {type: webhook, ur: "https://x.example"}
        rules: []
        """
    )
    by_path = {e.path: e for e in errors}
    assert str(by_path["chanels"]) == (
        "rules.yaml:2:1: chanels: unknown key 'chanels' (did you mean 'channels'?)"
    )
    # inside a discriminated union the model cannot be resolved: no suggestion, right spot
    assert str(by_path["channels.audit.ur"]) == (
        "rules.yaml:4:26: channels.audit.ur: unknown key 'ur'"
    )
    assert str(by_path["channels.audit"]) == (
        "rules.yaml:4:10: channels.audit: missing required key 'url'"
    )


def test_missing_key_reported_at_parent() -> None:
    errors = validate(
        """\
        version: 1
        channels: {}
        rules:
          - events: [course_completed]
        """
    )
    assert [str(e) for e in errors] == [
        "rules.yaml:4:5: rules[0]: missing required key 'name'",
    ]


def test_missing_key_at_root() -> None:
    errors = validate("# rules only\nrules: []\n")
    assert sorted(str(e) for e in errors) == [
        "rules.yaml:1:1: missing required key 'channels'",
        "rules.yaml:1:1: missing required key 'version'",
    ]


def test_wrong_types_point_at_values_without_leaking_input() -> None:
    errors = validate(
        """\
        version: "one"
        channels:
          audit: {type: webhook, url: [hunter2-secret]}
          chat: {type: carrier-pigeon}
        rules:
          - name: grade-change
            events: submission_created
            notify: [audit, 42]
        """
    )
    rendered = sorted(str(e) for e in errors)
    assert rendered == [
        "rules.yaml:1:10: version: Input should be a valid integer, unable to parse string"
        " as an integer",
        "rules.yaml:3:31: channels.audit.url: Input should be a valid string",
        "rules.yaml:4:9: channels.chat: Input tag 'carrier-pigeon' found using 'type'"
        " does not match any of the expected tags: 'webhook', 'slack'",
        "rules.yaml:7:13: rules[0].events: Input should be a valid list",
        "rules.yaml:8:21: rules[0].notify[1]: Input should be a valid string",
    ]
    assert not any("hunter2" in line for line in rendered)


def test_value_error_message_and_sorted_config_errors() -> None:
    errors = validate(
        """\
        version: 2
        channels: {audit: {type: webhook}}
        rules:
          - {name: x, events: [a], notify: [audit], extra: 1}
        """
    )
    exc = ConfigErrors(errors)
    assert str(exc).splitlines() == [
        "rules.yaml:1:10: version: unsupported config version",
        "rules.yaml:2:19: channels.audit: missing required key 'url'",
        "rules.yaml:4:45: rules[0].extra: unknown key 'extra'",
    ]


def test_prefix_and_no_model() -> None:
    data, source = load(
        """\
        channels:
          audit:
            type: slack
            tokn: abc
        """
    )
    with pytest.raises(ValidationError) as info:
        Slack.model_validate(data["channels"]["audit"])
    errors = errors_from_validation(info.value, source, Slack, prefix=("channels", "audit"))
    assert sorted(str(e) for e in errors) == [
        "rules.yaml:3:5: channels.audit: missing required key 'token'",
        "rules.yaml:4:5: channels.audit.tokn: unknown key 'tokn' (did you mean 'token'?)",
    ]
    plain = errors_from_validation(info.value, source, prefix=("channels", "audit"))
    assert "rules.yaml:4:5: channels.audit.tokn: unknown key 'tokn'" in map(str, plain)


# -- expand_env ---------------------------------------------------------------------------

ENV_TEXT = """\
channels:
  audit:
    type: webhook
    url: "https://${AUDIT_HOST}/canvas?a=${AUDIT_A}&b=${AUDIT_B}"
    secret: ${AUDIT_SECRET}
  slack: {type: slack, token: "${SLACK_TOKEN}"}
rules:
  - name: "costs $$5 ${MISSING_WITH_DEFAULT:-plain default}"
    events: ["${EMPTY:-fallback}", "${EMPTY_SET}", 3, true]
"""


def test_expand_env_substitutes_and_collects_secrets() -> None:
    data, source = load_yaml(ENV_TEXT, "env.yaml")
    environ = {
        "AUDIT_HOST": "audit.example.edu",
        "AUDIT_A": "1",
        "AUDIT_B": "2",
        "AUDIT_SECRET": "s3cr3t-audit",
        "SLACK_TOKEN": "xoxb-very-secret",
        "EMPTY": "",
        "EMPTY_SET": "",
    }
    out, secrets, errors = expand_env(data, source, environ)
    assert errors == []
    assert out["channels"]["audit"]["url"] == "https://audit.example.edu/canvas?a=1&b=2"
    assert out["channels"]["audit"]["secret"] == "s3cr3t-audit"
    assert out["channels"]["slack"]["token"] == "xoxb-very-secret"
    assert out["rules"][0]["name"] == "costs $5 plain default"
    assert out["rules"][0]["events"] == ["fallback", "", 3, True]
    assert secrets == {"audit.example.edu", "1", "2", "s3cr3t-audit", "xoxb-very-secret"}
    assert data["channels"]["audit"]["secret"] == "${AUDIT_SECRET}"  # input left untouched


def test_expand_env_escapes() -> None:
    data, source = load_yaml('a: "$${NOT_A_VAR} $$$$ $5 ${X}$$"\n', "e.yaml")
    out, secrets, errors = expand_env(data, source, {"X": "x"})
    assert (out, secrets, errors) == ({"a": "${NOT_A_VAR} $$ $5 x$"}, {"x"}, [])


def test_expand_env_unset_variables_are_located_errors() -> None:
    data, source = load_yaml(ENV_TEXT, "env.yaml")
    environ = {"AUDIT_SECRET": "s3cr3t-audit", "AUDIT_A": "topsecret-a"}
    _, secrets, errors = expand_env(data, source, environ)
    assert [str(e) for e in sorted(errors)] == [
        "env.yaml:4:10: channels.audit.url: environment variable AUDIT_B is not set",
        "env.yaml:4:10: channels.audit.url: environment variable AUDIT_HOST is not set",
        "env.yaml:6:31: channels.slack.token: environment variable SLACK_TOKEN is not set",
        "env.yaml:9:36: rules[0].events[1]: environment variable EMPTY_SET is not set",
    ]
    assert secrets == {"s3cr3t-audit", "topsecret-a"}
    assert not any(s in str(e) for s in secrets for e in errors)


def test_expand_env_malformed_reference() -> None:
    data, source = load_yaml("url: ${NO_CLOSE\nb: ${bad name}\n", "m.yaml")
    out, _, errors = expand_env(data, source, {})
    assert out == {"url": "${NO_CLOSE", "b": "${bad name}"}
    assert [(e.line, e.column, e.path) for e in errors] == [(1, 6, "url"), (2, 4, "b")]


def test_file_keys_are_read_as_secrets(tmp_path) -> None:
    (tmp_path / "smtp").write_text("pa55-from-file\n\n")
    (tmp_path / "token").write_text("tok-from-file\n")
    text = f"""\
smtp:
  host: mail.example.edu
  password_file: {tmp_path / "smtp"}
  token_file: ${{SECRETS_DIR}}/token
"""
    data, source = load_yaml(text, "f.yaml")
    out, secrets, errors = expand_env(data, source, {"SECRETS_DIR": str(tmp_path)})
    assert errors == []
    assert out == {
        "smtp": {
            "host": "mail.example.edu",
            "password": "pa55-from-file\n",  # exactly one trailing newline stripped
            "token": "tok-from-file",
        }
    }
    assert {"pa55-from-file\n", "tok-from-file", str(tmp_path)} == secrets
    # the renamed key keeps the position of the original one
    assert source.mark(("smtp", "password")) == (3, 18)
    assert source.key_mark(("smtp", "token")) == (4, 3)


def test_unreadable_file_error_names_path_not_content(tmp_path) -> None:
    (tmp_path / "present").write_text("do-not-leak")
    missing = tmp_path / "absent"
    text = f"""\
smtp:
  password_file: "{missing}"
  key_file: "{tmp_path}"
  token: "${{TOKEN}}"
  token_file: "{tmp_path / "present"}"
"""
    data, source = load_yaml(text, "f.yaml")
    out, secrets, errors = expand_env(data, source, {"TOKEN": "env-token-value"})
    rendered = [str(e) for e in sorted(errors)]
    assert rendered == [
        f"f.yaml:2:18: smtp.password_file: cannot read password_file '{missing}':"
        " No such file or directory",
        f"f.yaml:3:13: smtp.key_file: cannot read key_file '{tmp_path}': Is a directory",
        "f.yaml:5:15: smtp.token_file: both 'token' and 'token_file' are set",
    ]
    assert out == {"smtp": {"token": "env-token-value"}}
    assert secrets == {"env-token-value"}
    for leak in ("do-not-leak", "env-token-value"):
        assert not any(leak in line for line in rendered)


def test_no_secret_in_any_error_end_to_end(tmp_path) -> None:
    (tmp_path / "secret").write_text("file-secret-123\n")
    text = f"""\
version: 1
channels:
  audit: {{type: webhook, url: "${{AUDIT_URL}}", secret: 12, extra_file: {tmp_path / "secret"}}}
  slack: {{type: slack, token: "${{SLACK_TOKEN}}", tokn: "${{SLACK_TOKEN}}"}}
rules:
  - {{name: "${{RULE_NAME}}", events: "${{SLACK_TOKEN}}", notify: ["${{UNSET}}"]}}
"""
    environ = {"AUDIT_URL": "https://u:pw-in-url@x", "SLACK_TOKEN": "xoxb-123", "RULE_NAME": "n"}
    data, source = load_yaml(text, "all.yaml")
    expanded, secrets, errors = expand_env(data, source, environ)
    with pytest.raises(ValidationError) as info:
        Config.model_validate(expanded)
    errors += errors_from_validation(info.value, source, Config)
    rendered = str(ConfigErrors(errors))
    assert "all.yaml:6:" in rendered and "environment variable UNSET is not set" in rendered
    assert "channels.audit.extra: unknown key 'extra'" in rendered
    assert "channels.slack.tokn: unknown key 'tokn'" in rendered
    assert "rules[0].events: Input should be a valid list" in rendered
    assert secrets == {"https://u:pw-in-url@x", "xoxb-123", "n", "file-secret-123"}
    for secret in secrets - {"n"}:
        assert secret not in rendered
