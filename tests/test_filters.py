"""The builtin template filters: Canvas links, HTML to text, diffs, changes, Slack text.

Filters that read the template context (``canvas_url``, ``localtime``, ``display``) are
exercised through a real ``Templates`` environment, the way templates call them.
"""

from pathlib import Path
from typing import Any

import pytest
from markupsafe import Markup

from router.filters import (
    builtin_filters,
    changes,
    html_to_text,
    local_id,
    oneline,
    slack_escape,
    slack_link,
    textdiff,
    truncate_text,
)
from router.templates import Templates
from tests.conftest import example

HOST = "oxana.instructure.com"
META = {"hostname": HOST, "time_zone": "America/New_York"}


@pytest.fixture
def render(tmp_path: Path) -> Any:
    env = Templates(tmp_path).env

    def render(source: str, metadata: dict[str, Any] | None = None, **variables: Any) -> str:
        metadata = META if metadata is None else metadata
        context = {"metadata": metadata, "time_zone": metadata.get("time_zone") or "UTC"}
        return env.from_string(source).render({**context, **variables})

    return render


def test_builtin_filters_names_every_filter_and_templates_get_them(tmp_path: Path) -> None:
    names = {
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
    }
    assert set(builtin_filters()) == names
    assert names <= set(Templates(tmp_path).env.filters)
    for function in builtin_filters().values():
        assert function.__doc__


# --- local_id / localtime (unchanged behaviour) ---------------------------------------------


def test_local_id() -> None:
    assert local_id("21070000000000565") == "565"
    assert local_id(21070000000000565) == "565"
    assert local_id("565") == "565"
    assert local_id("sis_course_id:ABC") == "sis_course_id:ABC"


def test_localtime(render: Any) -> None:
    assert render("{{ t | localtime }}", t="2019-11-05T13:38:00.218Z") == "2019-11-05 08:38 EST"
    assert render("{{ t | localtime('UTC') }}", t="2019-11-05 07:38:00 -0800") == (
        "2019-11-05 15:38 UTC"
    )
    assert render("{{ t | localtime }}", t="not a time") == "not a time"
    assert render("{{ t | localtime }}", t=None) == ""
    assert render("{{ t | localtime('No/Such_Zone') }}", t="2019-11-05T13:38:00Z") == (
        "2019-11-05 13:38 UTC"
    )


# --- canvas_url -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ '21070000000000565' | canvas_url }}", "/courses/565"),
        ("{{ 565 | canvas_url('course') }}", "/courses/565"),
        ("{{ '565' | canvas_url('courses') }}", "/courses/565"),
        ("{{ '21070000000000565' | canvas_url('syllabus') }}", "/courses/565/assignments/syllabus"),
        ("{{ '565' | canvas_url('modules') }}", "/courses/565/modules"),
        ("{{ '1234567' | canvas_url('section') }}", "/sections/1234567"),
        (
            "{{ '1234567' | canvas_url('section', course='21070000000000565') }}",
            "/courses/565/sections/1234567",
        ),
        ("{{ '21070000000000123' | canvas_url('user') }}", "/users/123"),
        ("{{ '123' | canvas_url('users', course='565') }}", "/courses/565/users/123"),
        ("{{ '79' | canvas_url('account') }}", "/accounts/79"),
        ("{{ '7' | canvas_url('course_section') }}", "/sections/7"),
        ("{{ '/courses/565/files' | canvas_url('path') }}", "/courses/565/files"),
        ("{{ 'a b/c' | canvas_url }}", "/courses/a%20b%2Fc"),
    ],
)
def test_canvas_url_kinds(render: Any, source: str, expected: str) -> None:
    assert render(source) == f"https://{HOST}{expected}"


@pytest.mark.parametrize(
    "source",
    [
        "{{ None | canvas_url }}",
        "{{ '' | canvas_url }}",
        "{{ {'a': 1} | canvas_url }}",
        "{{ '565' | canvas_url('nonsense') }}",
        "{{ 'courses/565' | canvas_url('path') }}",  # not an absolute path
        "{{ '//evil.example/x' | canvas_url('path') }}",
        "{{ None | canvas_url('path') }}",
    ],
)
def test_canvas_url_odd_values_give_empty(render: Any, source: str) -> None:
    assert render(source) == ""


COURSE = "21070000000000565"  # a global id: links use the local one


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ '355' | canvas_url('assignment', course=c) }}", "/courses/565/assignments/355"),
        ("{{ '355' | canvas_url('assignments', course=c) }}", "/courses/565/assignments/355"),
        (
            "{{ '21070000000000048' | canvas_url('submission', course=c, assignment=355) }}",
            "/courses/565/assignments/355/submissions/48",
        ),
        (
            "{{ '66871' | canvas_url('discussion_topic', course=c) }}",
            "/courses/565/discussion_topics/66871",
        ),
        (
            "{{ '66871' | canvas_url('announcement', course=c) }}",
            "/courses/565/discussion_topics/66871",
        ),
        (
            "{{ '7' | canvas_url('discussion_topic', group='144') }}",
            "/groups/144/discussion_topics/7",
        ),
        ("{{ '2030605' | canvas_url('quiz', course=c) }}", "/courses/565/quizzes/2030605"),
        (
            "{{ '21070000000000009' | canvas_url('page', course=c) }}",
            "/courses/565/pages/page_id:9",
        ),
        ("{{ '9' | canvas_url('wiki_page', group='144') }}", "/groups/144/pages/page_id:9"),
        ("{{ '606' | canvas_url('file', course=c) }}", "/courses/565/files/606"),
        ("{{ '606' | canvas_url('attachment', group=144) }}", "/groups/144/files/606"),
        ("{{ '606' | canvas_url('file') }}", "/files/606"),
        ("{{ '14' | canvas_url('module', course=c) }}", "/courses/565/modules#module_14"),
        ("{{ '19587' | canvas_url('module_item', course=c) }}", "/courses/565/modules/items/19587"),
        ("{{ '12345' | canvas_url('outcome', course=c) }}", "/courses/565/outcomes/12345"),
        ("{{ '47' | canvas_url('user', group='51') }}", "/groups/51/users/47"),
        ("{{ '51' | canvas_url('group') }}", "/groups/51"),
        ("{{ '53' | canvas_url('conversation') }}", "/conversations/53"),
        (
            "{{ '/courses/565/modules#module_14' | canvas_url('path') }}",
            "/courses/565/modules#module_14",
        ),
    ],
)
def test_canvas_url_objects_in_a_course(render: Any, source: str, expected: str) -> None:
    """The URL shapes of canvas-lms config/routes.rb; a page by id is "page_id:<id>"."""
    assert render(source, c=COURSE) == f"https://{HOST}{expected}"


@pytest.mark.parametrize(
    "source",
    [
        # Objects that live in a course have no URL without it.
        "{{ '355' | canvas_url('assignment') }}",
        "{{ '2030605' | canvas_url('quiz') }}",
        "{{ '9' | canvas_url('page') }}",
        "{{ '14' | canvas_url('module', group='144') }}",
        # A submission needs its assignment too (Canvas shows one per assignment and student).
        "{{ '48' | canvas_url('submission', course='565') }}",
        "{{ '48' | canvas_url('submission', assignment='355') }}",
        "{{ '355' | canvas_url('assignment', course={'id': 1}) }}",
        "{{ None | canvas_url('assignment', course='565') }}",
    ],
)
def test_canvas_url_without_the_context_an_object_needs_is_empty(render: Any, source: str) -> None:
    assert render(source) == ""


def test_canvas_url_host_sources(render: Any) -> None:
    # No hostname at all (course_progress, course_updated events): no link, no error.
    assert render("{{ '565' | canvas_url }}", metadata={}) == ""
    # The host of metadata.url when metadata.hostname is missing.
    url_only = {"url": "https://canvas.example.edu/api/v1/courses/565"}
    assert render("{{ '565' | canvas_url }}", metadata=url_only) == (
        "https://canvas.example.edu/courses/565"
    )
    # An explicit hostname wins.
    assert render("{{ '565' | canvas_url(hostname='x.test') }}") == "https://x.test/courses/565"
    # Anything that is not a plain host name is refused rather than spliced into the URL.
    for bad in ['evil.com/"><script>', "a b", "user@host", "", None, 42]:
        assert render("{{ '565' | canvas_url }}", metadata={"hostname": bad}) == ""
    assert render("{{ '5' | canvas_url }}", metadata={"hostname": "localhost:3000"}) == (
        "https://localhost:3000/courses/5"
    )


def test_canvas_url_with_odd_metadata(render: Any) -> None:
    assert render("{{ '565' | canvas_url }}", metadata={"url": "http://[bad"}) == ""
    assert render("{{ '565' | canvas_url }}", metadata={"url": 7}) == ""


# --- html_to_text ---------------------------------------------------------------------------


def test_html_to_text_structure() -> None:
    html = (
        "<h1>Syllabus</h1><p>Week&nbsp;1:\n   vectors &amp; <b>matrices</b></p>"
        "<ul><li>Read <i>ch. 1</i></li><li>Quiz<ul><li>online</li></ul></li></ul>"
        "<ol><li>one</li><li>two</li></ol>"
        "<p>line<br>break<br/>again</p><div>a div</div><div>another</div>"
    )
    assert html_to_text(html) == (
        "Syllabus\n\n"
        "Week 1: vectors & matrices\n\n"
        "• Read ch. 1\n• Quiz\n  • online\n\n"
        "1. one\n2. two\n\n"
        "line\nbreak\nagain\n\n"
        "a div\nanother"
    )


def test_html_to_text_drops_scripts_styles_and_marks_embeds() -> None:
    html = (
        "<style>p { color: red }</style><p>Intro</p><script>alert('<p>x</p>')</script>"
        '<iframe src="/media"><p>fallback</p></iframe><video src="v.mp4"></video>'
        '<p><img src="eq.png" alt="E = mc^2"> and <img src="x.png"></p>'
    )
    assert html_to_text(html) == (
        "Intro\n\n[embedded content][embedded content]\n\n[image: E = mc^2] and [image]"
    )


def test_html_to_text_entities() -> None:
    assert html_to_text("<p>&lt;script&gt; &amp;amp; &copy; &#169; &#x41; &quot;q&quot;</p>") == (
        '<script> &amp; © © A "q"'
    )
    assert html_to_text("AT&T &unknown; 5 < 6 > 4") == "AT&T &unknown; 5 < 6 > 4"


def test_html_to_text_links_keep_absolute_urls() -> None:
    html = (
        '<p><a href="https://example.com/a">the reading</a>, '
        '<a href="/courses/565/files/1">a file</a>, '
        '<a href="https://example.com/b">https://example.com/b</a></p>'
    )
    assert html_to_text(html) == (
        "the reading (https://example.com/a), a file, https://example.com/b"
    )


def test_html_to_text_tables_and_pre() -> None:
    html = "<table><tr><th>Week</th><th>Topic</th></tr><tr><td>1</td><td>Vectors</td></tr></table>"
    assert html_to_text(html) == "Week | Topic\n1 | Vectors"
    assert html_to_text("<pre>  a\n    b</pre><p>c   d</p>") == "  a\n    b\n\nc d"


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        # Canvas cuts bodies at 8192 characters, in the middle of a tag or attribute.
        ('<p>Intro</p><iframe style="width: 800px;" src="/courses/565/x?a=1&amp;u=h', None),
        ("<p>Intro</p><p clas", "Intro"),
        ("<p>Intro</p></di", "Intro"),
        ("<p>Intro</p><!-- a comment > that never", "Intro"),
        ("<p>Intro</p><![CDATA[ x", "Intro"),
        ('<p>Intro <a title="x > y', "Intro"),
        ("<p>Intro &am", "Intro &am"),
        ('<p>Intro</p><img src="a.png" al', "Intro\n\n[image]"),
        ("<p>Intro<script>var x = '<p>", "Intro"),
        ("<div><p>Intro</span></b></div></div></li>", "Intro"),
        ("<p>Intro<ul><li>one<li>two", "Intro\n\n• one\n• two"),
    ],
)
def test_html_to_text_truncated_and_malformed(html: str, expected: str | None) -> None:
    text = html_to_text(html)
    assert text == (expected or "Intro\n\n[embedded content]")
    assert "<" not in text.replace("<script>", "")


def test_html_to_text_example_syllabus_and_any_cut() -> None:
    body = example("syllabus_updated")["body"]["syllabus_body"]
    assert html_to_text(body) == "[embedded content]"
    sample = (
        "<h2>Course &amp; grading</h2><p>Office hours:&nbsp;<b>Mon</b> 10&ndash;12</p>"
        '<ul><li><a href="https://x.test/a?b=1&amp;c=2">Link</a></li><li>Item &#8220;2&#8221;'
        "</li></ul><table><tr><td>a</td><td>b</td></tr></table><!-- note --><script>x()</script>"
        '<iframe src="/m"></iframe><p>End.</p>'
    )
    for cut in range(len(sample) + 1):  # every truncation point: never raises, no tag debris
        text = html_to_text(sample[:cut])
        assert isinstance(text, str)
        assert "<" not in text and "-->" not in text
    long_body = ("<p>" + "word " * 50 + "</p>") * 40
    assert len(html_to_text(long_body[:8192]).split()) > 1000


def test_html_to_text_odd_input_and_width() -> None:
    assert html_to_text(None) == ""
    assert html_to_text("") == ""
    assert html_to_text(42) == "42"
    assert html_to_text("<p>a</p>", width="x") == "a"
    wrapped = html_to_text("<p>" + "word " * 20 + "</p><ul><li>" + "item " * 12 + "</li></ul>", 30)
    lines = wrapped.split("\n")
    assert all(len(line) <= 30 for line in lines)
    bullet = lines.index(next(line for line in lines if line.startswith("• ")))
    assert lines[bullet + 1].startswith("  item")  # hanging indent under the bullet


# --- textdiff -------------------------------------------------------------------------------


def test_textdiff_lines_context_and_hunks() -> None:
    old = "a\nb\nc\nd\ne\nf\ng"
    new = "a\nB\nc\nd\ne\nf\nG"
    assert textdiff(old, new) == "  a\n- b\n+ B\n  c\n…\n  f\n- g\n+ G"
    assert textdiff(old, new, context=0) == "- b\n+ B\n…\n- g\n+ G"
    assert textdiff("a\nb", "a\nc") == "  a\n- b\n+ c"


def test_textdiff_no_changes_and_odd_input() -> None:
    assert textdiff("same\ntext", "same\ntext  \n") == "(no changes)"
    assert textdiff(None, None) == "(no changes)"
    assert textdiff(None, "new") == "+ new"
    assert textdiff("old", None) == "- old"
    assert textdiff(1, 2, context="x", limit=None) == "- 1\n+ 2"
    assert textdiff("--x\ny", "y") == "- --x\n  y"  # a removed "--x" is not a file header


def test_textdiff_drops_blank_context_at_hunk_edges() -> None:
    assert textdiff("a\n\nb", "a\n\nB") == "- b\n+ B"


def test_textdiff_caps_lines() -> None:
    old = "\n".join(f"line {i}" for i in range(100))
    diff = textdiff(old, "")
    lines = diff.split("\n")
    assert len(lines) == 41
    assert lines[0] == "- line 0"
    assert lines[-1] == "… 60 more lines"
    assert textdiff("a\nb", "", limit=1).split("\n")[-1] == "… 1 more line"


def test_textdiff_of_html_versions() -> None:
    old = html_to_text("<ul><li>Read ch. 1</li><li>Quiz</li></ul>")
    new = html_to_text("<ul><li>Read ch. 1 &amp; 2</li><li>Quiz</li></ul>")
    assert textdiff(old, new) == "- • Read ch. 1\n+ • Read ch. 1 & 2\n  • Quiz"


# --- changes / display ----------------------------------------------------------------------


def test_changes() -> None:
    before = {
        "name": "Linear Algebra",
        "workflow_state": "available",
        "updated_at": "2019-11-05T13:38:00Z",
        "course_id": "21070000000000056",
        "only_before": 1,
    }
    after = {
        "name": "Linear Algebra II",
        "workflow_state": "available",
        "updated_at": "2019-11-06T13:38:00Z",
        "course_id": "56",  # the same id in local form
        "only_after": 2,
    }
    assert changes(before, after) == [
        {"field": "name", "old": "Linear Algebra", "new": "Linear Algebra II"}
    ]
    assert changes(before, after, ignore=["name"]) == []
    assert changes(before, after, ignore="name") == []


def test_changes_nested_and_odd_input() -> None:
    before = {"course": {"name": "A", "id": "1"}, "tags": ["x"]}
    after = {"course": {"name": "B", "id": "1"}, "tags": ["x", "y"]}
    assert changes(before, after) == [
        {"field": "course.name", "old": "A", "new": "B"},
        {"field": "tags", "old": ["x"], "new": ["x", "y"]},
    ]
    assert changes(None, after) == []
    assert changes(before, None) == []
    assert changes("text", after) == []
    assert changes({"a": None}, {"a": 0}) == [{"field": "a", "old": None, "new": 0}]


def test_changes_and_display_in_a_template(render: Any) -> None:
    source = (
        "{% for c in previous | changes(body) %}"
        "{{ c.field }}: {{ c.old | display(c.field) }} -> {{ c.new | display(c.field) }};"
        "{% endfor %}"
    )
    previous = {"end_at": "2020-05-01T04:00:00Z", "x": None, "on": True, "l": [], "s": "a"}
    body = {"end_at": "2020-06-17T04:00:00Z", "x": "set", "on": False, "l": ["a", None], "s": ""}
    assert render(source, previous=previous, body=body) == (
        "end_at: 2020-05-01 00:00 EDT -> 2020-06-17 00:00 EDT;"
        "x: (none) -> set;on: yes -> no;l: (none) -> a, (none);s: a -> (none);"
    )
    assert render(source, previous=None, body=body) == ""
    assert render("{{ 'not a time' | display('start_at') }}") == "not a time"
    assert render("{{ 5 | display }}") == "5"


# --- truncate_text --------------------------------------------------------------------------


def test_truncate_text() -> None:
    assert truncate_text("Introduction to Linear Algebra", 20) == "Introduction to…"
    assert truncate_text("short") == "short"
    assert truncate_text("abcdefghijklmnopqrstuvwxyz", 10) == "abcdefghi…"
    assert truncate_text("one two three", 9, end="...") == "one..."
    assert len(truncate_text("word " * 100, 150)) <= 150
    assert truncate_text(None) == ""
    assert truncate_text(12345, 3) == "12…"
    assert truncate_text("abc", "x") == "abc"
    assert truncate_text("abc", 0) == ""
    assert truncate_text("abcdef", 2, end="...") == ".."


# --- Slack helpers --------------------------------------------------------------------------


def test_slack_escape_and_link() -> None:
    assert slack_escape("A <b> & C") == "A &lt;b&gt; &amp; C"
    assert slack_escape(None) == ""
    assert slack_escape(5) == "5"
    assert slack_link("https://x.test/c/1", "Algebra <I> & II") == (
        "<https://x.test/c/1|Algebra &lt;I&gt; &amp; II>"
    )
    assert slack_link("https://x.test/a|b>c", "L") == "<https://x.test/a%7Cb%3Ec|L>"
    assert slack_link("", "Label & co") == "Label &amp; co"
    assert slack_link(None, None) == ""
    assert slack_link("https://x.test/") == "<https://x.test/>"
    assert slack_link("javascript:alert(1)", "x") == "x"
    assert slack_link("https://x.test/", "two\n lines") == "<https://x.test/|two lines>"


def test_oneline() -> None:
    assert oneline("Linear\n  Algebra\t I ") == "Linear Algebra I"
    assert oneline(None) == ""
    assert oneline(3) == "3"
    assert isinstance(oneline(Markup("a\n<b>")), Markup)
