"""The Canvas API client against the fake Canvas API on 127.0.0.1, with its cache in a
real store on both backends."""

import asyncio
import copy
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router.canvas_api import CanvasClient, CanvasUnavailable
from router.canvas_lookups import LOOKUPS, Request
from router.metrics import Metrics
from router.rules import CanvasConfig
from router.store import Store, open_store
from tests.canvas_fake import TOKEN, FakeCanvas
from tests.conftest import example


def event(**body: Any) -> dict[str, Any]:
    return {"metadata": {"event_name": "syllabus_updated"}, "body": body}


@pytest.fixture
async def fake() -> AsyncIterator[FakeCanvas]:
    canvas = FakeCanvas(max_per_page=10)
    canvas.courses["565"] = {"id": 565, "name": "Computer Science I", "workflow_state": "available"}
    for n in range(1, 13):
        canvas.add_user(str(100 + n), f"Teacher {n}", f"t{n}@example.edu")
        canvas.enroll("565", str(100 + n), "teacher")
    canvas.add_user("7", "Ada Student", None)
    canvas.enroll("565", "7", "student")
    canvas.sections["44"] = {"id": 44, "name": "Section A", "course_id": 565}
    canvas.assignments[("565", "9")] = {"id": 9, "name": "Essay 1", "course_id": 565}
    await canvas.start()
    yield canvas
    await canvas.close()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    opened = open_store(db_url)
    await opened.open()
    yield opened
    await opened.close()


def client_for(fake: FakeCanvas, store: Store, token: str = TOKEN, **config: Any) -> CanvasClient:
    settings = CanvasConfig.model_validate({"url": fake.url, "token": token, **config})
    return CanvasClient(settings, store, Metrics())


def sample(client: CanvasClient, outcome: str) -> float:
    return client.metrics.by_label("router_canvas_api_requests_total", "outcome").get(
        (outcome,), 0.0
    )


async def test_enrich_reads_names_and_people_with_global_and_local_ids(
    fake: FakeCanvas, store: Store
) -> None:
    client = client_for(fake, store)
    try:
        names = ["course", "teachers", "students", "section", "assignment", "user"]
        found = await client.enrich(
            names,
            event(
                course_id="21070000000000565",
                course_section_id="44",
                assignment_id="9",
                user_id="7",
            ),
        )
        assert found.unavailable is None and found.missing == {}
        assert found.values["course"]["name"] == "Computer Science I"
        assert [t["name"] for t in found.values["teachers"]] == [
            f"Teacher {n}" for n in range(1, 13)
        ]
        assert found.values["teachers"][0]["email"] == "t1@example.edu"
        assert found.values["students"] == [
            {
                "id": "7",
                "name": "Ada Student",
                "sortable_name": "Ada Student",
                "short_name": "Ada Student",
                "email": None,
                "time_zone": None,
            }
        ]
        assert found.values["section"]["name"] == "Section A"
        assert found.values["assignment"]["name"] == "Essay 1"
        assert found.values["user"]["time_zone"] == "America/Denver"
        # 12 teachers at 10 a page (the fake caps per_page): two pages, via Link
        # rel="next"; one page of students.
        assert fake.hits["/api/v1/courses/21070000000000565/users"] == 3
    finally:
        await client.close()


async def test_a_burst_about_one_course_costs_one_request_even_across_replicas(
    fake: FakeCanvas, store: Store
) -> None:
    one, other = client_for(fake, store), client_for(fake, store)  # two replicas, one store
    try:
        results = await asyncio.gather(
            *(one.enrich(["course", "teachers"], event(course_id="565")) for _ in range(5))
        )
        assert all(r.values["course"]["name"] == "Computer Science I" for r in results)
        later = await other.enrich(["course", "teachers"], event(course_id="565"))
        assert len(later.values["teachers"]) == 12
        assert fake.hits["/api/v1/courses/565"] == 1
        assert fake.hits["/api/v1/courses/565/users"] == 2  # the two pages, once
        hits = other.metrics.totals()["router_canvas_api_cache_hits_total"]
        assert hits == 2
    finally:
        await one.close()
        await other.close()


async def test_cached_answers_expire_after_the_ttl(fake: FakeCanvas, store: Store) -> None:
    now = [1_000_000.0]
    settings = CanvasConfig(url=fake.url, token=TOKEN, cache="10m")
    client = CanvasClient(settings, store, Metrics(), clock=lambda: now[0])
    try:
        await client.enrich(["course"], event(course_id="565"))
        now[0] += 599
        await client.enrich(["course"], event(course_id="565"))
        assert fake.hits["/api/v1/courses/565"] == 1
        now[0] += 2
        fake.courses["565"]["name"] = "Computer Science I (renamed)"
        found = await client.enrich(["course"], event(course_id="565"))
        assert found.values["course"]["name"] == "Computer Science I (renamed)"
        assert fake.hits["/api/v1/courses/565"] == 2
    finally:
        await client.close()


async def test_a_404_is_none_not_an_error_and_is_cached(fake: FakeCanvas, store: Store) -> None:
    client = client_for(fake, store)
    try:
        for _ in range(2):
            found = await client.enrich(["course", "user"], event(course_id="999", user_id="8"))
            assert found.values == {"course": None, "user": None}
            assert found.missing == {} and found.unavailable is None
        assert fake.hits["/api/v1/courses/999"] == 1
        assert sample(client, "not_found") == 2
        # An event without the id: nothing to ask, the variable is none.
        found = await client.enrich(["assignment"], event(course_id="565"))
        assert found.values == {"assignment": None} and found.missing == {}
    finally:
        await client.close()


async def test_a_wrong_token_is_unavailable_and_never_shown(
    fake: FakeCanvas, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(fake, store, token="wrong-token-0b3e")
    try:
        found = await client.enrich(["course"], event(course_id="565"))
        assert isinstance(found.unavailable, CanvasUnavailable)
        assert "401" in found.missing["course"] and "canvas.token" in found.missing["course"]
        assert "wrong-token-0b3e" not in caplog.text + str(found.missing) + str(client.last_error)
        assert "wrong-token-0b3e" not in repr(client.config)
        assert sample(client, "error") == 1
    finally:
        await client.close()


async def test_throttling_403_is_retryable_and_pauses_for_retry_after(
    fake: FakeCanvas, store: Store
) -> None:
    fake.throttle_next, fake.retry_after = 1, "1"
    client = client_for(fake, store)
    try:
        found = await client.enrich(["course"], event(course_id="565"))
        assert found.unavailable is not None and found.unavailable.retry_after == 1.0
        assert "Rate Limit Exceeded" in found.missing["course"]
        # Paused: asking again at once adds nothing to Canvas' bucket.
        again = await client.enrich(["course"], event(course_id="565"))
        assert again.unavailable is not None
        assert fake.hits["/api/v1/courses/565"] == 1
        assert sample(client, "throttled") == 1
        deadline = time.monotonic() + 5
        while (found := await client.enrich(["course"], event(course_id="565"))).unavailable:
            assert time.monotonic() < deadline, "still paused after Retry-After"
            await asyncio.sleep(0.1)
        assert found.values["course"]["name"] == "Computer Science I"
        assert fake.hits["/api/v1/courses/565"] == 2
    finally:
        await client.close()


async def test_server_errors_are_unavailable_until_the_api_is_back(
    fake: FakeCanvas, store: Store
) -> None:
    fake.fail_next = 1
    client = client_for(fake, store)
    try:
        found = await client.enrich(["course"], event(course_id="565"))
        assert found.unavailable is not None and "HTTP 503" in str(found.unavailable)
        found = await client.enrich(["course"], event(course_id="565"))
        assert found.unavailable is None and found.values["course"]["id"] == 565
    finally:
        await client.close()


async def test_a_low_remaining_quota_spaces_requests_out(fake: FakeCanvas, store: Store) -> None:
    fake.quota = 1.0  # the first answer says 0 remain: the next request waits
    client = client_for(fake, store)
    try:
        await client.enrich(["course"], event(course_id="565"))
        assert client.metrics.totals()["router_canvas_api_rate_limit_remaining"] == 0.0
        started = time.monotonic()
        await client.enrich(["section"], event(course_section_id="44"))
        assert time.monotonic() - started >= 1.5  # MAX_SPACING at an empty bucket: 2 s
    finally:
        await client.close()


async def test_lists_stop_at_the_page_cap(fake: FakeCanvas, store: Store) -> None:
    client = client_for(fake, store, max_pages=1)
    try:
        found = await client.enrich(["teachers"], event(course_id="565"))
        assert len(found.values["teachers"]) == 10
        assert fake.hits["/api/v1/courses/565/users"] == 1
    finally:
        await client.close()


async def test_ids_that_are_not_canvas_ids_are_never_put_in_a_path(
    fake: FakeCanvas, store: Store
) -> None:
    assert LOOKUPS["course"].request(event(course_id="565/../../users/1")) is None
    assert LOOKUPS["course"].request(event(course_id="2107~565")) == Request(
        "/api/v1/courses/2107~565"
    )
    client = client_for(fake, store)
    try:
        found = await client.enrich(["course"], event(course_id="2107~565"))
        assert found.values["course"]["name"] == "Computer Science I"
    finally:
        await client.close()


async def test_grade_change_and_discussion_events_find_their_submission_and_topic(
    fake: FakeCanvas, store: Store
) -> None:
    fake.submissions[("565", "355", "48")] = {"id": 11086, "score": 5, "user_id": 48}
    fake.topics[("565", "77")] = {"id": 77, "title": "Week 1 questions"}
    client = client_for(fake, store)
    try:
        grade = copy.deepcopy(example("grade_change"))
        found = await client.enrich(["submission", "assignment", "course"], grade)
        assert found.values["submission"]["score"] == 5
        assert found.values["assignment"] is None  # not in the fake: a 404
        assert found.values["course"]["name"] == "Computer Science I"
        entry = copy.deepcopy(example("discussion_entry_created"))
        entry["body"]["discussion_topic_id"] = "77"
        found = await client.enrich(["discussion_topic"], entry)
        assert found.values["discussion_topic"]["title"] == "Week 1 questions"
    finally:
        await client.close()


async def test_the_token_never_follows_a_next_link_to_another_host(
    fake: FakeCanvas, store: Store
) -> None:
    fake.next_origin = "http://127.0.0.2:9"
    client = client_for(fake, store)
    try:
        found = await client.enrich(["teachers"], event(course_id="565"))
        assert found.values["teachers"] is None
        assert "next page on another host" in found.missing["teachers"]
        assert found.unavailable is None  # retrying cannot help
    finally:
        await client.close()


async def test_without_url_the_token_goes_only_to_listed_hosts(store: Store) -> None:
    with pytest.raises(ValueError, match="set url, or hosts"):
        CanvasConfig(token=TOKEN)
    settings = CanvasConfig(token=TOKEN, hosts=["Oxana.instructure.com"])
    client = CanvasClient(settings, store, Metrics())
    try:
        listed = {"metadata": {"hostname": "oxana.instructure.com"}, "body": {"course_id": "5"}}
        assert client.base_url(listed) == "https://oxana.instructure.com"
        evil = {"metadata": {"hostname": "evil.example.com"}, "body": {"course_id": "5"}}
        assert client.base_url(evil) is None
        found = await client.enrich(["course"], evil)
        assert found.values == {"course": None} and found.unavailable is None
        assert found.missing == {"course": "the event's metadata.hostname is not in canvas.hosts"}
        assert client.metrics.totals().get("router_canvas_api_requests_total", 0.0) == 0.0
    finally:
        await client.close()
