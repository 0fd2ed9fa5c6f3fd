"""Silences: what a silence selects, and whether a delivery is one of them.

A silence (stored as ``router.store.Silence``) holds matchers: globs on the rule, the
channel and the event name, and ``match:`` conditions on the event's fields written
with the rules file's operators. Every matcher given must hold; a silence must give
at least one. Routing checks each delivery against the active silences and records
a match as ``silenced`` instead of sending it.
"""

import fnmatch
import secrets
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router.matching import AllOf, MatchContext, compile_match

__all__ = ["Matchers", "SilenceMatcher", "compile_matchers", "describe", "new_silence_id"]


class Matchers(BaseModel):
    """What a silence selects. ``rule``, ``channel`` and ``event`` are globs
    (``course-*``); ``match`` is a rules-file ``match:`` block on the event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str | None = Field(None, min_length=1)
    channel: str | None = Field(None, min_length=1)
    event: str | None = Field(None, min_length=1)
    match: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _selects_something(self) -> "Matchers":
        if not (self.rule or self.channel or self.event or self.match):
            raise ValueError("a silence needs at least one of rule, channel, event, match")
        return self


@dataclass(frozen=True)
class SilenceMatcher:
    """Compiled matchers: ``matches`` says whether a delivery is selected."""

    matchers: Matchers
    condition: AllOf

    def matches(self, rule: str, channel: str, event_name: str, ctx: MatchContext) -> bool:
        """Whether the delivery of ``rule`` to ``channel`` for this event is selected."""
        m = self.matchers
        return (
            (m.rule is None or fnmatch.fnmatchcase(rule, m.rule))
            and (m.channel is None or fnmatch.fnmatchcase(channel, m.channel))
            and (m.event is None or fnmatch.fnmatchcase(event_name, m.event))
            and self.condition.test(ctx)
        )


def compile_matchers(data: Any) -> SilenceMatcher:
    """Validate and compile a silence's matchers; raise ``ValueError`` naming every
    problem (a missing matcher, an unknown key, a bad ``match:`` operator)."""
    try:
        matchers = Matchers.model_validate(data)
    except ValidationError as exc:
        problems = [
            (".".join(map(str, err["loc"])) + ": " if err["loc"] else "") + err["msg"]
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise ValueError("; ".join(problems)) from None
    errors: list[str] = []
    condition = compile_match(
        matchers.match or {},
        ("match",),
        lambda loc, message: errors.append(f"{'.'.join(map(str, loc))}: {message}"),
    )
    if errors:
        raise ValueError("; ".join(errors))
    return SilenceMatcher(matchers, condition)


def describe(matchers: dict[str, Any]) -> str:
    """Matchers in one line, as listings show them: ``rule=a channel=slack-*``."""
    parts = [f"{key}={matchers[key]}" for key in ("rule", "channel", "event") if matchers.get(key)]
    if matchers.get("match"):
        parts.append("match=" + ",".join(sorted(map(str, matchers["match"]))))
    return " ".join(parts)


def new_silence_id() -> str:
    """A short random id, easy to type in ``router silence expire ID``."""
    return secrets.token_hex(6)
