"""Message templates: a sandboxed Jinja2 environment, template lookup, and rendering
into the blocks a channel picks from (``title``, ``text``, ``html``, ``json``, ...)."""

import traceback
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from router.filters import builtin_filters
from router.sandbox import DEFAULT_LIMITS, BoundedSandbox, RenderLimits, bounded, static_problems

__all__ = ["RenderError", "Rendered", "Templates", "builtin_templates", "template_context"]

SUFFIX = ".j2"
#: Template lookups remembered: event names are chosen by clients, so the cache is bounded.
RESOLVED_CACHE = 4096


def _is_file(path: Path) -> bool:
    """Whether a template file exists; a name the file system refuses (too long, a NUL)
    is a template that does not exist, so the defaults apply."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def builtin_templates() -> Path:
    """The templates shipped with the router: inside the package when it was installed
    from a wheel (``router/builtin_templates``), the checkout's ``templates/`` in a
    source checkout or an editable install."""
    packaged = Path(__file__).resolve().parent / "builtin_templates"
    return packaged if packaged.is_dir() else packaged.parent.parent / "templates"


class RenderError(Exception):
    """A template is missing or failed; the message names the template and line."""


@dataclass(frozen=True)
class Rendered:
    """A rendered message: its title, text and every block by name."""

    template: str
    title: str
    text: str
    blocks: dict[str, str] = field(default_factory=dict)


def _template_line(exc: BaseException, name: str) -> int | None:
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename and frame.filename.endswith(name):
            line = frame.lineno
    return line


# Reading a dict is what templates do most; these methods cannot change or escape it.
_DICT_READERS = frozenset({"get", "items", "keys", "values"})

# The blocks rendered so far for one message, by the context Templates.render made for it.
_RENDERED_BLOCKS: "weakref.WeakKeyDictionary[jinja2.runtime.Context, dict[str, str]]" = (
    weakref.WeakKeyDictionary()
)


class EventSandbox(BoundedSandbox):
    """The bounded, immutable sandbox (templates cannot change the event other templates
    see, nor run or grow without limit: ``router.sandbox``), with fast paths for reading
    event data, which is plain dicts:

    - ``body.user`` looks up the key first, so a field named like a dict method
      (``items``) means the field, and a dotted name costs no AttributeError;
    - ``body.get("user")`` and the other read-only dict methods skip the generic
      safety checks, which cost more than the lookup itself.

    - ``self.title()`` inside another block returns the title already rendered for
      this message instead of rendering it again (Slack templates build their Block
      Kit JSON from the title and the text).

    Everything else goes through the sandbox's own checks.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            if attribute in obj:
                return obj[attribute]
            if attribute in _DICT_READERS:
                return getattr(obj, attribute)
        return super().getattr(obj, attribute)

    def call(
        __self,
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if type(getattr(__obj, "__self__", None)) is dict and __obj.__name__ in _DICT_READERS:
            # Jinja adds its own bookkeeping keywords; Context.call would strip them.
            kwargs.pop("_loop_vars", None)
            kwargs.pop("_block_vars", None)
            return __obj(*args, **kwargs)
        if type(__obj) is jinja2.runtime.BlockReference and not args:
            done = _RENDERED_BLOCKS.get(__obj._context)
            if done is not None and __obj.name in done and __obj._depth == 0:
                rendered = done[__obj.name]  # as BlockReference.__call__ returns it:
                return Markup(rendered) if __obj._context.eval_ctx.autoescape else rendered
        return super().call(__context, __obj, *args, **kwargs)


class _CompiledCache(jinja2.BytecodeCache):
    """Compiled templates kept in memory across reloads (and the many apps a test
    suite builds). Jinja checks each entry against the source's checksum, so an
    edited template is compiled again."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def get_cache_key(self, name: str, filename: str | None = None) -> str:
        # By name alone: the checksum check makes a stale entry harmless.
        return name

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


# One cache per kind of environment: the same file compiles differently with autoescape.
_COMPILED = {False: _CompiledCache(), True: _CompiledCache()}


class Templates:
    """The templates directory, loaded into a sandboxed environment with strict undefineds."""

    def __init__(self, directory: Path, filters: Mapping[str, Callable[..., Any]] = {}) -> None:
        self.directory = Path(directory)
        # Two compilations of the same files: the ``html`` block is always rendered
        # with autoescaping, every other block (plain text, JSON) without.
        self.env, self.html_env = (
            EventSandbox(
                loader=jinja2.FileSystemLoader(self.directory),
                undefined=jinja2.StrictUndefined,
                autoescape=autoescape,
                trim_blocks=True,
                lstrip_blocks=True,
                auto_reload=False,  # a reload builds a new Templates; no stat() per render
                bytecode_cache=_COMPILED[autoescape],
            )
            for autoescape in (False, True)
        )
        # Keyed by event name, which any client chooses: bounded (see _first).
        self._resolved: dict[tuple[str | None, str, str], str] = {}
        self._globals = dict(self.env.globals)
        all_filters = builtin_filters()
        for name, function in filters.items():
            if name in all_filters:
                raise ValueError(f"template filter {name!r} already exists")
            all_filters[name] = function
        self.env.filters.update(all_filters)
        self.html_env.filters.update(all_filters)

    def candidates(self, template: str | None, event_name: str, channel_type: str) -> list[str]:
        """Names tried in order: ``<t>.<type>.j2``, ``<t>.j2``, then ``default.<type>.j2``,
        ``default.j2``, where ``<t>`` is the rule's template or else the event name."""
        base = template or event_name
        names = [f"{base}.{channel_type}{SUFFIX}", f"{base}{SUFFIX}"]
        if template is None:
            names += [f"default.{channel_type}{SUFFIX}", f"default{SUFFIX}"]
        return names

    def resolve(self, template: str | None, event_name: str, channel_type: str) -> str:
        """The first existing template for this rule, event and channel type."""
        return self._first((template, event_name, channel_type), self.candidates)

    def resolve_digest(self, template: str | None, channel_type: str) -> str:
        """The template of a digest: ``<t>.digest.<type>.j2``, ``<t>.digest.j2`` for a
        rule's template ``<t>``, then ``digest.<type>.j2``, ``digest.j2``."""

        def names(template: str | None, _: str, channel_type: str) -> list[str]:
            bases = [f"{template}.digest", "digest"] if template else ["digest"]
            return [f"{b}{s}{SUFFIX}" for b in bases for s in (f".{channel_type}", "")]

        return self._first((template, "(digest)", channel_type), names)

    def _first(
        self,
        key: tuple[str | None, str, str],
        candidates: Callable[[str | None, str, str], list[str]],
    ) -> str:
        if key in self._resolved:
            return self._resolved[key]
        names = candidates(*key)
        for name in names:
            if _is_file(self.directory / name):
                if len(self._resolved) < RESOLVED_CACHE:
                    self._resolved[key] = name
                return name
        raise RenderError(f"no template found in {self.directory} (tried {', '.join(names)})")

    def check(self, name: str, limits: RenderLimits = DEFAULT_LIMITS) -> str | None:
        """Compile a template; return an error naming file and line, or None."""
        problem = self.problem(name, limits)
        return None if problem is None else f"template {name} line {problem[0]}: {problem[1]}"

    def problem(self, name: str, limits: RenderLimits = DEFAULT_LIMITS) -> tuple[int, str] | None:
        """Compile a template (unknown filters fail here too) and look for operations
        already over ``limits`` (``'x' * 10**9``): (line, message) or None."""
        try:
            self.env.get_template(name)
            source = self.env.loader.get_source(self.env, name)[0]  # type: ignore[union-attr]
            bombs = static_problems(self.env.parse(source, name), limits)
        except jinja2.TemplateSyntaxError as exc:
            return exc.lineno, exc.message or "syntax error"
        except jinja2.TemplateError as exc:
            return 1, str(exc)
        return bombs[0] if bombs else None

    def names(self) -> list[str]:
        """Every template file in the directory."""
        if not self.directory.is_dir():
            return []
        return sorted(
            str(path.relative_to(self.directory)) for path in self.directory.rglob(f"*{SUFFIX}")
        )

    def render(
        self, name: str, context: dict[str, Any], limits: RenderLimits = DEFAULT_LIMITS
    ) -> Rendered:
        """Render template ``name`` and each of its blocks within ``limits``.
        Raises ``RenderError`` (naming the limit when one was passed)."""
        with bounded(limits):
            return self._render(name, context)

    def _render(self, name: str, context: dict[str, Any]) -> Rendered:
        try:
            template = self.env.get_template(name)
            whole = "" if "text" in template.blocks else template.render(context).strip()
            # shared=True skips merging the globals ChainMap on every render.
            ctx = template.new_context({**self._globals, **context}, shared=True)
            blocks = {}
            done = _RENDERED_BLOCKS[ctx] = {}
            for block, render in template.blocks.items():
                if block == "html":
                    continue  # below, with autoescaping
                try:
                    done[block] = "".join(render(ctx))
                except Exception:
                    self.env.handle_exception()  # re-raises with template line numbers
                blocks[block] = done[block].strip()
            if "html" in template.blocks:
                html = self.html_env.get_template(name)
                html_ctx = html.new_context({**self._globals, **context}, shared=True)
                try:
                    blocks["html"] = "".join(html.blocks["html"](html_ctx)).strip()
                except Exception:
                    self.html_env.handle_exception()
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(f"template {name} line {exc.lineno}: {exc.message}") from None
        except Exception as exc:
            line = _template_line(exc, name)
            where = f"template {name} line {line}" if line else f"template {name}"
            raise RenderError(f"{where}: {type(exc).__name__}: {exc}") from None
        return Rendered(
            template=name,
            title=blocks.get("title", ""),
            text=blocks.get("text", whole),
            blocks=blocks,
        )


def template_context(
    event: dict[str, Any],
    *,
    event_id: str,
    rule: str,
    channel: str,
    previous: dict[str, Any] | None = None,
    default_time_zone: str | None = None,
) -> dict[str, Any]:
    """The variables a template sees. ``previous`` is the entity's body as the router
    last knew it (None when unknown); digests add ``events``, ``count`` and ``group``."""
    metadata = event.get("metadata") or {}
    return {
        "event": event,
        "metadata": metadata,
        "body": event.get("body") or {},
        "previous": previous,
        "event_id": event_id,
        "event_name": metadata.get("event_name", ""),
        "rule": rule,
        "channel": channel,
        "now": datetime.now().astimezone(),
        "time_zone": metadata.get("time_zone") or default_time_zone or "UTC",
    }
