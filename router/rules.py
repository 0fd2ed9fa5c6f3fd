"""The rules file: its models, loading with file:line errors, and matching events to rules.

``load_rules`` validates everything it can before the service uses the file: the
YAML, every key (typos are errors), env references, each channel's config against its
plugin's model, the channels each rule notifies, and the templates rules name.
"""

import difflib
import fnmatch
import functools
import os
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2.parser import Parser
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    model_validator,
)

from router.canvas_events import likely_typo
from router.canvas_lookups import LOOKUPS, PEOPLE
from router.channels import HOST_KEYS, ChannelConfig
from router.config_source import (
    ConfigError,
    ConfigErrors,
    SourceMap,
    errors_from_validation,
    expand_env,
    load_yaml,
)
from router.matching import MISSING, AllOf, MatchContext, PathCondition, compile_match, lookup
from router.plugins import ChannelType, SourceType
from router.quiet_hours import DuringMute, Mutes, MuteWindow, compile_window
from router.ratelimit import parse_rate
from router.redact import Redactor
from router.sandbox import (
    DEFAULT_LIMITS,
    BoundedSandbox,
    LimitExceeded,
    RenderLimits,
    bounded,
    static_problems,
)
from router.sources import SourceConfig
from router.templates import SUFFIX, Templates

__all__ = [
    "UNKNOWN_CHANNEL_TYPE",
    "CanvasConfig",
    "ChannelDef",
    "ChannelOptions",
    "Digest",
    "Rule",
    "RuleSet",
    "RuleSpec",
    "RulesFile",
    "SourceDef",
    "Throttle",
    "load_rules",
    "parse_duration",
]


#: How an error about a channel type no plugin registers starts (a reload adds that
#: plugins load at start only).
UNKNOWN_CHANNEL_TYPE = "unknown channel type"


def _rate_or_none(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if not isinstance(value, str):
        raise ValueError("expects a rate such as 1/s, 20/min or 100/h")
    return parse_rate(value)


class ChannelOptions(BaseModel):
    """Keys every channel accepts, whatever its type; the rest go to the plugin's model."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    concurrency: int = Field(default=4, ge=1, le=256)
    timeout: float = Field(default=30.0, gt=0, le=3600)
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    log_only: bool = False
    rate_limit: Annotated[float | None, BeforeValidator(_rate_or_none)] = Field(
        default=None, description="sends per second, written 1/s, 20/min; 'none' for no limit"
    )
    circuit_breaker: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="retryable failures in a row that hold the channel's deliveries while"
        " one probe at a time checks the receiver; 0: never",
    )
    mute: list[Any] | None = Field(
        default=None, description="quiet hours: windows, or names of windows under defaults"
    )
    during_mute: DuringMute = "hold"


def parse_duration(value: Any) -> float:
    """``30s``, ``10m``, ``1h``, ``2d`` or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match[1]) * _UNITS[match[2] or "s"]
    else:
        raise ValueError("expects a duration such as 30s, 10m, 1h or 2d")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
Duration = Annotated[float, BeforeValidator(parse_duration)]


class Throttle(BaseModel):
    """At most one notification per rule and key per window; the rest are counted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field("", description="template of the key, e.g. '{{ body.user.id }}'")
    per: Duration


class Digest(BaseModel):
    """Collect matching events into groups and send one message per group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_by: list[str] = Field(default_factory=list)
    wait: Duration
    max: int = Field(50, ge=1, le=10_000)


def _known_zone(name: str | None) -> str | None:
    """An IANA time zone name the system knows (``America/Chicago``), else an error."""
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name such as 'America/New_York')"
        ) from None
    return name


class Defaults(BaseModel):
    """Settings that apply to every rule that does not say otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_zone: str | None = Field(None, description="zone of events without metadata.time_zone")
    display_time_zone: Annotated[str | None, AfterValidator(_known_zone)] = Field(
        None, description="zone every time is shown in, whatever zone the event names"
    )
    throttle: Throttle | None = None
    windows: dict[str, MuteWindow] = Field(
        default_factory=dict, description="named quiet-hours windows rules and channels reuse"
    )
    redact_keys: list[str] = Field(
        default_factory=list,
        description="more JSON field names whose values are masked wherever events are"
        " shown (added to router.redact.REDACT_KEYS)",
    )
    render_timeout: Duration = Field(
        2.0, le=60, description="seconds one template render or if: may take"
    )
    render_max_output: int = Field(
        1_000_000,
        ge=1_000,
        le=100_000_000,
        description="the longest string or list a render may build, the most it may print"
        " and the most loop iterations and calls it may make",
    )

    @property
    def limits(self) -> RenderLimits:
        """The render limits these defaults set."""
        return RenderLimits(timeout=self.render_timeout, max_output=self.render_max_output)


class CanvasConfig(BaseModel):
    """``canvas:``: the Canvas REST API that ``enrich:`` reads, declared once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(
        None,
        pattern=r"^https?://[^/?#\s]+/?$",
        description="the instance, e.g. https://canvas.example.edu; default:"
        " https://<metadata.hostname> of each event",
    )
    token: SecretStr = Field(description="an access token with read rights on courses and users")
    hosts: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+(:\d{1,5})?$")]] = Field(
        default_factory=list,
        description="without url: the Canvas hostnames events may name; the token is sent"
        " to no other",
    )
    cache: Duration = Field(3600.0, description="how long fetched objects are reused")
    max_wait: Duration = Field(
        3600.0,
        description="how long an event waits for an unavailable API before it is"
        " routed without the missing data",
    )
    concurrency: int = Field(4, ge=1, le=64, description="requests in flight at once")
    timeout: float = Field(30.0, gt=0, le=600, description="seconds per request")
    max_pages: int = Field(20, ge=1, le=1000, description="pages read of one list")

    @model_validator(mode="after")
    def _somewhere_known(self) -> "CanvasConfig":
        # metadata.hostname comes from the event: sending the token wherever an event
        # points would hand it to anyone who can post one.
        if not self.url and not self.hosts:
            raise ValueError(
                "set url, or hosts (the Canvas hostnames events may name): the token is"
                " sent only there"
            )
        return self


class RuleSpec(BaseModel):
    """One routing rule as written: which events, which conditions, which channels."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1)
    events: list[str] = Field(min_length=1)
    match: dict[str, Any] | None = None
    if_: str | None = Field(None, alias="if")
    notify: list[str] = Field(min_length=1)
    template: str | None = None
    enabled: bool = True
    continue_: bool = Field(True, alias="continue")
    throttle: Throttle | None = None
    digest: Digest | None = None
    enrich: list[str] = Field(default_factory=list)
    recipients: str | None = None
    mute: list[Any] | None = None
    during_mute: DuringMute = "hold"


@dataclass(frozen=True)
class Rule:
    """A rule ready to evaluate: its spec with conditions and expression compiled."""

    spec: RuleSpec
    condition: AllOf
    expression: Callable[..., Any] | None
    throttle: Throttle | None
    mutes: Mutes | None = None  # quiet hours, when the rule has ``mute:``
    limits: RenderLimits = DEFAULT_LIMITS

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def notify(self) -> list[str]:
        return self.spec.notify

    @property
    def template(self) -> str | None:
        return self.spec.template

    @property
    def digest(self) -> Digest | None:
        return self.spec.digest

    @property
    def enrich(self) -> list[str]:
        """What it fetches from Canvas: its ``enrich:`` names and its ``recipients``."""
        names = list(self.spec.enrich)
        if self.spec.recipients and self.spec.recipients not in names:
            names.append(self.spec.recipients)
        return names

    def explain(self, ctx: MatchContext, *, strict: bool = False) -> str | None:
        """None when the rule's conditions hold for this event, else the first reason.
        ``strict``: an ``if:`` over its limits raises ``LimitExceeded`` (its delivery
        fails) instead of being a reason not to fire."""
        reason = self.condition.explain(ctx)
        if reason is None and self.expression is not None:
            try:
                with bounded(self.limits):
                    ok = bool(self.expression(**expression_vars(ctx)))
            except LimitExceeded as exc:
                if strict:
                    raise LimitExceeded(f"rule {self.name!r} if: {exc}") from None
                return f"if: {self.spec.if_!r} failed: {exc}"
            except Exception as exc:
                return f"if: {self.spec.if_!r} failed: {type(exc).__name__}: {exc}"
            reason = None if ok else f"if: {self.spec.if_!r} is false"
        return reason


def expression_vars(ctx: MatchContext) -> dict[str, Any]:
    """The names an ``if:`` expression sees (and what ``enrich:`` fetched)."""
    event = ctx.event
    return {
        **ctx.extra,
        "event": event,
        "metadata": event.get("metadata") or {},
        "body": event.get("body") or {},
        "previous": ctx.previous,
    }


class RulesFile(BaseModel):
    """The top level of a rules file (``version: 1``); channels and rules are checked
    one by one so that every error in every entry is reported at once."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    defaults: Defaults = Field(default_factory=Defaults)
    sources: dict[str, dict[str, Any]] = Field(default_factory=dict)
    canvas: CanvasConfig | None = None
    channels: dict[str, dict[str, Any]] = Field(default_factory=dict)
    rules: list[dict[str, Any]] = Field(default_factory=list)


@functools.cache
def channel_model(cls: type[ChannelConfig]) -> type[BaseModel]:
    """The plugin's config model plus the keys every channel accepts: validating
    against it catches typos in either, with a "did you mean" from both."""
    host = {name: (info.annotation, info) for name, info in ChannelOptions.model_fields.items()}
    return create_model(f"{cls.__name__}WithOptions", __base__=cls, **host)  # type: ignore[call-overload, no-any-return]


@dataclass(frozen=True)
class ChannelDef:
    """A channel declared in the rules file, its type resolved and its config validated."""

    name: str
    type: ChannelType
    options: ChannelOptions
    config: ChannelConfig
    mutes: Mutes | None = None  # quiet hours, when the channel has ``mute:``


@dataclass(frozen=True)
class SourceDef:
    """A source declared in the rules file, its type resolved and its config validated.
    Two definitions are equal when type and config are: a reload restarts a source
    only when its definition changed."""

    name: str
    type: SourceType
    config: SourceConfig


def _index_key(value: Any) -> Hashable | None:
    """How equality conditions are indexed: ``"79"`` and ``79`` share a key (as they
    compare equal in rules); lists and mappings are not indexed."""
    if isinstance(value, bool) or value is None:
        return ("v", value)
    if isinstance(value, str | int | float):
        return ("s", str(value))
    return None


@dataclass
class _Bucket:
    """The rules that select one event name, indexed by their first equality condition."""

    plain: list[int]
    by_value: dict[str, dict[Hashable, list[int]]]

    def candidates(self, event: Mapping[str, Any]) -> list[int]:
        found = list(self.plain)
        for path, table in self.by_value.items():
            value = lookup(event, path)
            key = None if value is MISSING else _index_key(value)
            if key is not None:
                found.extend(table.get(key, ()))
        return sorted(found)


@dataclass
class RuleSet:
    """A loaded, valid rules file. Evaluation is indexed by event name and by each
    rule's first equality condition, so its cost hardly grows with the number of rules."""

    file: str
    channels: dict[str, ChannelDef]
    rules: list[Rule]
    defaults: Defaults = field(default_factory=Defaults)
    sources: dict[str, SourceDef] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)
    canvas: CanvasConfig | None = None
    #: Not errors, but likely mistakes: an event name one slip away from a Canvas one,
    #: a channel that no rule notifies.
    warnings: list[ConfigError] = field(default_factory=list)
    _exact: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _globs: list[tuple[str, int]] = field(default_factory=list, repr=False)
    _buckets: dict[str, _Bucket] = field(default_factory=dict, repr=False)
    _enrich: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for index, rule in enumerate(self.rules):
            if not rule.spec.enabled:
                continue
            for pattern in rule.spec.events:
                if any(ch in pattern for ch in "*?["):
                    self._globs.append((pattern, index))
                else:
                    self._exact.setdefault(pattern, []).append(index)

    def _bucket(self, event_name: str) -> _Bucket:
        bucket = self._buckets.get(event_name)
        if bucket is None:
            selected = set(self._exact.get(event_name, ()))
            selected.update(i for p, i in self._globs if fnmatch.fnmatchcase(event_name, p))
            bucket = _Bucket(plain=[], by_value={})
            for index in sorted(selected):
                first = next(
                    (
                        c
                        for c in self.rules[index].condition.conditions
                        if isinstance(c, PathCondition) and c.op.name == "equals"
                    ),
                    None,
                )
                key = None if first is None else _index_key(first.operand)
                if first is None or key is None:
                    bucket.plain.append(index)
                else:
                    bucket.by_value.setdefault(first.path, {}).setdefault(key, []).append(index)
            if len(self._buckets) < 10_000:  # unknown event names are unbounded
                self._buckets[event_name] = bucket
        return bucket

    def redactor(self) -> Redactor:
        """Masks this file's secrets and credential-named fields (``redact_keys``)."""
        return Redactor(self.secrets, self.defaults.redact_keys)

    def rule_named(self, name: str) -> Rule | None:
        """The rule with this name, if the file has one."""
        return next((rule for rule in self.rules if rule.name == name), None)

    def selecting(self, event_name: str) -> list[Rule]:
        """The enabled rules whose ``events`` select this event name, in file order."""
        bucket = self._bucket(event_name)
        indexes = sorted(
            [*bucket.plain, *(i for t in bucket.by_value.values() for v in t.values() for i in v)]
        )
        return [self.rules[i] for i in indexes]

    def enrich_names(self, event_name: str) -> list[str]:
        """What the rules that select this event fetch from Canvas (before matching,
        since ``match:`` and ``if:`` may use it)."""
        found = self._enrich.get(event_name)
        if found is None:
            names: dict[str, None] = {}
            for rule in self.selecting(event_name):
                names.update(dict.fromkeys(rule.enrich))
            found = list(names)
            if len(self._enrich) < 10_000:  # unknown event names are unbounded
                self._enrich[event_name] = found
        return found

    def evaluate(
        self, event_name: str, ctx: MatchContext, failed: dict[str, str] | None = None
    ) -> list[Rule]:
        """The rules that fire for this event, in file order, honouring ``continue: false``.
        A rule whose ``if:`` went over its limits fires, with the error in ``failed``
        (by rule name): its deliveries fail, so the dead letters show it."""
        fired = []
        for index in self._bucket(event_name).candidates(ctx.event):
            rule = self.rules[index]
            try:
                reason = rule.explain(ctx, strict=True)
            except LimitExceeded as exc:
                reason = None
                if failed is not None:
                    failed[rule.name] = str(exc)
            if reason is None:
                fired.append(rule)
                if not rule.spec.continue_:
                    break
        return fired


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _compile_mutes(
    entries: list[Any] | None,
    during: DuringMute,
    defaults: Defaults,
    loc: tuple[str | int, ...],
    source: SourceMap,
    errors: list[ConfigError],
) -> Mutes | None:
    """The ``mute:`` list of a rule or channel: each entry a window, or the name of one
    under ``defaults.windows``. None when there is no list."""
    if entries is None:
        return None
    windows = []
    for position, entry in enumerate(entries):
        here = (*loc, "mute", position)
        if isinstance(entry, str):
            window = defaults.windows.get(entry)
            if window is None:
                known = sorted(defaults.windows)
                errors.append(
                    source.error(
                        here,
                        f"unknown mute window {entry!r}{_suggest(entry, known)};"
                        f" named windows (defaults.windows): {', '.join(known) or 'none'}",
                    )
                )
                continue
        else:
            try:
                window = MuteWindow.model_validate(entry)
            except ValidationError as exc:
                errors.extend(errors_from_validation(exc, source, MuteWindow, here))
                continue
        try:
            windows.append(compile_window(window, defaults.time_zone))
        except (ZoneInfoNotFoundError, ValueError):
            errors.append(
                source.error(here, f"unknown time zone {defaults.time_zone!r} (defaults.time_zone)")
            )
    return Mutes(windows, during)


def _check_channels(
    raw: Mapping[str, dict[str, Any]],
    source: SourceMap,
    channel_types: Mapping[str, ChannelType],
    errors: list[ConfigError],
    secrets: set[str],
    defaults: Defaults,
) -> dict[str, ChannelDef]:
    channels: dict[str, ChannelDef] = {}
    for name, entry in raw.items():
        loc = ("channels", name)
        kind = entry.get("type")
        ctype = channel_types.get(kind) if isinstance(kind, str) else None
        if ctype is None:
            known = sorted(channel_types)
            hint = _suggest(kind, known) if isinstance(kind, str) else ""
            message = f"{UNKNOWN_CHANNEL_TYPE} {kind!r}{hint}" if kind else "missing key 'type'"
            errors.append(
                source.error(
                    (*loc, "type") if kind else loc,
                    f"{message}; known types: {', '.join(known) or 'none'}",
                )
            )
            continue
        try:
            channel_model(ctype.cls.Config).model_validate(entry)
        except ValidationError as exc:
            errors.extend(errors_from_validation(exc, source, channel_model(ctype.cls.Config), loc))
            continue
        options = ChannelOptions.model_validate({k: v for k, v in entry.items() if k in HOST_KEYS})
        config = ctype.cls.Config.model_validate(
            {k: v for k, v in entry.items() if k not in HOST_KEYS}
        )
        mutes = _compile_mutes(options.mute, options.during_mute, defaults, loc, source, errors)
        channels[name] = ChannelDef(name, ctype, options, config, mutes)
        secrets.update(secret_values(config))
    return channels


def _check_sources(
    raw: Mapping[str, dict[str, Any]],
    source: SourceMap,
    source_types: Mapping[str, SourceType],
    errors: list[ConfigError],
    secrets: set[str],
) -> dict[str, SourceDef]:
    sources: dict[str, SourceDef] = {}
    for name, entry in raw.items():
        loc = ("sources", name)
        kind = entry.get("type")
        stype = source_types.get(kind) if isinstance(kind, str) else None
        if stype is None:
            known = sorted(source_types)
            hint = _suggest(kind, known) if isinstance(kind, str) else ""
            message = f"unknown source type {kind!r}{hint}" if kind else "missing key 'type'"
            errors.append(
                source.error(
                    (*loc, "type") if kind else loc,
                    f"{message}; known types: {', '.join(known) or 'none'}",
                )
            )
            continue
        settings = {k: v for k, v in entry.items() if k != "type"}
        try:
            config = stype.cls.Config.model_validate(settings)
        except ValidationError as exc:
            errors.extend(errors_from_validation(exc, source, stype.cls.Config, loc))
            continue
        sources[name] = SourceDef(name, stype, config)
        secrets.update(secret_values(config))
    return sources


def _source_warnings(sources: dict[str, SourceDef], source: SourceMap) -> list[ConfigError]:
    """What each source's plugin says is worth a warning (e.g. SQS: the router cannot
    check the queue's redrive policy)."""
    warnings = []
    for name, definition in sources.items():
        try:
            messages = definition.type.cls.warnings(definition.config)
        except Exception as exc:  # the plugin's own code
            messages = [f"the plugin's warnings() raised {type(exc).__name__}"]
        warnings.extend(source.error(("sources", name), message) for message in messages)
    return warnings


def secret_values(model: BaseModel) -> set[str]:
    """Every ``SecretStr`` in a config, however it was written: the redactor masks them."""
    found: set[str] = set()
    for value in model.__dict__.values():
        if isinstance(value, SecretStr) and value.get_secret_value():
            found.add(value.get_secret_value())
        elif isinstance(value, BaseModel):
            found |= secret_values(value)
    return found


def _check_rules(
    raw: list[dict[str, Any]],
    parsed: RulesFile,
    source: SourceMap,
    templates: Templates | None,
    errors: list[ConfigError],
) -> list[Rule]:
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    channels = parsed.channels
    names = list(channels)
    env = templates.env if templates is not None else _plain_sandbox()
    for index, entry in enumerate(raw):
        loc = ("rules", index)
        if not isinstance(entry, dict):
            continue  # not a mapping: the top level's check reported it
        try:
            spec = RuleSpec.model_validate(entry)
        except ValidationError as exc:
            errors.extend(errors_from_validation(exc, source, RuleSpec, loc))
            continue
        if spec.name in seen:
            errors.append(
                source.error(
                    (*loc, "name"),
                    f"duplicate rule name {spec.name!r} (also rules[{seen[spec.name]}])",
                )
            )
        seen.setdefault(spec.name, index)
        _check_enrich(spec, loc, parsed.canvas, source, errors)
        for position, channel in enumerate(spec.notify):
            if channel not in channels:
                errors.append(
                    source.error(
                        (*loc, "notify", position),
                        f"unknown channel {channel!r}{_suggest(channel, names)}",
                    )
                )
            elif templates is not None and spec.template is not None:
                problem = _template_problem(
                    templates, spec.template, channel, channels[channel], parsed.defaults.limits
                )
                if problem:
                    errors.append(source.error((*loc, "template"), problem))
        rules.append(_compile_rule(spec, loc, parsed.defaults, env, source, errors))
    return rules


def _check_enrich(
    spec: RuleSpec,
    loc: tuple[str | int, ...],
    canvas: CanvasConfig | None,
    source: SourceMap,
    errors: list[ConfigError],
) -> None:
    names = list(LOOKUPS)
    for position, name in enumerate(spec.enrich):
        if name not in LOOKUPS:
            errors.append(
                source.error(
                    (*loc, "enrich", position),
                    f"unknown enrichment {name!r}{_suggest(name, names)};"
                    f" known: {', '.join(names)}",
                )
            )
    if spec.recipients is not None and spec.recipients not in PEOPLE:
        errors.append(
            source.error(
                (*loc, "recipients"),
                f"recipients {spec.recipients!r} is not a person or a list of people"
                f"{_suggest(spec.recipients, list(PEOPLE))}; use one of: {', '.join(PEOPLE)}",
            )
        )
    if (spec.enrich or spec.recipients) and canvas is None:
        where = (*loc, "enrich") if spec.enrich else (*loc, "recipients")
        errors.append(
            source.error(
                where, "this rule reads the Canvas API, but the file has no `canvas:` section"
            )
        )
    if spec.recipients is not None and spec.digest is not None:
        errors.append(
            source.error((*loc, "recipients"), "recipients and digest cannot be combined")
        )


def _plain_sandbox() -> BoundedSandbox:
    return BoundedSandbox(undefined=jinja2.StrictUndefined)


def _compile_rule(
    spec: RuleSpec,
    loc: tuple[str | int, ...],
    defaults: Defaults,
    env: jinja2.Environment,
    source: SourceMap,
    errors: list[ConfigError],
) -> Rule:
    def error(where: tuple[str | int, ...], message: str) -> None:
        errors.append(source.error(where, message))

    condition = compile_match(spec.match or {}, (*loc, "match"), error)
    expression = None
    limits = defaults.limits
    if spec.if_ is not None:
        try:
            expression = env.compile_expression(spec.if_)
            tree = Parser(env, spec.if_, state="variable").parse_expression()
            for _, problem in static_problems(tree, limits):
                error((*loc, "if"), f"over a limit: {problem}")
        except jinja2.TemplateError as exc:
            error((*loc, "if"), f"invalid expression: {exc}")
    throttle = spec.throttle or defaults.throttle
    if throttle is not None and throttle.key:
        try:
            env.from_string(throttle.key)
            for _, problem in static_problems(env.parse(throttle.key), limits):
                error((*loc, "throttle", "key"), f"over a limit: {problem}")
        except jinja2.TemplateError as exc:
            error((*loc, "throttle", "key"), f"invalid template: {exc}")
    mutes = _compile_mutes(spec.mute, spec.during_mute, defaults, loc, source, errors)
    return Rule(
        spec=spec,
        condition=condition,
        expression=expression,
        throttle=throttle,
        mutes=mutes,
        limits=limits,
    )


def _template_errors(templates: Templates, limits: RenderLimits) -> list[ConfigError]:
    """Every template in the directory must compile: the templates an event name picks
    at run time are not named in the rules, and must not fail at 3 a.m. either."""
    if not templates.directory.is_dir():
        message = "templates directory not found (set --templates or ROUTER_TEMPLATES)"
        return [ConfigError(str(templates.directory), 1, 1, "", message)]
    found = []
    for name in templates.names():
        problem = templates.problem(name, limits)
        if problem is not None:
            line, message = problem
            found.append(ConfigError(str(templates.directory / name), line, 1, "", message))
    return found


def _template_problem(
    templates: Templates,
    template: str,
    channel: str,
    entry: dict[str, Any],
    limits: RenderLimits,
) -> str | None:
    candidates = templates.candidates(template, "", str(entry.get("type")))
    found = [name for name in candidates if (templates.directory / name).is_file()]
    if not found:
        return (
            f"template {template!r} not found for channel {channel!r}"
            f" (looked for {', '.join(candidates)} in {templates.directory})"
            + _suggest(template, _template_bases(templates))
        )
    return templates.check(found[0], limits)


def _template_bases(templates: Templates) -> list[str]:
    """What a rule's ``template:`` may name: ``a`` for ``a.j2`` and ``a.slack.j2``."""
    bases = set()
    for name in templates.names():
        stem = name.removesuffix(SUFFIX)
        bases.add(stem)
        bases.add(stem.rpartition(".")[0] or stem)
    return sorted(bases)


def load_rules(
    path: Path,
    channel_types: Mapping[str, ChannelType],
    *,
    templates: Templates | None = None,
    environ: Mapping[str, str] | None = None,
    max_attempts: int | None = None,
    source_types: Mapping[str, SourceType] | None = None,
) -> RuleSet:
    """Load and fully validate a rules file; raise ``ConfigErrors`` listing every problem
    (and the warnings found too). ``max_attempts`` is the attempts a channel that does
    not set its own gets (the service's setting), for the warnings."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigErrors([ConfigError(file, 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    data, source = load_yaml(text, file)
    data, secrets, errors = expand_env(data, source, os.environ if environ is None else environ)
    if not isinstance(data, dict):
        raise ConfigErrors([*errors, source.error((), "a rules file must be a mapping")])
    try:
        parsed = RulesFile.model_validate(data)
    except ValidationError as exc:
        # Report the top level's errors, and go on checking the channels and rules
        # that can be read, so that one run shows every problem.
        errors += errors_from_validation(exc, source, RulesFile)
        parsed = _readable_parts(data)
    sources = _check_sources(parsed.sources, source, source_types or {}, errors, secrets)
    channels = _check_channels(
        parsed.channels, source, channel_types, errors, secrets, parsed.defaults
    )
    if parsed.canvas is not None:
        secrets.update(secret_values(parsed.canvas))
    rules = _check_rules(parsed.rules, parsed, source, templates, errors)
    if templates is not None:
        errors.extend(_template_errors(templates, parsed.defaults.limits))
    warnings = (
        _source_warnings(sources, source)
        + _event_name_warnings(rules, source)
        + _unused_channel_warnings(list(channels), rules, source)
        + _attempts_warnings(channels, source, max_attempts)
    )
    if errors:
        raise ConfigErrors(errors, warnings)
    return RuleSet(
        file=file,
        channels=channels,
        rules=rules,
        defaults=parsed.defaults,
        sources=sources,
        secrets=secrets,
        canvas=parsed.canvas,
        warnings=sorted(warnings),
    )


def _readable_parts(data: dict[str, Any]) -> RulesFile:
    """The channels and rules of a file whose top level is not valid, as far as each
    entry has the right shape (the top level's errors are reported already)."""
    channels = data.get("channels")
    rules = data.get("rules")
    defaults = data.get("defaults")
    try:
        valid_defaults = Defaults.model_validate(defaults) if defaults else Defaults()
    except ValidationError:
        # Its named windows stay known (as placeholders: the file is rejected anyway),
        # so that a bad window is reported once, not again at every use of its name.
        windows = defaults.get("windows") if isinstance(defaults, dict) else None
        valid_defaults = Defaults.model_construct(
            windows={
                name: MuteWindow.model_construct(days=["mon"], times=None, dates=[])
                for name in (windows if isinstance(windows, dict) else ())
                if isinstance(name, str)
            }
        )
    sources = data.get("sources")
    return RulesFile.model_construct(
        version=1,
        defaults=valid_defaults,
        sources={
            name: entry
            for name, entry in (sources.items() if isinstance(sources, dict) else ())
            if isinstance(name, str) and isinstance(entry, dict)
        },
        channels={
            name: entry
            for name, entry in (channels.items() if isinstance(channels, dict) else ())
            if isinstance(name, str) and isinstance(entry, dict)
        },
        # Kept whole, so that each rule keeps its index (_check_rules skips the rest).
        rules=rules if isinstance(rules, list) else [],
        # Present but invalid (reported already): rules that enrich are not told
        # that it is missing.
        canvas=CanvasConfig.model_construct() if data.get("canvas") is not None else None,
    )


def _attempts_warnings(
    channels: Mapping[str, ChannelDef], source: SourceMap, max_attempts: int | None
) -> list[ConfigError]:
    """Channels whose deliveries are dead-lettered before their circuit breaker can
    open: with fewer attempts than its threshold, a receiver that is down kills each
    delivery instead of holding it until the receiver is back."""
    warnings = []
    for name, channel in channels.items():
        attempts = channel.options.max_attempts or max_attempts
        threshold = channel.options.circuit_breaker
        if attempts is None or not threshold or attempts >= threshold:
            continue
        where = "max_attempts" if channel.options.max_attempts else "circuit_breaker"
        said = "" if channel.options.max_attempts else " (the service's ROUTER_MAX_ATTEMPTS)"
        warnings.append(
            source.error(
                ("channels", name, where),
                f"max_attempts {attempts}{said} is below circuit_breaker {threshold}:"
                " deliveries are dead-lettered before the circuit breaker can hold them;"
                f" raise max_attempts to at least {threshold} or lower circuit_breaker",
            )
        )
    return warnings


def _unused_channel_warnings(
    channels: list[str], rules: list[Rule], source: SourceMap
) -> list[ConfigError]:
    """Channels no rule notifies (a disabled rule counts): left over, or forgotten."""
    used = {channel for rule in rules for channel in rule.spec.notify}
    return [
        ConfigError(
            source.file,
            *source.key_mark(("channels", name)),
            f"channels.{name}",
            f"channel {name!r} is not notified by any rule",
        )
        for name in channels
        if name not in used
    ]


def _event_name_warnings(rules: list[Rule], source: SourceMap) -> list[ConfigError]:
    """Names in ``events:`` that look like a misspelt Canvas event. Any name may arrive,
    so they are not errors; but such a rule would wait for an event that never comes."""
    warnings = []
    for index, rule in enumerate(rules):
        for position, name in enumerate(rule.spec.events):
            meant = likely_typo(name)
            if meant is not None:
                message = (
                    f"{name!r} is not a Canvas event (did you mean {meant!r}?);"
                    " the rule fires only for events named exactly so"
                )
                warnings.append(source.error(("rules", index, "events", position), message))
    return warnings
