"""IMS Caliper 1.1 events as Canvas sends them, and the Canvas event name of each.

A Caliper envelope is ``{"sensor", "sendTime", "dataVersion", "data": [events]}``.
A Caliper event has no event name: its ``type``, ``action``, the ``object``'s type
and the kind of Canvas entity in the object's id (``urn:instructure:canvas:<kind>:<id>``)
say what happened. ``CALIPER_NAMES`` maps them to the name of the Canvas-format twin,
as canvas-lms documents both forms (``doc/api/data_services/json/caliper/event-types/``),
so that ``events: [course_created]`` fires for either format. docs/canvas.md shows the
table; an event not in it is named ``caliper:<Type>.<Action>`` and still accepted.
"""

from collections.abc import Mapping
from typing import Any

__all__ = [
    "CALIPER_NAMES",
    "caliper_name",
    "is_caliper_envelope",
    "is_caliper_event",
]

_ANY = None

#: (event type, action, object type, entity kind in the object id) -> Canvas event name.
#: ``None`` matches anything. Built from canvas-lms' Caliper examples (each one is in
#: examples/caliper/ and tests/test_caliper.py routes it).
CALIPER_NAMES: dict[tuple[str, str, str | None, str | None], str] = {
    ("NavigationEvent", "NavigatedTo", _ANY, _ANY): "asset_accessed",
    ("Event", "Created", "AssignableDigitalResource", "assignment"): "assignment_created",
    ("Event", "Modified", "AssignableDigitalResource", "assignment"): "assignment_updated",
    ("Event", "Created", "Entity", "assignment_override"): "assignment_override_created",
    ("Event", "Modified", "Entity", "assignment_override"): "assignment_override_updated",
    ("Event", "Created", "Document", "attachment"): "attachment_created",
    ("Event", "Deleted", "Document", "attachment"): "attachment_deleted",
    ("Event", "Modified", "Document", "attachment"): "attachment_updated",
    ("Event", "Created", "CourseOffering", "course"): "course_created",
    ("Event", "Modified", "CourseOffering", "course"): "course_updated",
    ("MessageEvent", "Posted", "Message", "discussionEntry"): "discussion_entry_created",
    ("ThreadEvent", "Created", "Thread", "discussion"): "discussion_topic_created",
    ("Event", "Created", "Entity", "enrollment"): "enrollment_created",
    ("Event", "Modified", "Entity", "enrollment"): "enrollment_updated",
    ("GradeEvent", "Graded", "Attempt", "submission"): "grade_change",
    ("Event", "Created", "Entity", "groupCategory"): "group_category_created",
    ("Event", "Created", "Group", "group"): "group_created",
    ("Event", "Created", "Membership", "groupMembership"): "group_membership_created",
    ("SessionEvent", "LoggedIn", _ANY, _ANY): "logged_in",
    ("SessionEvent", "LoggedOut", _ANY, _ANY): "logged_out",
    ("Event", "Created", "Assessment", "quiz"): "quiz_created",
    ("Event", "Modified", "Assessment", "quiz"): "quiz_updated",
    ("AssessmentEvent", "Submitted", "Attempt", "submission"): "quiz_submitted",
    ("AssignableEvent", "Submitted", "Attempt", "submission"): "submission_created",
    ("Event", "Modified", "Attempt", "submission"): "submission_updated",
    ("Event", "Modified", "Document", "course"): "syllabus_updated",
    ("Event", "Created", "Entity", "account"): "user_account_association_created",
    ("Event", "Created", "Page", "wikiPage"): "wiki_page_created",
    ("Event", "Deleted", "Page", "wikiPage"): "wiki_page_deleted",
    ("Event", "Modified", "Page", "wikiPage"): "wiki_page_updated",
}

_URN = "urn:instructure:canvas:"
_CANVAS = "com.instructure.canvas"


def is_caliper_envelope(item: Any) -> bool:
    """A Caliper envelope: an object with a ``data`` list and ``sensor`` or ``dataVersion``."""
    return (
        isinstance(item, dict)
        and isinstance(item.get("data"), list)
        and ("dataVersion" in item or "sensor" in item)
        and "metadata" not in item
    )


def is_caliper_event(event: Mapping[str, Any]) -> bool:
    """A stored event in Caliper form (it has an ``action``, no Canvas ``metadata``)."""
    return "metadata" not in event and isinstance(event.get("action"), str)


def _kind(entity: Any) -> str | None:
    """``course`` for ``urn:instructure:canvas:course:565``."""
    ident = entity.get("id") if isinstance(entity, dict) else None
    if isinstance(ident, str) and ident.startswith(_URN):
        return ident[len(_URN) :].split(":", 1)[0] or None
    return None


def caliper_name(event: Mapping[str, Any]) -> str:
    """The Canvas event name of a Caliper event, or ``caliper:<Type>.<Action>``.

    ``event`` must have string ``type`` and ``action`` (parsing checks that first).
    Canvas sends ``enrollment_created`` and ``enrollment_state_created`` with the same
    type, action and object; the state events carry ``state`` in the object's Canvas
    extensions, which tells them apart.
    """
    kind_of, action = event["type"], event["action"]
    obj = event.get("object")
    object_type = obj.get("type") if isinstance(obj, dict) else None
    kind = _kind(obj)
    name = CALIPER_NAMES.get((kind_of, action, object_type, kind)) or CALIPER_NAMES.get(
        (kind_of, action, _ANY, _ANY)
    )
    if name is None:
        return f"caliper:{kind_of}.{action}"
    if kind == "enrollment" and isinstance(obj, dict):
        extensions = obj.get("extensions")
        canvas = extensions.get(_CANVAS) if isinstance(extensions, dict) else None
        if isinstance(canvas, dict) and "state" in canvas:
            return name.replace("enrollment_", "enrollment_state_")
    return name
