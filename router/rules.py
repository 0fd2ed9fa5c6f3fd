"""The rules file: its models, loading with file:line errors, and matching events to rules.

``load_rules`` validates everything it can before the service uses the file: the
YAML, every key (typos are errors), env references, each channel's config against its
plugin's model, the channels each rule notifies, and the templates rules name.
"""

import difflib
import fnmatch
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from router.channels import ChannelConfig
from router.config_source import (
    ConfigError,
    ConfigErrors,
    SourceMap,
    errors_from_validation,
    expand_env,
    load_yaml,
)
from router.plugins import ChannelType
from router.templates import Templates

__all__ = ["ChannelDef", "ChannelOptions", "RuleSet", "RuleSpec", "RulesFile", "load_rules"]

HOST_CHANNEL_KEYS = ("type", "concurrency", "timeout", "max_attempts", "log_only")


class ChannelOptions(BaseModel):
    """Keys every channel accepts, whatever its type; the rest go to the plugin's model."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    concurrency: int = Field(default=4, ge=1, le=256)
    timeout: float = Field(default=30.0, gt=0, le=3600)
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    log_only: bool = False


class RuleSpec(BaseModel):
    """One routing rule: which events, which channels, which template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    events: list[str] = Field(min_length=1)
    notify: list[str] = Field(min_length=1)
    template: str | None = None
    enabled: bool = True


class RulesFile(BaseModel):
    """The top level of a rules file (``version: 1``); channels and rules are checked
    one by one so that every error in every entry is reported at once."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
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


@dataclass
class RuleSet:
    """A loaded, valid rules file, with matching indexed by event name."""

    file: str
    channels: dict[str, ChannelDef]
    rules: list[RuleSpec]
    secrets: set[str] = field(default_factory=set)
    _exact: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _globs: list[tuple[str, int]] = field(default_factory=list, repr=False)
    _cache: dict[str, list[RuleSpec]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for index, rule in enumerate(self.rules):
            if not rule.enabled:
                continue
            for pattern in rule.events:
                if any(ch in pattern for ch in "*?["):
                    self._globs.append((pattern, index))
                else:
                    self._exact.setdefault(pattern, []).append(index)

    def match(self, event_name: str) -> list[RuleSpec]:
        """The enabled rules that select ``event_name``, in file order."""
        hit = self._cache.get(event_name)
        if hit is None:
            indexes = set(self._exact.get(event_name, ()))
            indexes.update(i for p, i in self._globs if fnmatch.fnmatchcase(event_name, p))
            hit = [self.rules[i] for i in sorted(indexes)]
            if len(self._cache) < 10_000:
                self._cache[event_name] = hit
        return hit


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_channels(
    raw: Mapping[str, dict[str, Any]],
    source: SourceMap,
    channel_types: Mapping[str, ChannelType],
    errors: list[ConfigError],
) -> dict[str, ChannelDef]:
    channels: dict[str, ChannelDef] = {}
    for name, entry in raw.items():
        loc = ("channels", name)
        kind = entry.get("type")
        ctype = channel_types.get(kind) if isinstance(kind, str) else None
        if ctype is None:
            known = sorted(channel_types)
            hint = _suggest(kind, known) if isinstance(kind, str) else ""
            message = f"unknown channel type {kind!r}{hint}" if kind else "missing key 'type'"
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
        options = ChannelOptions.model_validate(
            {k: v for k, v in entry.items() if k in HOST_CHANNEL_KEYS}
        )
        config = ctype.cls.Config.model_validate(
            {k: v for k, v in entry.items() if k not in HOST_CHANNEL_KEYS}
        )
        channels[name] = ChannelDef(name, ctype, options, config)
    return channels


def _check_rules(
    raw: list[dict[str, Any]],
    channels: Mapping[str, dict[str, Any]],
    source: SourceMap,
    templates: Templates | None,
    errors: list[ConfigError],
) -> list[RuleSpec]:
    rules: list[RuleSpec] = []
    seen: dict[str, int] = {}
    names = list(channels)
    for index, entry in enumerate(raw):
        loc = ("rules", index)
        try:
            rule = RuleSpec.model_validate(entry)
        except ValidationError as exc:
            errors.extend(errors_from_validation(exc, source, RuleSpec, loc))
            continue
        rules.append(rule)
        if rule.name in seen:
            errors.append(
                source.error(
                    (*loc, "name"),
                    f"duplicate rule name {rule.name!r} (also rules[{seen[rule.name]}])",
                )
            )
        seen.setdefault(rule.name, index)
        for position, channel in enumerate(rule.notify):
            if channel not in channels:
                errors.append(
                    source.error(
                        (*loc, "notify", position),
                        f"unknown channel {channel!r}{_suggest(channel, names)}",
                    )
                )
            elif templates is not None and rule.template is not None:
                problem = _template_problem(templates, rule.template, channel, channels[channel])
                if problem:
                    errors.append(source.error((*loc, "template"), problem))
    return rules


def _template_problem(
    templates: Templates, template: str, channel: str, entry: dict[str, Any]
) -> str | None:
    candidates = templates.candidates(template, "", str(entry.get("type")))
    found = [name for name in candidates if (templates.directory / name).is_file()]
    if not found:
        return (
            f"template {template!r} not found for channel {channel!r}"
            f" (looked for {', '.join(candidates)} in {templates.directory})"
        )
    return templates.check(found[0])


def load_rules(
    path: Path,
    channel_types: Mapping[str, ChannelType],
    *,
    templates: Templates | None = None,
    environ: Mapping[str, str] | None = None,
) -> RuleSet:
    """Load and fully validate a rules file; raise ``ConfigErrors`` listing every problem."""
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
        raise ConfigErrors(errors + errors_from_validation(exc, source, RulesFile)) from None
    channels = _check_channels(parsed.channels, source, channel_types, errors)
    rules = _check_rules(parsed.rules, parsed.channels, source, templates, errors)
    if errors:
        raise ConfigErrors(errors)
    return RuleSet(file=file, channels=channels, rules=rules, secrets=secrets)
