"""The rules file: its models, loading with file:line errors, and matching events to rules.

``load_rules`` validates everything it can before the service uses the file: the
YAML, every key (typos are errors), env references, each channel's config against its
plugin's model, the channels each rule notifies, and the templates rules name.
"""

import difflib
import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    """The whole rules file (``version: 1``)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    channels: dict[str, ChannelOptions] = Field(default_factory=dict)
    rules: list[RuleSpec] = Field(default_factory=list)


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
    raw: Mapping[str, Any],
    parsed: RulesFile,
    source: SourceMap,
    channel_types: Mapping[str, ChannelType],
    errors: list[ConfigError],
) -> dict[str, ChannelDef]:
    channels: dict[str, ChannelDef] = {}
    for name, options in parsed.channels.items():
        loc = ("channels", name)
        ctype = channel_types.get(options.type)
        if ctype is None:
            known = sorted(channel_types)
            errors.append(
                source.error(
                    (*loc, "type"),
                    f"unknown channel type {options.type!r}{_suggest(options.type, known)};"
                    f" known types: {', '.join(known) or 'none'}",
                )
            )
            continue
        plugin_keys = {k: v for k, v in raw[name].items() if k not in HOST_CHANNEL_KEYS}
        try:
            config = ctype.cls.Config.model_validate(plugin_keys)
        except ValidationError as exc:
            errors.extend(errors_from_validation(exc, source, ctype.cls.Config, prefix=loc))
            continue
        channels[name] = ChannelDef(name, ctype, options, config)
    return channels


def _check_rules(
    parsed: RulesFile, source: SourceMap, templates: Templates | None, errors: list[ConfigError]
) -> None:
    seen: dict[str, int] = {}
    names = list(parsed.channels)
    for index, rule in enumerate(parsed.rules):
        loc = ("rules", index)
        if rule.name in seen:
            errors.append(
                source.error(
                    (*loc, "name"),
                    f"duplicate rule name {rule.name!r} (also rules[{seen[rule.name]}])",
                )
            )
        seen.setdefault(rule.name, index)
        for position, channel in enumerate(rule.notify):
            if channel not in parsed.channels:
                errors.append(
                    source.error(
                        (*loc, "notify", position),
                        f"unknown channel {channel!r}{_suggest(channel, names)}",
                    )
                )
            elif templates is not None and rule.template is not None:
                ctype = parsed.channels[channel].type
                candidates = templates.candidates(rule.template, "", ctype)
                found = [n for n in candidates if (templates.directory / n).is_file()]
                if not found:
                    errors.append(
                        source.error(
                            (*loc, "template"),
                            f"template {rule.template!r} not found for channel {channel!r}"
                            f" (looked for {', '.join(candidates)} in {templates.directory})",
                        )
                    )
                elif problem := templates.check(found[0]):
                    errors.append(source.error((*loc, "template"), problem))


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
    try:
        parsed = RulesFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors(
            sorted(errors + errors_from_validation(exc, source, RulesFile))
        ) from None
    channels = _check_channels(data.get("channels") or {}, parsed, source, channel_types, errors)
    _check_rules(parsed, source, templates, errors)
    if errors:
        raise ConfigErrors(sorted(errors))
    return RuleSet(file=file, channels=channels, rules=parsed.rules, secrets=secrets)
