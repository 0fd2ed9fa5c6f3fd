"""Load YAML config files so every problem can be reported as ``file:line:col: path: message``."""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Union, get_args, get_origin

import pydantic
import yaml
from pydantic import BaseModel

Loc = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_ENV_REF = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$\{")


@dataclass(frozen=True, order=True)
class ConfigError:
    """One problem in a config file, pointing at a 1-based line and column."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}: "
        return where + (f"{self.path}: {self.message}" if self.path else self.message)


class ConfigErrors(Exception):
    """Raised with every error found, sorted by file, then (line, column); and the
    warnings found in the same pass, so that one run shows both."""

    def __init__(self, errors: Iterable[ConfigError], warnings: Iterable[ConfigError] = ()) -> None:
        self.errors: list[ConfigError] = sorted(errors)
        self.warnings: list[ConfigError] = sorted(warnings)
        super().__init__("\n".join(map(str, self.errors)))


def format_loc(loc: Loc) -> str:
    """Render a location: ``("rules", 2, "notify", 0)`` -> ``"rules[2].notify[0]"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class SourceMap:
    """Positions (1-based line, column) of the values and mapping keys of one file."""

    file: str
    values: dict[Loc, tuple[int, int]] = field(default_factory=dict, repr=False)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict, repr=False)

    def mark(self, loc: Loc) -> tuple[int, int]:
        """Position of the value at ``loc``, else of its nearest recorded ancestor, else (1, 1)."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.values:
                return self.values[loc[:end]]
        return (1, 1)

    def key_mark(self, loc: Loc) -> tuple[int, int]:
        """Position where the mapping key ending ``loc`` starts (falls back to :meth:`mark`)."""
        return self.keys.get(loc) or self.mark(loc)

    def error(self, loc: Loc, message: str) -> ConfigError:
        """A :class:`ConfigError` located at the value at ``loc``."""
        return ConfigError(self.file, *self.mark(loc), format_loc(loc), message)

    def alias(self, old: Loc, new: Loc) -> None:
        """Make ``new`` (and everything below it) share the recorded positions of ``old``."""
        for table in (self.values, self.keys):
            for loc, pos in list(table.items()):
                if loc[: len(old)] == old:
                    table[new + loc[len(old) :]] = pos


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


#: Limits of a config file: its size, the values it holds once every alias is expanded
#: (a "billion laughs" file is small and expands to billions), and how deep it nests.
MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_YAML_VALUES = 200_000
MAX_YAML_DEPTH = 64


def _check_bounds(text: str, file: str) -> None:
    """Walk the parser's events (no recursion, nothing built) and refuse a document
    over the limits, at the line where it goes over. Syntax errors are left to the
    parse that follows."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_YAML_BYTES:
        message = f"the file is {size} bytes, over the limit of {MAX_YAML_BYTES}"
        raise ConfigErrors([ConfigError(file, 1, 1, "", message)])
    parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    values = 0
    sizes: dict[str, int] = {}  # anchor -> values under it, itself included
    open_: list[tuple[str | None, int]] = []  # collections being read: anchor, start
    try:
        while parser.check_event():
            event = parser.get_event()
            problem = None
            if isinstance(event, yaml.AliasEvent):
                values += sizes.get(event.anchor, 1)
            elif isinstance(event, yaml.ScalarEvent):
                values += 1
                if event.anchor:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.CollectionStartEvent):
                values += 1
                open_.append((event.anchor, values))
                if len(open_) > MAX_YAML_DEPTH:
                    problem = f"nested more than {MAX_YAML_DEPTH} levels deep"
            elif isinstance(event, yaml.CollectionEndEvent) and open_:
                anchor, start = open_.pop()
                if anchor:
                    sizes[anchor] = values - start + 1
            if values > MAX_YAML_VALUES:
                problem = (
                    f"more than {MAX_YAML_VALUES} values once aliases are expanded (an alias bomb?)"
                )
            if problem:
                raise ConfigErrors([ConfigError(file, *_pos(event.start_mark), "", problem)])
    except yaml.YAMLError:
        return  # the parse reports it, at its position
    finally:
        parser.dispose()


def load_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document with ``yaml.SafeLoader`` semantics, recording positions.

    Every mapping key and value and every sequence item gets an entry in the returned
    :class:`SourceMap`. Raises :class:`ConfigErrors` for syntax errors (at the problem's
    position), for duplicate keys within one mapping, and for a document over the
    limits (``MAX_YAML_BYTES``, ``MAX_YAML_VALUES`` with aliases expanded,
    ``MAX_YAML_DEPTH``).
    """
    _check_bounds(text, file)
    source = SourceMap(file)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)  # libyaml when available
    errors: list[ConfigError] = []
    checked: set[int] = set()

    def walk(node: yaml.Node, loc: Loc, stack: tuple[int, ...]) -> None:
        if id(node) in stack:  # recursive alias
            return
        stack += (id(node),)
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                source.values[(*loc, i)] = _pos(item.start_mark)
                walk(item, (*loc, i), stack)
        elif isinstance(node, yaml.MappingNode):
            first_check = id(node) not in checked
            checked.add(id(node))
            seen: dict[Any, yaml.Node] = {}
            merges = [(k, v) for k, v in node.value if k.tag == _MERGE_TAG]
            for _, merged in merges:  # merged keys first: explicit keys override them
                parts = merged.value if isinstance(merged, yaml.SequenceNode) else [merged]
                for part in reversed(parts):
                    walk(part, loc, stack)
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = loader.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    continue  # construct_document() reports it
                key_loc = (*loc, key)
                if first_check:
                    if key in seen:
                        lines = (seen[key].start_mark.line + 1, key_node.start_mark.line + 1)
                        message = f"duplicate key {key!r} on lines {lines[0]} and {lines[1]}"
                        pos = _pos(key_node.start_mark)
                        errors.append(ConfigError(file, *pos, format_loc(key_loc), message))
                    seen[key] = key_node
                source.keys[key_loc] = _pos(key_node.start_mark)
                source.values[key_loc] = _pos(value_node.start_mark)
                walk(value_node, key_loc, stack)

    try:
        root = loader.get_single_node()
        if root is None:
            return None, source
        walk(root, (), ())
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            message += f" ({exc.context})"
        line, col = _pos(mark) if mark else (1, 1)
        raise ConfigErrors([ConfigError(file, line, col, "", message)]) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        before = text[: exc.position]
        line, col = before.count("\n") + 1, len(before) - before.rfind("\n")
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        message = f"character U+{ord(char):04X} is not allowed in YAML"
        raise ConfigErrors([ConfigError(file, line, col, "", message)]) from None
    finally:
        loader.dispose()
    if errors:
        raise ConfigErrors(errors)
    return data, source


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] (a union with a single non-None member)."""
    while get_origin(tp) in (Annotated, Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if get_origin(tp) is not Annotated and len(members) != 1:
            return tp
        tp = members[0]
    return tp


def _fields(tp: Any) -> dict[Any, Any]:
    """A pydantic model's fields by data key (alias, else name); {} for anything else."""
    tp = _unwrap(tp)
    if get_origin(tp) is None and isinstance(tp, type) and issubclass(tp, BaseModel):
        return {info.alias or name: info for name, info in tp.model_fields.items()}
    return {}


def _allowed_keys(model: type[BaseModel] | None, loc: Loc) -> list[str]:
    """Keys accepted by the model reached from ``model`` along ``loc`` ([] if unresolved)."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        origin, args = get_origin(tp), get_args(tp)
        if origin in (list, set, frozenset, tuple, Sequence) and args and isinstance(part, int):
            tp = args[0]
        elif origin in (dict, Mapping) and len(args) == 2:
            tp = args[1]
        else:
            info = _fields(tp).get(part) or getattr(tp, "model_fields", {}).get(part)
            tp = info.annotation if info else None
    return list(_fields(tp))


def errors_from_validation(
    exc: pydantic.ValidationError,
    source: SourceMap,
    model: type[BaseModel] | None = None,
    prefix: Loc = (),
) -> list[ConfigError]:
    """Map each pydantic error (for data found at ``prefix``) to a located :class:`ConfigError`.

    Parts of pydantic's loc that are not keys recorded in ``source`` (union / validator
    tags) are dropped. Unknown keys point at the key and get a "did you mean" suggestion
    from ``model``'s fields; missing keys point at the parent. Input values are never
    included in the messages.
    """
    errors: list[ConfigError] = []
    for err in exc.errors(include_url=False, include_input=False):
        parent = prefix
        *head, last = err["loc"] or (None,)
        for part in head:
            if (*parent, part) in source.values:
                parent = (*parent, part)
        kind, message = err["type"], err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden" and last is not None:
            loc = (*parent, last)
            message = f"unknown key {last!r}"
            allowed = _allowed_keys(model, parent[len(prefix) :])
            close = difflib.get_close_matches(str(last), allowed, n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
            errors.append(ConfigError(source.file, *source.key_mark(loc), format_loc(loc), message))
        elif kind == "missing" and isinstance(last, str):
            errors.append(source.error(parent, f"missing required key {last!r}"))
        else:
            if last is not None and (*parent, last) in source.values:
                parent = (*parent, last)
            errors.append(source.error(parent, message))
    return list(dict.fromkeys(errors))


def expand_env(
    data: Any, source: SourceMap, environ: Mapping[str, str]
) -> tuple[Any, set[str], list[ConfigError]]:
    """Substitute ``${VAR}`` / ``${VAR:-default}`` in every string value of ``data``.

    ``$$`` is a literal ``$``; the default applies when VAR is unset or empty. A
    ``<name>_file: PATH`` entry becomes ``<name>: <file content minus one trailing
    newline>``. Returns the new data, the set of non-empty values taken from the
    environment or from files (secrets to redact), and the errors found. Error
    messages never contain those values; unreadable paths are shown as written.
    """
    secrets: set[str] = set()
    errors: list[ConfigError] = []

    def substitute(text: str, loc: Loc) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match["name"], match["default"]
            if match[0] == "$$":
                return "$"
            if name is None:
                errors.append(source.error(loc, "malformed ${...} reference"))
                return match[0]
            value = environ.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    errors.append(source.error(loc, f"environment variable {name} is not set"))
                return default or ""
            if value:
                secrets.add(value)
            return value

        return _ENV_REF.sub(replace, text)

    def read_secret(key: str, raw: str, loc: Loc) -> str | None:
        try:
            with open(substitute(raw, loc), encoding="utf-8", newline="") as fh:
                content = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            bad_text = isinstance(exc, UnicodeDecodeError)
            reason = "not valid UTF-8" if bad_text else exc.strerror or type(exc).__name__
            errors.append(source.error(loc, f"cannot read {key} {raw!r}: {reason}"))
            return None
        content = content[:-2] if content.endswith("\r\n") else content.removesuffix("\n")
        if content:
            secrets.add(content)
        return content

    def walk(value: Any, loc: Loc) -> Any:
        if isinstance(value, str):
            return substitute(value, loc)
        if isinstance(value, list):
            return [walk(item, (*loc, i)) for i, item in enumerate(value)]
        if not isinstance(value, dict):
            return value
        out: dict[Any, Any] = {}
        for key, item in value.items():
            target = key[: -len("_file")] if isinstance(key, str) else ""
            if not (target and key.endswith("_file") and isinstance(item, str)):
                out[key] = walk(item, (*loc, key))
            elif target in value:
                message = f"both {target!r} and {key!r} are set"
                errors.append(source.error((*loc, key), message))
            elif (content := read_secret(key, item, (*loc, key))) is not None:
                source.alias((*loc, key), (*loc, target))
                out[target] = content
        return out

    return walk(data, ()), secrets, errors
