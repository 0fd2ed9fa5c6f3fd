"""Throttles and digests through the real service, with their state surviving a restart."""

import asyncio
import copy
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, ServiceFactory, StoreDB, count_calls, example
from tests.receiver import SECRET, WebhookReceiver


def rules(url: str, rule: str) -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        channels:
          hook: {{type: webhook, url: "{url}", secret: "{SECRET}"}}
        rules:
        """
    ) + textwrap.indent(textwrap.dedent(rule), "  ")


def completed(user: str, course: str) -> dict[str, Any]:
    event = copy.deepcopy(example("course_completed"))
    event["body"]["user"]["id"] = user
    event["body"]["course"]["id"] = course
    return event


def syllabus(course: str, n: int) -> dict[str, Any]:
    event = copy.deepcopy(example("syllabus_updated"))
    event["body"]["course_id"] = course
    event["body"]["syllabus_body"] = f"<p>version {n}</p>"
    return event


def query(store_db: StoreDB, sql: str) -> list[tuple[Any, ...]]:
    return store_db.rows(sql)


async def settle(seconds: float = 0.5) -> None:
    await asyncio.sleep(seconds)


THROTTLE = """\
- name: completions
  events: [course_completed]
  notify: [hook]
  throttle: {key: "{{ body.user.id }}", per: 1h}
"""


async def test_throttle_survives_a_restart(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    client = await service(rules(receiver.url, THROTTLE))
    await client.post("/events", json=completed("123", "1"))
    await receiver.wait_for(1)
    await client.post("/events", json=[completed("123", "2"), completed("456", "3")])
    await receiver.wait_for(2)
    await client.close()

    client = await service(rules(receiver.url, THROTTLE))
    await client.post("/events", json=completed("123", "4"))
    await settle()
    users = [r.body["event"]["body"]["user"]["id"] for r in receiver.received]
    assert users == ["123", "456"]
    assert query(store_db, "SELECT key, suppressed FROM throttles ORDER BY key") == [
        ("completions:123", 2),
        ("completions:456", 0),
    ]


def digest_template(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    (templates / "digest.j2").write_text(
        "{% block title %}{{ count }} changes in {{ group['body.course_id'] }}{% endblock %}"
        "{% block text %}{% for e in events %}{{ e.body.syllabus_body }};{% endfor %}"
        "{% endblock %}"
    )


DIGEST = """\
- name: syllabus-digest
  events: [syllabus_updated]
  notify: [hook]
  digest: {group_by: [body.course_id], wait: 1s, max: 3}
"""


async def test_digest_groups_by_key_and_flushes_on_wait_or_max(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path, store_db: StoreDB
) -> None:
    digest_template(tmp_path)
    client = await service(rules(receiver.url, DIGEST))
    started = time.monotonic()
    await client.post("/events", json=[syllabus("A", 1), syllabus("B", 1), syllabus("A", 2)])
    await client.post("/events", json=[syllabus("C", n) for n in range(3)])  # max reached
    [full] = await receiver.wait_for(1)
    assert time.monotonic() - started < 0.9  # the full group did not wait
    assert full.body["title"] == "3 changes in C"
    got = await receiver.wait_for(3, timeout=5)
    titles = sorted(r.body["title"] for r in got)
    assert titles == ["1 changes in B", "2 changes in A", "3 changes in C"]
    by_title = {r.body["title"]: r.body["text"] for r in got}
    assert by_title["2 changes in A"] == "<p>version 1</p>;<p>version 2</p>;"
    assert query(store_db, "SELECT count(*) FROM digests WHERE state = 'open'") == [(0,)]


async def test_open_digest_survives_a_restart(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path, store_db: StoreDB
) -> None:
    digest_template(tmp_path)
    slow = DIGEST.replace("wait: 1s", "wait: 2s")
    client = await service(rules(receiver.url, slow))
    await client.post("/events", json=syllabus("D", 1))
    await settle(0.3)
    await client.close()
    assert query(store_db, "SELECT group_key, size FROM digests WHERE state = 'open'") == [
        ('{"body.course_id":"D"}', 1)
    ]
    client = await service(rules(receiver.url, slow))
    await client.post("/events", json=syllabus("D", 2))
    [got] = await receiver.wait_for(1, timeout=6)
    assert got.body["title"] == "2 changes in D"
    assert got.webhook_id.startswith("digest-")


async def test_routing_a_trickle_asks_the_store_only_what_can_find_work(
    service: ServiceFactory, receiver: WebhookReceiver
) -> None:
    from router.http.keys import STORE

    every = "- {name: completions, events: [course_completed], notify: [hook]}\n"
    client = await service(rules(receiver.url, every))
    store = client.app[STORE]
    calls = count_calls(store, "claim_events", "claim_due_digests")
    started = time.monotonic()
    for n in range(10):  # one at a time: a routing round each
        await client.post("/events", json=completed(str(n), "1"))
        await receiver.wait_for(n + 1)
    polls = int(time.monotonic() - started) + 1
    # No second, empty claim after each event; due digests looked for once a second.
    assert calls["claim_events"] <= 10 + polls, calls
    assert calls["claim_due_digests"] <= polls, calls
