"""Message templates: a sandboxed Jinja2 environment, template lookup, and rendering
into the blocks a channel picks from (``title``, ``text``, ``html``, ``json``, ...)."""

import traceback
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
from jinja2 import nodes
from markupsafe import Markup

from router.caliper import caliper_name, is_caliper_event
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


def _template_where(exc: BaseException, name: str, directory: Path) -> tuple[str, int | None]:
    """The template file and line where rendering ``name`` failed: the innermost frame
    in a template of ``directory`` (a layout, or the event template a layout extends),
    else ``name`` itself."""
    where: tuple[str, int | None] = (name, None)
    root = directory.resolve()
    for frame in traceback.extract_tb(exc.__traceback__):
        filename = frame.filename or ""
        path = Path(filename).resolve() if filename.endswith(SUFFIX) else None
        if path is not None and path.is_relative_to(root):
            where = (str(path.relative_to(root)), frame.lineno)
        elif filename.endswith(name):
            where = (name, frame.lineno)
    return where


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
        self._extends: dict[str, bool] = {}
        self._existing: dict[str, bool] = {}
        for env in (self.env, self.html_env):
            env.globals["first_template"] = self.first_template
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
            if self.is_template(name):
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

    def is_template(self, name: str) -> bool:
        """Whether ``name`` is a template file inside the directory (never a path that
        leaves it: an event name is untrusted and becomes part of template names)."""
        parts = PurePosixPath(name).parts
        return (
            bool(parts)
            and ".." not in parts
            and not name.startswith("/")
            and "\\" not in name
            and _is_file(self.directory / name)
        )

    def first_template(self, *names: Any) -> str:
        """The first of ``names`` that is a template file in the directory, else the
        last one; for layouts that pick an event's own template, falling back to a
        generic one: ``{% extends first_template("events/" ~ event_name ~ ".j2",
        "events/other.j2") %}``. A name leaving the directory (``..``) never matches."""
        for name in names:
            name = str(name)
            if name not in self._existing:
                found = self.is_template(name)
                if len(self._existing) >= 1024:  # event names are untrusted: stay bounded
                    self._existing.clear()
                self._existing[name] = found
            if self._existing[name]:
                return name
        return str(names[-1]) if names else ""

    def extends(self, name: str) -> bool:
        """Whether template ``name`` extends a layout (``{% extends ... %}``): then its
        blocks include those it inherits, which are known only once its top level ran."""
        if name not in self._extends:
            source, _, _ = self.env.loader.get_source(self.env, name)  # type: ignore[union-attr]
            self._extends[name] = self.env.parse(source).find(nodes.Extends) is not None
        return self._extends[name]

    def _block_context(
        self, template: jinja2.Template, name: str, context: dict[str, Any]
    ) -> jinja2.runtime.Context:
        """A render context whose ``blocks`` hold every block of the template, inherited
        ones too. For a template that extends a layout, its top level runs once: that
        registers the layouts' blocks (the layouts in ``templates/layouts/`` place none
        at their top level, so nothing is rendered twice)."""
        # shared=True skips merging the globals ChainMap on every render.
        ctx = template.new_context({**self._globals, **context}, shared=True)
        if self.extends(name):
            for _ in template.root_render_func(ctx):
                pass
        return ctx

    def render(
        self, name: str, context: dict[str, Any], limits: RenderLimits = DEFAULT_LIMITS
    ) -> Rendered:
        """Render template ``name`` and each of its blocks, inherited ones included,
        within ``limits``. Raises ``RenderError`` (naming the limit when one was passed)."""
        with bounded(limits):
            return self._render(name, context)

    def _render(self, name: str, context: dict[str, Any]) -> Rendered:
        try:
            template = self.env.get_template(name)
            ctx = self._block_context(template, name, context)
            names = list(ctx.blocks) if self.extends(name) else list(template.blocks)
            whole = "" if "text" in names else template.render(context).strip()
            blocks = {}
            done = _RENDERED_BLOCKS[ctx] = {}
            for block in names:
                if block == "html":
                    continue  # below, with autoescaping
                try:
                    done[block] = "".join(ctx.blocks[block][0](ctx))
                except Exception:
                    self.env.handle_exception()  # re-raises with template line numbers
                blocks[block] = done[block].strip()
            if "html" in names:
                html = self.html_env.get_template(name)
                html_ctx = self._block_context(html, name, context)
                try:
                    blocks["html"] = "".join(html_ctx.blocks["html"][0](html_ctx)).strip()
                except Exception:
                    self.html_env.handle_exception()
        except jinja2.TemplateSyntaxError as exc:
            where = exc.name or name
            raise RenderError(f"template {where} line {exc.lineno}: {exc.message}") from None
        except Exception as exc:
            failed, line = _template_where(exc, name, self.directory)
            where = f"template {failed} line {line}" if line else f"template {failed}"
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
    display_time_zone: str | None = None,
) -> dict[str, Any]:
    """The variables a template sees. ``previous`` is the entity's body as the router
    last knew it (None when unknown); digests add ``events``, ``count`` and ``group``.
    ``time_zone`` (where ``localtime`` shows times) is ``display_time_zone`` when the
    rules set one, else the event's ``metadata.time_zone``, else ``default_time_zone``."""
    metadata = event.get("metadata") or {}
    name = metadata.get("event_name", "")
    if not name and is_caliper_event(event):
        name = caliper_name(event)
    return {
        "event": event,
        "metadata": metadata,
        "body": event.get("body") or {},
        "previous": previous,
        "event_id": event_id,
        "event_name": name,
        "rule": rule,
        "channel": channel,
        "now": datetime.now().astimezone(),
        "time_zone": display_time_zone or metadata.get("time_zone") or default_time_zone or "UTC",
    }
