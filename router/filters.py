"""Jinja2 filters for Canvas data, available in every template.

Each filter is a plain function; ``builtin_filters`` names them. Plugins add their own
through the ``register_template_filters`` hook.

Every filter takes whatever an event holds (``None``, numbers, truncated HTML, ...) and
never raises: odd input comes back as ``""`` or as text, so a strange event still
renders a message.
"""

import difflib
import functools
import html
import re
import textwrap
from collections.abc import Callable, Mapping
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import markupsafe

from router.events import parse_timestamp

__all__ = [
    "builtin_filters",
    "canvas_url",
    "changes",
    "display",
    "html_to_text",
    "local_id",
    "localtime",
    "oneline",
    "slack_escape",
    "slack_link",
    "textdiff",
    "truncate_text",
]


def local_id(value: Any) -> str:
    """Canvas global id to local id: ``21070000000000565`` -> ``565`` (shard * 10^13 + id)."""
    text = str(value)
    if text.isdigit() and len(text) > 13:
        return str(int(text) % 10**13)
    return text


@jinja2.pass_context
def localtime(
    context: jinja2.runtime.Context,
    value: Any,
    zone: str | None = None,
    fmt: str = "%Y-%m-%d %H:%M %Z",
) -> str:
    """Format a Canvas timestamp in ``zone`` (an IANA name), by default the event's
    ``metadata.time_zone``; unparsable input is shown as it is."""
    zone = zone or context.get("time_zone")
    moment = parse_timestamp(value)
    if moment is None:
        return "" if value is None else str(value)
    tz = _zone(zone) if zone else None
    return (moment.astimezone(tz) if tz else moment).strftime(fmt)


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


# --- links back to Canvas ------------------------------------------------------------

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?(?::\d{1,5})?")

# kind -> (path inside a course, path inside a group, path on its own); None where
# Canvas has no such page. {id} is the object's (local) id, {course} the course's,
# {group} the group's, {assignment} the assignment's. Shapes from canvas-lms
# config/routes.rb; a wiki page is addressed by id as "page_id:<id>" (Wiki#find_page).
_CANVAS_PATHS: dict[str, tuple[str | None, str | None, str | None]] = {
    "course": (None, None, "/courses/{id}"),
    "syllabus": (None, None, "/courses/{id}/assignments/syllabus"),
    "modules": (None, None, "/courses/{id}/modules"),
    "grades": (None, None, "/courses/{id}/grades"),
    "section": ("/courses/{course}/sections/{id}", None, "/sections/{id}"),
    "user": ("/courses/{course}/users/{id}", "/groups/{group}/users/{id}", "/users/{id}"),
    "account": (None, None, "/accounts/{id}"),
    "group": (None, None, "/groups/{id}"),
    "assignment": ("/courses/{course}/assignments/{id}", None, None),
    "submission": ("/courses/{course}/assignments/{assignment}/submissions/{id}", None, None),
    "discussion_topic": (
        "/courses/{course}/discussion_topics/{id}",
        "/groups/{group}/discussion_topics/{id}",
        None,
    ),
    "quiz": ("/courses/{course}/quizzes/{id}", None, None),
    "page": ("/courses/{course}/pages/page_id:{id}", "/groups/{group}/pages/page_id:{id}", None),
    "file": ("/courses/{course}/files/{id}", "/groups/{group}/files/{id}", "/files/{id}"),
    "module": ("/courses/{course}/modules#module_{id}", None, None),
    "module_item": ("/courses/{course}/modules/items/{id}", None, None),
    "outcome": ("/courses/{course}/outcomes/{id}", None, None),
    "conversation": (None, None, "/conversations/{id}"),
}
_ALIASES = {
    "courses": "course",
    "sections": "section",
    "course_section": "section",
    "users": "user",
    "course_user": "user",
    "accounts": "account",
    "groups": "group",
    "assignments": "assignment",
    "submissions": "submission",
    "discussion": "discussion_topic",
    "discussion_topics": "discussion_topic",
    "announcement": "discussion_topic",
    "quizzes": "quiz",
    "pages": "page",
    "wiki_page": "page",
    "files": "file",
    "attachment": "file",
    "module_items": "module_item",
    "conversations": "conversation",
}


def _canvas_host(context: Mapping[str, Any], hostname: Any) -> str:
    """``hostname``, else ``metadata.hostname``, else the host of ``metadata.url``;
    "" when none is a plausible host name (never a value that could escape the URL)."""
    metadata = context.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    candidates = [hostname, metadata.get("hostname")]
    url = metadata.get("url")
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        try:
            candidates.append(urlsplit(url).netloc)
        except ValueError:
            pass
    for candidate in candidates:
        if isinstance(candidate, str) and _HOSTNAME.fullmatch(candidate.strip()):
            return candidate.strip().lower()
    return ""


def _id_part(value: Any) -> str:
    if value is None or isinstance(value, bool | dict | list | tuple | set):
        return ""
    return quote(local_id(value).strip(), safe="")


@jinja2.pass_context
def canvas_url(
    context: jinja2.runtime.Context,
    value: Any,
    kind: str = "course",
    course: Any = None,
    hostname: str | None = None,
    group: Any = None,
    assignment: Any = None,
) -> str:
    """A link back to Canvas on the event's host (``metadata.hostname``, else the host of
    ``metadata.url``, or the ``hostname`` you pass); "" without a host, an id, or the
    course (or group) the object lives in.

    ``value`` is an id (global ids become local) and ``kind`` says what it is:

    - on its own: ``course``, ``syllabus``, ``modules``, ``grades`` (of a course),
      ``section``, ``user``, ``account``, ``group``, ``file``, ``conversation``;
    - inside a course (``course=``): ``assignment``, ``quiz``, ``discussion_topic``,
      ``page`` (a wiki page, by id), ``file``, ``module``, ``module_item``,
      ``outcome``, ``section``, ``user``; and ``submission``, whose ``value`` is the
      student's user id, with ``assignment=`` too (Canvas shows a submission per
      assignment and student);
    - inside a group (``group=``): ``discussion_topic``, ``page``, ``file``, ``user``;
    - ``path``: ``value`` is a path such as ``/courses/565/files``.

    Plurals work too (``users``), except ``modules``, which is a course's modules page::

        {{ body.course.id | canvas_url }}              -> https://oxana.instructure.com/courses/565
        {{ body.course_id | canvas_url("syllabus") }}  -> .../courses/565/assignments/syllabus
        {{ body.course_section_id | canvas_url("section", course=body.course_id) }}
                                                       -> .../courses/565/sections/1234567
        {{ body.assignment_id | canvas_url("assignment", course=565) }}
                                                       -> .../courses/565/assignments/355
        {{ body.user_id | canvas_url("submission", course=565, assignment=355) }}
                                           -> .../courses/565/assignments/355/submissions/48
        {{ body.wiki_page_id | canvas_url("page", course=565) }}
                                                       -> .../courses/565/pages/page_id:9
        {{ body.user.id | canvas_url("user") }}        -> .../users/123
        {{ "/courses/565/modules" | canvas_url("path") }}
    """
    try:
        host = _canvas_host(context, hostname)
        if not host:
            return ""
        kind = _ALIASES.get(str(kind), str(kind))
        if kind == "path":
            path = "" if value is None else str(value).strip()
            if not path or path.startswith("//") or not path.startswith("/"):
                return ""
            return f"https://{host}{quote(path, safe='/?&=%:@+,;~!$*()#')}"
        ident = _id_part(value)
        if not ident or kind not in _CANVAS_PATHS:
            return ""
        in_course, in_group, alone = _CANVAS_PATHS[kind]
        parts = {
            "id": ident,
            "course": _id_part(course),
            "group": _id_part(group),
            "assignment": _id_part(assignment),
        }
        for pattern in (
            in_course if parts["course"] else None,
            in_group if parts["group"] else None,
            alone,
        ):
            if pattern is not None and all(
                parts[name]
                for name in ("course", "group", "assignment")
                if f"{{{name}}}" in pattern
            ):
                return f"https://{host}{pattern.format(**parts)}"
        return ""
    except Exception:
        return ""


# --- HTML to text ----------------------------------------------------------------------

_SKIP = {"script", "style", "head", "title", "noscript", "template", "svg", "math", "select"}
_EMBED = {"iframe", "object", "video", "audio", "embed"}
_PARAGRAPH = {
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "hr", "section",
    "article", "header", "footer", "nav", "aside", "figure", "address", "dl", "form",
    "fieldset", "details", "main",
}  # fmt: skip
_LINE = {"div", "tr", "dt", "dd", "figcaption", "summary", "caption", "center"}
_WHITESPACE = re.compile(r"[ \t\n\r\f\v\u00a0\u200b]+")
_CUT_TAG = re.compile(r"<([A-Za-z][A-Za-z0-9]*)")
_BULLET_LINE = re.compile(r"^(\s*(?:[•\-*]|\d+\.)\s+)")


class _TextExtractor(HTMLParser):
    """Collects readable text: paragraphs as blank lines, list items as bullets."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.breaks = 0  # newlines owed before the next text (1 or 2)
        self.prefix = ""  # a bullet owed before the next text
        self.skip = 0
        self.pre = 0
        self.lists: list[list[Any]] = []  # [tag, next number]
        self.cells = 0
        self.links: list[tuple[int, str]] = []

    # writing
    def _at_line_start(self) -> bool:
        return not self.out or self.out[-1].endswith("\n")

    def _break(self, count: int) -> None:
        self.breaks = max(self.breaks, count)

    def _write(self, text: str, raw: bool = False) -> None:
        if not raw:
            text = _WHITESPACE.sub(" ", text)
            if self.breaks or self.prefix or self._at_line_start() or self.out[-1].endswith(" "):
                text = text.lstrip(" ")
        if not text:
            return
        if self.out and self.breaks:
            tail = len(self.out[-1]) - len(self.out[-1].rstrip("\n"))
            self.out.append("\n" * max(0, self.breaks - tail))
        self.breaks = 0
        if self.prefix:
            self.out.append(self.prefix)
            self.prefix = ""
        self.out.append(text)

    # parser callbacks
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _EMBED:
            if not self.skip:
                self._write("[embedded content]")
            if tag != "embed":
                self.skip += 1
            return
        if tag in _SKIP:
            self.skip += 1
            return
        if self.skip:
            return
        if tag == "br":
            if self.out:
                self._write("\n", raw=True)
        elif tag in ("ul", "ol"):
            self._break(1 if self.lists else 2)
            self.lists.append([tag, 1])
        elif tag == "li":
            self._break(1)
            indent = "  " * max(0, len(self.lists) - 1)
            if self.lists and self.lists[-1][0] == "ol":
                self.prefix = f"{indent}{self.lists[-1][1]}. "
                self.lists[-1][1] += 1
            else:
                self.prefix = f"{indent}• "
        elif tag == "hr":
            self._break(2)
            self._write("----")
            self._break(2)
        elif tag in _PARAGRAPH:
            self._break(2)
            if tag == "pre":
                self.pre += 1
            if tag == "table":
                self.cells = 0
        elif tag in _LINE:
            self._break(1)
            if tag == "tr":
                self.cells = 0
        elif tag in ("td", "th"):
            if self.cells:
                self._write(" | ", raw=True)
            self.cells += 1
        elif tag == "img":
            alt = (dict(attrs).get("alt") or "").strip()
            self._write(f"[image: {alt}]" if alt else "[image]")
        elif tag == "a":
            href = (dict(attrs).get("href") or "").strip()
            self.links.append((len(self.out), href))

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP or (tag in _EMBED and tag != "embed"):
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            self._break(1 if self.lists else 2)
        elif tag == "li":
            self._break(1)
        elif tag in _PARAGRAPH:
            self._break(2)
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
        elif tag in _LINE:
            self._break(1)
        elif tag == "a" and self.links:
            start, href = self.links.pop()
            label = "".join(self.out[start:]).strip()
            if href.startswith(("http://", "https://")) and label and href not in label:
                self._write(f" ({href})", raw=True)

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self._write(data, raw=bool(self.pre))

    def text(self) -> str:
        lines = [line.rstrip() for line in "".join(self.out).split("\n")]
        text = "\n".join(lines).strip("\n")
        return re.sub(r"\n{3,}", "\n\n", text)


def _strip_tags(value: str) -> str:
    """Last resort when the parser fails: drop anything tag-like, unescape, tidy."""
    text = re.sub(r"<[^>]*(>|$)", " ", value)
    return _WHITESPACE.sub(" ", html.unescape(text)).strip()


def _wrap(text: str, width: int) -> str:
    wrapped = []
    for line in text.split("\n"):
        bullet = _BULLET_LINE.match(line)
        indent = " " * len(bullet.group(1)) if bullet else ""
        wrapped.append(
            textwrap.fill(
                line,
                width=width,
                subsequent_indent=indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
            if line.strip()
            else ""
        )
    return "\n".join(wrapped)


def html_to_text(value: Any, width: int | None = None) -> str:
    """Readable plain text from Canvas HTML (a syllabus body, a description).

    Tags, scripts and styles go; paragraphs become blank lines, ``<br>`` a line break,
    list items bullets (``•``, or ``1.`` in ``<ol>``); entities are unescaped and
    whitespace collapsed; iframes, video and audio become ``[embedded content]``, images
    ``[image: alt]``; a link to an absolute URL keeps it in parentheses. HTML cut off
    mid-tag (Canvas truncates bodies at 8192 characters) loses only the cut tag. With
    ``width`` lines are wrapped (bullets keep their hanging indent)::

        {{ "<p>Week&nbsp;1</p><ul><li>Read</li><li>Write</li></ul>" | html_to_text }}
        -> "Week 1\\n\\n• Read\\n• Write"
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    try:
        parser = _TextExtractor()
        parser.feed(text)
        if parser.rawdata.startswith("<"):  # a tag, comment or CDATA cut off at the end
            cut = _CUT_TAG.match(parser.rawdata)
            parser.rawdata = ""
            if cut and cut.group(1).lower() in (*_EMBED, "img"):
                parser.handle_starttag(cut.group(1).lower(), [])  # still say what was there
        parser.close()
        result = parser.text()
    except Exception:
        result = _strip_tags(text)
    try:
        if width and int(width) > 0:
            result = _wrap(result, int(width))
    except (TypeError, ValueError):
        pass
    return result


# --- diffs and changes -------------------------------------------------------------------


def _lines(value: Any) -> list[str]:
    if value is None:
        return []
    text = value if isinstance(value, str) else str(value)
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def textdiff(old: Any, new: Any, context: int = 1, limit: int = 40) -> str:
    """A readable line diff of two texts: removed lines start ``- ``, added ``+ ``, up to
    ``context`` unchanged lines around them start with two spaces, ``…`` separates
    distant changes; ``(no changes)`` when the texts are equal. At most ``limit`` lines,
    then ``… N more lines``. Typically::

        {{ body.old_syllabus_body | html_to_text | textdiff(body.syllabus_body | html_to_text) }}

    ``textdiff("a\\nb", "a\\nc")`` -> ``"  a\\n- b\\n+ c"``.
    """
    try:
        before, after = _lines(old), _lines(new)
        if before == after:
            return "(no changes)"
        try:
            context = max(0, int(context))
        except (TypeError, ValueError):
            context = 1
        try:
            limit = max(1, int(limit))
        except (TypeError, ValueError):
            limit = 40
        hunks: list[list[str]] = []
        diff = difflib.unified_diff(before, after, n=context, lineterm="")
        for index, line in enumerate(diff):
            if index < 2:  # the "--- " / "+++ " file headers
                continue
            if line.startswith("@@"):
                hunks.append([])
                continue
            sign, text = line[:1], line[1:]
            hunks[-1].append(f"{sign} {text}".rstrip() if sign in "+-" else f"  {text}".rstrip())
        out: list[str] = []
        for hunk in hunks:
            while hunk and not hunk[0]:  # blank context lines at a hunk's edges say nothing
                hunk.pop(0)
            while hunk and not hunk[-1]:
                hunk.pop()
            if hunk:
                out.extend(["…", *hunk] if out else hunk)
        if len(out) > limit:
            rest = len(out) - limit
            out = [*out[:limit], f"… {rest} more line{'s' if rest != 1 else ''}"]
        return "\n".join(out)
    except Exception:
        return ""


# Fields that change on every save and say nothing about what changed.
IGNORED_FIELDS = frozenset({"updated_at", "created_at", "event_time", "last_activity_at"})


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            flat.update(_flatten(item, f"{name}."))
        else:
            flat[name] = item
    return flat


def _same(field: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    leaf = field.rsplit(".", 1)[-1]
    if (leaf == "id" or leaf.endswith("_id")) and old is not None and new is not None:
        return local_id(old) == local_id(new)  # global and local forms of one id
    return False


def changes(previous: Any, current: Any, ignore: Any = ()) -> list[dict[str, Any]]:
    """What differs between the previous snapshot of an entity and the current one: a list
    of ``{"field", "old", "new"}``, in the current body's order, nested fields as dotted
    names (``course.name``). Only fields present in both count (a field an event leaves
    out is unknown, not removed); timestamps that change on every save (``updated_at``,
    ...) and the fields in ``ignore`` are skipped; an id in global and local form is the
    same. ``previous`` None (nothing seen yet) -> ``[]``::

        {% for c in previous | changes(body) %}{{ c.field }}: {{ c.old }} → {{ c.new }}
        {% endfor %}
    """
    if not isinstance(previous, Mapping) or not isinstance(current, Mapping):
        return []
    try:
        skip = {ignore} if isinstance(ignore, str) else set(ignore or ())
        before, after = _flatten(previous), _flatten(current)
        found = []
        for field, new in after.items():
            leaf = field.rsplit(".", 1)[-1]
            if field in skip or leaf in IGNORED_FIELDS or field not in before:
                continue
            if not _same(field, before[field], new):
                found.append({"field": field, "old": before[field], "new": new})
        return found
    except Exception:
        return []


# --- text helpers ----------------------------------------------------------------------


def truncate_text(value: Any, length: int = 200, end: str = "…") -> str:
    """At most ``length`` characters, cut at a word boundary when one is near, ending
    in ``end``: ``"Introduction to Linear Algebra" | truncate_text(20)`` ->
    ``"Introduction to…"``. Handy for Slack's limits (a header holds 150 characters).
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    try:
        length = int(length)
    except (TypeError, ValueError):
        return text
    end = "" if end is None else str(end)
    if length <= 0 or len(text) <= length:
        return text if length > 0 else ""
    room = max(0, length - len(end))
    cut = text[:room]
    if room < len(text) and not text[room].isspace():
        space = max(cut.rfind(" "), cut.rfind("\n"))
        if space >= room // 2:
            cut = cut[:space]
    return (cut.rstrip(" \n\t,;:.-") + end)[:length] if room else end[:length]


@jinja2.pass_context
def display(context: jinja2.runtime.Context, value: Any, field: str | None = None) -> str:
    """A field's value for people: ``None`` or empty -> ``(none)``, booleans ``yes`` or
    ``no``, lists comma-separated, and when ``field`` ends in ``_at`` (``start_at``) a
    timestamp in the event's time zone. Made for ``changes``::

        {% for c in previous | changes(body) %}
        {{ c.field }}: {{ c.old | display(c.field) }} → {{ c.new | display(c.field) }}
        {% endfor %}
    """
    try:
        if value is None or (isinstance(value, str | list | tuple | dict) and not value):
            return "(none)"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, list | tuple):
            return ", ".join("(none)" if item is None else str(item) for item in value)
        if isinstance(field, str) and field.endswith("_at") and parse_timestamp(value):
            return localtime(context, value)
        return str(value)
    except Exception:
        return ""


def oneline(value: Any) -> str:
    """All whitespace, newlines included, collapsed to single spaces, for titles and email
    subjects (which must be one line)::

        {{ "Linear\n  Algebra" | oneline }}                   -> "Linear Algebra"
        {% block title %}{% filter oneline %}...{% endfilter %}{% endblock %}
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    single = _WHITESPACE.sub(" ", text).strip()
    return markupsafe.Markup(single) if isinstance(value, markupsafe.Markup) else single


def slack_escape(value: Any) -> str:
    """Escape ``&``, ``<`` and ``>`` for Slack mrkdwn, so event data cannot make links or
    mentions: ``"A <b> & C" | slack_escape`` -> ``"A &lt;b&gt; &amp; C"``."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_link(url: Any, label: Any = None) -> str:
    """A Slack mrkdwn link ``<url|label>`` with the label escaped and on one line; just the
    (escaped) label when there is no URL (say the event had no hostname)::

        {{ body.course.id | canvas_url | slack_link(body.course.name) }}
        -> "<https://oxana.instructure.com/courses/565|Computer Science I>"
    """
    text = slack_escape(oneline(label))
    link = "" if url is None else str(url).strip()
    if not link.startswith(("https://", "http://", "mailto:")):
        return text
    link = link.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E").replace(" ", "%20")
    return f"<{link}|{text}>" if text else f"<{link}>"


def builtin_filters() -> dict[str, Callable[..., Any]]:
    """The filters every template gets before plugins add theirs."""
    return {
        "canvas_url": canvas_url,
        "changes": changes,
        "display": display,
        "html_to_text": html_to_text,
        "local_id": local_id,
        "localtime": localtime,
        "oneline": oneline,
        "slack_escape": slack_escape,
        "slack_link": slack_link,
        "textdiff": textdiff,
        "truncate_text": truncate_text,
    }
