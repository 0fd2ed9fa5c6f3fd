"""What each ``enrich:`` name of a rule fetches from the Canvas REST API: which ids of
the event it reads and which call it makes. Pure (no I/O): ``router/canvas_api.py``
makes the calls and caches what they return.

Ids go into URL paths, so only ids made of digits (local ``565`` or global
``21070000000000565``; Canvas answers both) or ``shard~id`` are used; anything else
counts as "the event does not say".
"""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LOOKUPS", "PEOPLE", "Lookup", "Request", "canvas_id", "course_id", "person", "user_id"]

_ID = re.compile(r"\d{1,20}|\d{1,6}~\d{1,15}")
PER_PAGE = "100"  # Canvas caps per_page itself; asking for more pages fewer requests


@dataclass(frozen=True)
class Request:
    """One GET against the Canvas API: a path under the instance's URL and its query."""

    path: str
    params: tuple[tuple[str, str], ...] = ()
    paginated: bool = False

    def cache_key(self, base: str) -> str:
        """Where its answer is cached: the instance, the path and the query."""
        query = "&".join(f"{k}={v}" for k, v in self.params)
        return f"{base}{self.path}?{query}"


@dataclass(frozen=True)
class Lookup:
    """One ``enrich:`` name: its request for an event (None when the event carries no
    usable id), how the answer is shaped, and the documentation of both."""

    name: str
    reads: str
    call: str
    request: Callable[[Mapping[str, Any]], Request | None]
    shape: Callable[[Any], Any]
    people: bool  # a person or a list of people: usable as ``recipients:``


def canvas_id(value: Any) -> str | None:
    """An id usable in a URL path, or None. Canvas sends ids as strings; numbers work too."""
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip()
    return text if _ID.fullmatch(text) else None


def _get(event: Mapping[str, Any], *path: str) -> Any:
    data: Any = event
    for part in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(part)
    return data


def _first(event: Mapping[str, Any], *paths: tuple[str, ...]) -> str | None:
    for path in paths:
        found = canvas_id(_get(event, *path))
        if found is not None:
            return found
    return None


def course_id(event: Mapping[str, Any]) -> str | None:
    """The course an event is about: ``body.course_id``, ``body.course.id``, else the
    event's context when that is a course (``body.context_id`` / ``metadata.context_id``
    with ``context_type: Course``)."""
    found = _first(event, ("body", "course_id"), ("body", "course", "id"))
    if found is not None:
        return found
    for part in ("body", "metadata"):
        if _get(event, part, "context_type") == "Course":
            found = canvas_id(_get(event, part, "context_id"))
            if found is not None:
                return found
    return None


def user_id(event: Mapping[str, Any]) -> str | None:
    """The person an event is about: ``body.user_id``, ``body.student_id``,
    ``body.user.id``, else the acting user ``metadata.user_id``."""
    return _first(
        event,
        ("body", "user_id"),
        ("body", "student_id"),
        ("body", "user", "id"),
        ("metadata", "user_id"),
    )


def person(data: Any) -> Any:
    """A Canvas user as templates and channels see it: the API's fields, plus ``email``
    (from ``email`` or a profile's ``primary_email``) and ``time_zone``, None when the
    token may not see them."""
    if not isinstance(data, Mapping):
        return None
    found = dict(data)
    found["id"] = str(found.get("id", ""))
    found["email"] = data.get("email") or data.get("primary_email")
    found.setdefault("time_zone", None)
    found.setdefault("name", found.get("short_name") or found.get("sortable_name"))
    return found


def _people(data: Any) -> Any:
    if not isinstance(data, list):
        return None
    return [p for p in (person(item) for item in data) if p is not None]


def _object(data: Any) -> Any:
    return dict(data) if isinstance(data, Mapping) else None


def _course(event: Mapping[str, Any]) -> Request | None:
    found = course_id(event)
    return None if found is None else Request(f"/api/v1/courses/{found}")


def _user(event: Mapping[str, Any]) -> Request | None:
    found = user_id(event)
    return None if found is None else Request(f"/api/v1/users/{found}/profile")


def _assignment(event: Mapping[str, Any]) -> Request | None:
    course, assignment = course_id(event), _first(event, ("body", "assignment_id"))
    if course is None or assignment is None:
        return None
    return Request(f"/api/v1/courses/{course}/assignments/{assignment}")


def _submission(event: Mapping[str, Any]) -> Request | None:
    course, assignment = course_id(event), _first(event, ("body", "assignment_id"))
    student = _first(event, ("body", "student_id"), ("body", "user_id"))
    if course is None or assignment is None or student is None:
        return None
    return Request(f"/api/v1/courses/{course}/assignments/{assignment}/submissions/{student}")


def _discussion_topic(event: Mapping[str, Any]) -> Request | None:
    course, topic = course_id(event), _first(event, ("body", "discussion_topic_id"))
    if course is None or topic is None:
        return None
    return Request(f"/api/v1/courses/{course}/discussion_topics/{topic}")


def _section(event: Mapping[str, Any]) -> Request | None:
    found = _first(event, ("body", "course_section_id"), ("body", "section_id"))
    if found is None and _get(event, "metadata", "context_type") == "CourseSection":
        found = canvas_id(_get(event, "metadata", "context_id"))
    return None if found is None else Request(f"/api/v1/sections/{found}")


def _enrolled(kind: str) -> Callable[[Mapping[str, Any]], Request | None]:
    def request(event: Mapping[str, Any]) -> Request | None:
        found = course_id(event)
        if found is None:
            return None
        params = (("enrollment_type[]", kind), ("include[]", "email"), ("per_page", PER_PAGE))
        return Request(f"/api/v1/courses/{found}/users", params, paginated=True)

    return request


_COURSE_IDS = (
    "body.course_id, body.course.id, else body/metadata.context_id where context_type is"
    " Course (course_*, syllabus_updated, submission_*, grade_change, enrollment_*,"
    " assignment_*, discussion_*, wiki_page_*, ...)"
)

LOOKUPS: dict[str, Lookup] = {
    lookup.name: lookup
    for lookup in (
        Lookup(
            "course",
            _COURSE_IDS,
            "GET /api/v1/courses/:course_id",
            _course,
            _object,
            people=False,
        ),
        Lookup(
            "user",
            "body.user_id, body.student_id, body.user.id, else metadata.user_id (the acting"
            " user) (course_completed, course_progress, submission_*, grade_change,"
            " enrollment_*, user_*, ...)",
            "GET /api/v1/users/:user_id/profile",
            _user,
            person,
            people=True,
        ),
        Lookup(
            "assignment",
            "body.assignment_id with the course as for `course` (assignment_*,"
            " submission_*, grade_change)",
            "GET /api/v1/courses/:course_id/assignments/:assignment_id",
            _assignment,
            _object,
            people=False,
        ),
        Lookup(
            "submission",
            "body.assignment_id and body.student_id (else body.user_id), with the course as"
            " for `course` (submission_*, grade_change)",
            "GET /api/v1/courses/:course_id/assignments/:assignment_id/submissions/:user_id",
            _submission,
            _object,
            people=False,
        ),
        Lookup(
            "discussion_topic",
            "body.discussion_topic_id, with the course as for `course` (discussion_topic_*,"
            " discussion_entry_*)",
            "GET /api/v1/courses/:course_id/discussion_topics/:topic_id",
            _discussion_topic,
            _object,
            people=False,
        ),
        Lookup(
            "section",
            "body.course_section_id, body.section_id, else metadata.context_id where"
            " context_type is CourseSection (course_section_*, enrollment_*)",
            "GET /api/v1/sections/:section_id",
            _section,
            _object,
            people=False,
        ),
        Lookup(
            "teachers",
            "the course as for `course`",
            "GET /api/v1/courses/:course_id/users?enrollment_type[]=teacher&include[]=email",
            _enrolled("teacher"),
            _people,
            people=True,
        ),
        Lookup(
            "tas",
            "the course as for `course`",
            "GET /api/v1/courses/:course_id/users?enrollment_type[]=ta&include[]=email",
            _enrolled("ta"),
            _people,
            people=True,
        ),
        Lookup(
            "students",
            "the course as for `course`",
            "GET /api/v1/courses/:course_id/users?enrollment_type[]=student&include[]=email",
            _enrolled("student"),
            _people,
            people=True,
        ),
    )
}

#: The names ``recipients:`` accepts.
PEOPLE = tuple(name for name, lookup in LOOKUPS.items() if lookup.people)
