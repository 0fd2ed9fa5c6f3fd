"""Issue 18, finding 7: a store that cannot be written (a full disk) makes ``/readyz``
unready, the refused requests do not flood the log, and all is well again once there
is room; nothing answered 202 is lost."""

import contextlib
import logging
import os
import sqlite3
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.http.app import create_app
from router.logs import RepeatFilter
from router.settings import Settings
from tests.conftest import ROOT, example


def test_repeat_filter_lets_one_identical_error_through_per_window() -> None:
    now = [0.0]
    repeat = RepeatFilter(window=10, clock=lambda: now[0])

    def record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("router.ingest", level, __file__, 1, message, None, None)

    assert repeat.filter(record("disk full"))
    assert not any(repeat.filter(record("disk full")) for _ in range(50))
    assert repeat.filter(record("another error"))
    assert repeat.filter(record("disk full", logging.INFO))  # info always passes
    now[0] = 11.0
    later = record("disk full")
    assert repeat.filter(later)
    assert later.repeated == 50  # type: ignore[attr-defined]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, or skip where this machine does not allow mounting one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {done.stderr.decode()}")
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    with contextlib.suppress(OSError), path.open("wb") as fh:
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    with contextlib.suppress(OSError), path.open("ab") as fh:
        while True:
            fh.write(b"\0" * 512)
            fh.flush()


async def test_a_full_disk_is_unready_logged_once_and_recovers(
    small_disk: Path, tmp_path: Path, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            version: 1
            channels:
              quiet: {type: webhook, url: "http://127.0.0.1:9/", log_only: true}
            rules:
              - {name: all, events: ["*"], notify: [quiet]}
            """
        )
    )
    settings = Settings(rules=rules, templates=ROOT / "templates", db=str(small_disk / "r.db"))
    client = await aiohttp_client(create_app(settings))
    assert (await client.post("/events", json=example("course_created"))).status == 202
    assert (await client.get("/readyz")).status == 200
    filler = small_disk / "filler"
    fill(filler)
    repeat = RepeatFilter()
    caplog.handler.addFilter(repeat)
    answers = []
    for n in range(200):
        event = example("course_updated")
        event["body"]["name"] = f"{n} " + "x" * 4000
        answers.append((await client.post("/events", json=event)).status)
        if answers.count(503) >= 20:
            break
    assert answers.count(503) >= 20, answers
    assert set(answers) <= {202, 503}
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert "store writes failing since" in (await ready.json())["error"]
    refused = [r for r in caplog.records if r.getMessage().startswith("events not stored")]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    assert "database or disk is full" in refused[0].getMessage()

    filler.unlink()
    assert (await client.post("/events", json=example("course_completed"))).status == 202
    assert (await client.get("/readyz")).status == 200
    counts = await (await client.get("/readyz")).json()
    assert counts["state"] == "ready"
    await client.close()
    with sqlite3.connect(small_disk / "r.db") as conn:
        [(stored,)] = conn.execute("SELECT count(*) FROM events")
    assert stored == answers.count(202) + 2  # every event answered 202 is there
