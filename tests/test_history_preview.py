"""Rules tried on history: ``router test rules.yaml --db ... --since 1d [--diff]``
over a store filled by a real ``router serve`` process, run while that server still
runs on the same SQLite file; nothing in the store changes. And the status page's
preview of the loaded rules over the last day."""

import asyncio
import hashlib
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import orjson

from tests.conftest import ROOT, ServiceFactory, example
from tests.processes import RouterProcess, free_port, tail

CURRENT = textwrap.dedent(
    """\
    version: 1
    channels:
      hook: {type: webhook, url: "http://127.0.0.1:9/hook", log_only: true}
      audit: {type: webhook, url: "http://127.0.0.1:9/audit", log_only: true}
    rules:
      - name: sections
        events: [course_section_created]
        notify: [hook]
        throttle: {key: "{{ body.course_id }}", per: 1h}
      - name: completed
        events: [course_completed]
        notify: [hook, audit]
    """
)
# The rules to try: sections not throttled any more, completed only to audit, and a
# new rule for every course event.
NEW = textwrap.dedent(
    """\
    version: 1
    channels:
      hook: {type: webhook, url: "http://127.0.0.1:9/hook", log_only: true}
      audit: {type: webhook, url: "http://127.0.0.1:9/audit", log_only: true}
    rules:
      - name: sections
        events: [course_section_created]
        notify: [hook]
      - name: completed
        events: [course_completed]
        notify: [audit]
      - name: everything
        events: ["course_*"]
        notify: [audit]
    """
)


def variant(name: str, n: int) -> dict:
    event = example(name)
    event["metadata"]["request_id"] = f"history-{n}"
    return event


def store_digest(path: Path) -> str:
    """A fingerprint of every row the store holds (read with a connection of its own)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = []
        for table in ("events", "event_payloads", "deliveries", "throttles", "snapshots"):
            rows.append(conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall())
        return hashlib.sha256(repr(rows).encode()).hexdigest()
    finally:
        conn.close()


def router_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


async def test_preview_and_diff_on_the_store_of_a_running_server(tmp_path: Path) -> None:
    current, new = tmp_path / "current.yaml", tmp_path / "new.yaml"
    current.write_text(CURRENT)
    new.write_text(NEW)
    db = tmp_path / "router.db"
    server = RouterProcess(
        "serve",
        db=str(db),
        rules=current,
        templates=ROOT / "templates",
        workdir=tmp_path,
        port=free_port(),
        log=tmp_path / "serve.log",
    )
    try:
        async with aiohttp.ClientSession() as session:
            await server.wait_healthy(session)
            events = [variant("course_section_created", n) for n in range(3)]
            events += [variant("course_completed", n) for n in range(2)]
            for event in events:
                async with session.post(f"{server.base}/events", json=event) as resp:
                    assert resp.status == 202
            deadline = time.monotonic() + 10
            while True:  # routed and logged
                ready = await server.ready(session)
                if ready["events_pending"] == 0 and ready["deliveries_pending"] == 0:
                    break
                assert time.monotonic() < deadline, ready
                await asyncio.sleep(0.1)
            before = store_digest(db)

            done = await asyncio.to_thread(
                router_cli, "test", str(current), "--db", str(db), "--since", "1d", "--json",
                "--templates", str(ROOT / "templates"),
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            same = orjson.loads(done.stdout)
            # The preview of the rules in force counts what the server really did.
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            real = conn.execute(
                "SELECT rule, channel, count(*) FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2"
            ).fetchall()
            conn.close()
            assert [(r["rule"], r["channel"], r["count"]) for r in same["sent"]] == real
            assert real == [
                ("completed", "audit", 2),
                ("completed", "hook", 2),
                ("sections", "hook", 1),
            ]
            assert same["throttled"] == [{"rule": "sections", "channel": "hook", "count": 2}]
            assert same["events"] == 5

            done = await asyncio.to_thread(
                router_cli, "test", str(new), "--db", str(db), "--since", "1d", "--diff",
                str(current), "--show", "1", "--templates", str(ROOT / "templates"),
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert lines[0].startswith("5 event(s) stored since")
            table = [line.split() for line in lines[1:6]]
            assert table == [
                ["RULE", "CHANNEL", "IN", "FORCE", "NEW", "CHANGE"],
                ["completed", "audit", "2", "2", "+0"],
                ["completed", "hook", "2", "0", "-2"],
                ["everything", "audit", "0", "5", "+5"],
                ["sections", "hook", "1", "3", "+2"],
            ]
            assert "course_section_created sections -> hook" in done.stdout  # --show 1
            assert "  title: " in done.stdout

            # Read only: the store is as it was, and the server still works.
            assert store_digest(db) == before
            async with session.post(
                f"{server.base}/events", json=variant("course_completed", 9)
            ) as resp:
                assert resp.status == 202
            assert (await server.ready(session))["state"] == "ready"
    finally:
        server.kill()
    assert "Traceback" not in (tmp_path / "serve.log").read_text(), tail(tmp_path / "serve.log")


async def test_status_page_previews_the_loaded_rules_over_the_last_day(
    service: ServiceFactory,
) -> None:
    client = await service(CURRENT)
    for n in range(3):
        await client.post("/events", json=variant("course_section_created", n))
    await client.post("/events", json=variant("course_completed", 1))
    deadline = time.monotonic() + 10
    while True:
        html = await (await client.get("/")).text()
        if "(4 stored event(s)" in html:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    section = html[html.index('<section id="preview">') : html.index('<section id="events">')]
    cells = [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in row.split("</td>")[:-1]]
        for row in section.split("<tr>")[2:]
    ]
    assert cells == [
        ["completed", "audit", "1", "0", "0"],
        ["completed", "hook", "1", "0", "0"],
        ["sections", "hook", "1", "2", "0"],
    ]
