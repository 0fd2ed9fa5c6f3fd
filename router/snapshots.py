"""Entity snapshots: what the router last knew about a course, a section, a student's
progress, so that ``changed`` conditions and templates can say what changed.

Canvas' ``*_updated`` events carry the new values only; the previous ones are the
snapshot the router kept from earlier events about the same entity.
"""

from collections.abc import Mapping
from typing import Any

__all__ = ["entity_key", "merge_snapshot", "previous_event"]


def _get(data: Any, *path: str) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, Mapping) else None
    return data


def entity_key(event: Mapping[str, Any]) -> str | None:
    """Which entity an event describes (``course:<id>``), or None for events without one."""
    metadata, body = event.get("metadata") or {}, event.get("body") or {}
    name = str(metadata.get("event_name", ""))
    if name.startswith("course_section_") and body.get("course_section_id"):
        return f"course_section:{body['course_section_id']}"
    if name in ("course_created", "course_updated") and body.get("course_id"):
        return f"course:{body['course_id']}"
    if name in ("course_progress", "course_completed"):
        course, user = _get(body, "course", "id"), _get(body, "user", "id")
        return f"course_progress:{course}:{user}" if course and user else None
    if name == "syllabus_updated":
        return None  # the event carries its own previous value (old_syllabus_body)
    kind, ident = metadata.get("context_type"), metadata.get("context_id")
    return f"{name}:{kind}:{ident}" if kind and ident else None


def previous_event(
    event: Mapping[str, Any], snapshot: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The entity as it was before this event, shaped like an event (``{"body": ...}``),
    so ``changed`` compares the same dotted path in both."""
    body = event.get("body") or {}
    name = (event.get("metadata") or {}).get("event_name")
    if name == "syllabus_updated" and "old_syllabus_body" in body:
        return {**event, "body": {**body, "syllabus_body": body["old_syllabus_body"]}}
    if snapshot is None:
        return None
    return {"metadata": event.get("metadata") or {}, "body": dict(snapshot)}


def merge_snapshot(snapshot: Mapping[str, Any] | None, event: Mapping[str, Any]) -> dict[str, Any]:
    """The entity after this event: the old snapshot updated with the fields it carries."""
    return {**(snapshot or {}), **(event.get("body") or {})}
