"""The event names Canvas Live Events sends (its Canvas format, as Canvas documents
them), so that a misspelt name in a rules file is caught instead of never firing."""

import difflib
import functools

__all__ = ["CANVAS_EVENTS", "likely_typo"]

CANVAS_EVENTS = frozenset(
    {
        "account_created",
        "account_notification_created",
        "account_updated",
        "asset_accessed",
        "assignment_created",
        "assignment_group_created",
        "assignment_group_updated",
        "assignment_override_created",
        "assignment_override_updated",
        "assignment_updated",
        "attachment_created",
        "attachment_deleted",
        "attachment_updated",
        "content_migration_completed",
        "content_migration_started",
        "conversation_created",
        "conversation_forwarded",
        "conversation_message_created",
        "course_completed",
        "course_created",
        "course_grade_change",
        "course_progress",
        "course_section_created",
        "course_section_updated",
        "course_updated",
        "discussion_entry_created",
        "discussion_entry_submitted",
        "discussion_topic_created",
        "discussion_topic_updated",
        "enrollment_created",
        "enrollment_state_created",
        "enrollment_state_updated",
        "enrollment_updated",
        "final_grade_custom_status",
        "grade_change",
        "grade_override",
        "group_category_created",
        "group_category_updated",
        "group_created",
        "group_membership_created",
        "group_membership_updated",
        "group_updated",
        "learning_outcome_created",
        "learning_outcome_group_created",
        "learning_outcome_group_updated",
        "learning_outcome_link_created",
        "learning_outcome_link_updated",
        "learning_outcome_result_created",
        "learning_outcome_result_updated",
        "learning_outcome_updated",
        "logged_in",
        "logged_out",
        "lti_resource_link_created",
        "lti_resource_link_updated",
        "master_migration_started",
        "module_created",
        "module_item_created",
        "module_item_updated",
        "module_updated",
        "outcome_calculation_method_created",
        "outcome_calculation_method_updated",
        "outcome_proficiency_created",
        "outcome_proficiency_updated",
        "outcomes_retry_outcome_alignment_clone",
        "plagiarism_resubmit",
        "quiz_created",
        "quiz_submitted",
        "quiz_updated",
        "rubric_assessed",
        "sis_batch_created",
        "sis_batch_updated",
        "submission_comment_created",
        "submission_created",
        "submission_custom_grade_status",
        "submission_updated",
        "syllabus_updated",
        "user_account_association_created",
        "user_created",
        "user_updated",
        "wiki_page_created",
        "wiki_page_deleted",
        "wiki_page_updated",
    }
)

# Close enough to be a slip of the keyboard (course_complted, grade_changed), far
# enough that an event of another source (course_archived) is left alone.
_CUTOFF = 0.85


# Rules files repeat their event names, and each rule load (a reload too) asks again.
@functools.lru_cache(maxsize=4096)
def likely_typo(name: str) -> str | None:
    """The Canvas event that ``name`` probably meant, or None: for a Canvas event, a
    glob, or a name unlike any (an event of some other source, routed as it is)."""
    if name in CANVAS_EVENTS or any(ch in name for ch in "*?["):
        return None
    close = difflib.get_close_matches(name, CANVAS_EVENTS, n=1, cutoff=_CUTOFF)
    return close[0] if close else None
