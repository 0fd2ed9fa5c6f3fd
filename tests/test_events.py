"""Event parsing: timestamps in every documented form, identity, template helpers."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from router.events import Event, canonical_json, event_identity, parse_timestamp
from router.filters import local_id
from router.redact import Redactor
from tests.conftest import all_examples, example


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-11-01T19:11:26.615Z", datetime(2019, 11, 1, 19, 11, 26, 615000, UTC)),
        ("2019-11-05 07:38:00 -0800", datetime(2019, 11, 5, 15, 38, tzinfo=UTC)),
        ("2019-11-05T07:38:00-08:00", datetime(2019, 11, 5, 15, 38, tzinfo=UTC)),
        ("2019-11-05T13:38:00+0530", datetime(2019, 11, 5, 8, 8, tzinfo=UTC)),
        ("2020-06-17T04:00:00Z", datetime(2020, 6, 17, 4, tzinfo=UTC)),
    ],
)
def test_timestamps_in_every_documented_form(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed is not None and parsed == expected


@pytest.mark.parametrize("junk", [None, "", "yesterday", "2019-13-45T99:00:00Z", 12, {"a": 1}])
def test_bad_timestamps_never_raise(junk: object) -> None:
    assert parse_timestamp(junk) is None


def test_mixed_offsets_within_one_event() -> None:
    event = Event.model_validate(example("course_updated"))
    assert event.metadata.event_time == datetime(
        2019, 11, 5, 7, 38, tzinfo=timezone(timedelta(hours=-8))
    )
    created = parse_timestamp(event.body["created_at"])
    assert created is not None and created.utcoffset() == timedelta(0)


def test_every_example_validates_and_keeps_unknown_fields() -> None:
    for payload in all_examples().values():
        event = Event.model_validate(payload)
        assert event.name == payload["metadata"]["event_name"]
        assert event.model_dump()["metadata"]["root_account_uuid"]  # an extra field, kept


def test_completed_at_may_be_null() -> None:
    event = Event.model_validate(example("course_progress"))
    assert event.body["progress"]["completed_at"] is None


def test_identity_ignores_key_order_and_differs_per_event() -> None:
    one = example("course_completed")
    reordered = dict(reversed(list(one.items())))
    assert event_identity(canonical_json(one)) == event_identity(canonical_json(reordered))
    examples = all_examples()
    ids = {event_identity(canonical_json(e)) for e in examples.values()}
    assert len(ids) == len(examples)  # most examples share one request_id; ids differ


def test_global_to_local_ids() -> None:
    assert local_id("21070000000000565") == "565"
    assert local_id("21070000000000001") == "1"
    assert local_id("565") == "565"
    assert local_id(None) == "None"


def test_access_tokens_in_canvas_urls_are_redacted() -> None:
    url = example("course_section_created")["metadata"]["url"]
    redacted = Redactor()(url)
    assert "sGvKF4Yzr2AqdwShKj7CwwopgwJuMFONBqWu44Upk1F4jgkFvpXc9HY20PCU5r0" not in redacted
    assert "access_token=***&course_section" in redacted
    assert Redactor(["hunter2-secret"])("pw is hunter2-secret!") == "pw is ***!"
    assert Redactor()("Authorization: Bearer abc.def") == "Authorization: Bearer ***"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("GET /api?ACCESS_TOKEN=abc123&x=1", "GET /api?ACCESS_TOKEN=***&x=1"),
        ("next=%2Fx%3Faccess_token%3Dabc123", "next=%2Fx%3Faccess_token%3D***"),
        ("q?Password%3dhunter2 ok", "q?Password%3d*** ok"),
        ("Authorization: BEARER abc.def", "Authorization: BEARER ***"),
        ("slack token XOXB-1234-abcd in text", "slack token XOXB-*** in text"),
        ("plain id 3b5ca34b:course-completed:slack", "plain id 3b5ca34b:course-completed:slack"),
    ],
)
def test_credential_shapes_are_redacted_in_any_case(text: str, redacted: str) -> None:
    # Strings without "=", "%3d", "bearer" or "xox" skip the pattern scan: every shape
    # above must still be caught, whatever its case.
    assert Redactor()(text) == redacted
