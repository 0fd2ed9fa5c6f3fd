"""Rule conditions: ``match:`` blocks compiled once from the rules file, tested per event.

A ``match:`` block maps dotted paths into the event to a value (equals) or to a
mapping of operators, all of which must hold; ``any``, ``all`` and ``not`` group
further blocks. Every condition can also say why it failed (``router test --explain``).
"""

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

__all__ = [
    "MISSING",
    "OPERATORS",
    "AllOf",
    "AnyOf",
    "Condition",
    "MatchContext",
    "Not",
    "PathCondition",
    "compile_match",
    "lookup",
]


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
GROUPS = ("all", "any", "not")


def lookup(data: Any, path: str) -> Any:
    """The value at a dotted path (``body.course.id``; list items by number), or MISSING.

    A key may itself hold dots: Caliper's ``extensions.com.instructure.canvas.hostname``
    finds the key ``com.instructure.canvas`` (the longest key that is there wins).
    """
    parts = path.split(".")
    index = 0
    while index < len(parts):
        part = parts[index]
        if isinstance(data, Mapping):
            found = data.get(part, MISSING)
            if found is MISSING:
                return _dotted_key(data, parts, index)
            data = found
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return MISSING
        index += 1
    return data


def _dotted_key(data: Mapping[str, Any], parts: list[str], index: int) -> Any:
    """The rest of a lookup where ``parts[index]`` alone is no key: try the key made
    of it and the parts after it (longest first), then go on from there."""
    for end in range(len(parts), index + 1, -1):
        found = data.get(".".join(parts[index:end]), MISSING)
        if found is not MISSING:
            return found if end == len(parts) else lookup(found, ".".join(parts[end:]))
    return MISSING


@dataclass(frozen=True)
class MatchContext:
    """What conditions see: the event, and the entity's previous snapshot if any.
    ``extra`` holds what ``enrich:`` fetched (``course``, ``teachers``, ...): ``if:``
    sees each as a name, and ``match:`` paths start with it (``course.name``)."""

    event: Mapping[str, Any]
    previous: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _same(value: Any, operand: Any) -> bool:
    """Equality that forgives Canvas' string ids: ``"79"`` equals ``79``."""
    if value == operand:
        return True
    numeric = (int, float)
    if isinstance(value, str) and isinstance(operand, numeric) and not isinstance(operand, bool):
        return value == str(operand)
    if isinstance(operand, str) and isinstance(value, numeric) and not isinstance(value, bool):
        return operand == str(value)
    return False


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _compare(test: Callable[[float, float], bool]) -> Callable[[Any, Any], bool]:
    def op(value: Any, operand: Any) -> bool:
        number = _number(value)
        return number is not None and test(number, float(operand))

    return op


def _contains(value: Any, operand: Any) -> bool:
    if isinstance(value, str):
        return isinstance(operand, str) and operand in value
    if isinstance(value, list):
        return any(_same(item, operand) for item in value)
    return False


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def compile_regex(pattern: str) -> Any:
    """Compile with RE2: matching time is linear, so no pattern can hang the router."""
    try:
        return re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"invalid regex {pattern!r}: {reason} (RE2 syntax)") from None


@dataclass(frozen=True)
class Operator:
    """One ``match:`` operator: how to check its operand, and how to test a value."""

    name: str
    prepare: Callable[[Any], Any]
    test: Callable[[Any, Any], bool]
    on_missing: bool = False


def _list(operand: Any) -> list[Any]:
    if not isinstance(operand, list):
        raise ValueError("expects a list")
    return operand


def _number_operand(operand: Any) -> float:
    number = _number(operand)
    if number is None:
        raise ValueError("expects a number")
    return number


def _string(operand: Any) -> str:
    if not isinstance(operand, str):
        raise ValueError("expects a string")
    return operand


def _bool(operand: Any) -> bool:
    if not isinstance(operand, bool):
        raise ValueError("expects true or false")
    return operand


def _scalar(operand: Any) -> Any:
    if isinstance(operand, dict | list):
        raise ValueError("expects a string, number, boolean or null")
    return operand


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in [
        Operator("equals", lambda o: o, _same),
        Operator("not_equals", lambda o: o, lambda v, o: not _same(v, o), on_missing=True),
        Operator("in", _list, lambda v, o: any(_same(v, item) for item in o)),
        Operator(
            "not_in", _list, lambda v, o: not any(_same(v, item) for item in o), on_missing=True
        ),
        Operator("regex", lambda o: compile_regex(_string(o)), lambda v, o: _regex(v, o)),
        Operator("exists", _bool, lambda v, o: (v is not None) == o),
        Operator("gt", _number_operand, _compare(lambda a, b: a > b)),
        Operator("gte", _number_operand, _compare(lambda a, b: a >= b)),
        Operator("lt", _number_operand, _compare(lambda a, b: a < b)),
        Operator("lte", _number_operand, _compare(lambda a, b: a <= b)),
        Operator("contains", _scalar, _contains),
        Operator("startswith", _string, lambda v, o: isinstance(v, str) and v.startswith(o)),
    ]
}
OPERATOR_NAMES = sorted([*OPERATORS, "changed"])


def _regex(value: Any, pattern: Any) -> bool:
    return isinstance(value, str) and pattern.search(value) is not None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Condition:
    """A compiled condition."""

    def test(self, ctx: MatchContext) -> bool:
        """Whether the condition holds for this event."""
        raise NotImplementedError

    def explain(self, ctx: MatchContext) -> str | None:
        """None when the condition holds, else why not."""
        raise NotImplementedError


@dataclass(frozen=True)
class PathCondition(Condition):
    """``path: {op: operand}`` (``path: value`` is ``equals``)."""

    path: str
    op: Operator
    operand: Any
    shown: Any

    def test(self, ctx: MatchContext) -> bool:
        value = lookup(ctx.event, self.path)
        if value is MISSING:
            return (self.op.name == "exists" and self.operand is False) or self.op.on_missing
        return self.op.test(value, self.operand)

    def explain(self, ctx: MatchContext) -> str | None:
        if self.test(ctx):
            return None
        value = lookup(ctx.event, self.path)
        return f"{self.path} {self.op.name} {_show(self.shown)}: got {_show(value)}"


@dataclass(frozen=True)
class Changed(Condition):
    """``path: {changed: true}``: the value differs from the entity's previous snapshot.

    With no previous snapshot the router cannot tell, and the value counts as unchanged.
    """

    path: str
    want: bool

    def is_changed(self, ctx: MatchContext) -> bool:
        if ctx.previous is None:
            return False
        now = lookup(ctx.event, self.path)
        before = lookup(ctx.previous, self.path)
        return now is not MISSING and now != before

    def test(self, ctx: MatchContext) -> bool:
        return self.is_changed(ctx) == self.want

    def explain(self, ctx: MatchContext) -> str | None:
        if self.test(ctx):
            return None
        if ctx.previous is None and self.want:
            return f"{self.path} changed: no previous snapshot to compare with"
        return (
            f"{self.path} changed {str(self.want).lower()}: it did{'' if not self.want else ' not'}"
        )


@dataclass(frozen=True)
class AllOf(Condition):
    """Every condition holds (a ``match:`` block, or ``all: [...]``)."""

    conditions: tuple[Condition, ...]

    def test(self, ctx: MatchContext) -> bool:
        return all(c.test(ctx) for c in self.conditions)

    def explain(self, ctx: MatchContext) -> str | None:
        for condition in self.conditions:
            reason = condition.explain(ctx)
            if reason:
                return reason
        return None


@dataclass(frozen=True)
class AnyOf(Condition):
    """At least one condition holds (``any: [...]``)."""

    conditions: tuple[Condition, ...]

    def test(self, ctx: MatchContext) -> bool:
        return any(c.test(ctx) for c in self.conditions)

    def explain(self, ctx: MatchContext) -> str | None:
        if self.test(ctx):
            return None
        reasons = [c.explain(ctx) for c in self.conditions]
        return "none of: " + "; ".join(r for r in reasons if r)


@dataclass(frozen=True)
class Not(Condition):
    """The condition does not hold (``not: {...}``)."""

    condition: Condition

    def test(self, ctx: MatchContext) -> bool:
        return not self.condition.test(ctx)

    def explain(self, ctx: MatchContext) -> str | None:
        return "the 'not' block matched" if self.condition.test(ctx) else None


Loc = tuple[str | int, ...]
ErrorSink = Callable[[Loc, str], None]


def compile_match(spec: Any, loc: Loc, error: ErrorSink) -> AllOf:
    """Compile a ``match:`` mapping; report each problem through ``error(loc, message)``."""
    if not isinstance(spec, Mapping):
        error(loc, "a match block must be a mapping of paths to values or operators")
        return AllOf(())
    conditions: list[Condition] = []
    for key, value in spec.items():
        here = (*loc, key)
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                error(here, f"'{key}' takes a non-empty list of match blocks")
                continue
            blocks = tuple(compile_match(item, (*here, i), error) for i, item in enumerate(value))
            conditions.append(AllOf(blocks) if key == "all" else AnyOf(blocks))
        elif key == "not":
            conditions.append(Not(compile_match(value, here, error)))
        elif not isinstance(key, str) or not key:
            error(here, "a match key must be a dotted path such as body.course.id")
        elif isinstance(value, Mapping):
            conditions.extend(_compile_operators(key, value, here, error))
        else:
            conditions.append(PathCondition(key, OPERATORS["equals"], value, value))
    return AllOf(tuple(conditions))


def _compile_operators(
    path: str, spec: Mapping[str, Any], loc: Loc, error: ErrorSink
) -> list[Condition]:
    conditions: list[Condition] = []
    if not spec:
        error(loc, "empty operator block; write a value, or e.g. {exists: true}")
    for name, operand in spec.items():
        here = (*loc, name)
        if name == "changed":
            if isinstance(operand, bool):
                conditions.append(Changed(path, operand))
            else:
                error(here, "'changed' expects true or false")
            continue
        op = OPERATORS.get(name)
        if op is None:
            close = difflib.get_close_matches(str(name), OPERATOR_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            error(here, f"unknown operator {name!r}{hint}; operators: {', '.join(OPERATOR_NAMES)}")
            continue
        try:
            prepared = op.prepare(operand)
        except ValueError as exc:
            error(here, f"'{name}' {exc}")
            continue
        conditions.append(PathCondition(path, op, prepared, operand))
    return conditions
