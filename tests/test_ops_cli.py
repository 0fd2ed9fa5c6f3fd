"""``router deliveries`` and ``router dlq``: on a store nobody serves, and on the
store of a running service, SQLite or PostgreSQL (whose dispatcher then picks the
replay up)."""

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from router.cli import cli
from router.outbox import NOT_RENDERED
from router.store import NewDelivery, RoutedEvent
from router.store.sqlite import SqliteStore
from tests.conftest import ServiceFactory, example, webhook_rules
from tests.receiver import WebhookReceiver
from tests.test_metrics import until_metric

ACCESS_TOKEN = "111~sGvKF4Yzr2AqdwShKj7CwwopgwJuMFONBqWu44Upk1F4jgkFvpXc9HY20PCU5r0"
NOW = 1_700_000_000.0


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


async def _fill(path: Path) -> None:
    """Two events: one delivered to `hook`, one whose two deliveries are dead."""
    store = SqliteStore(str(path))
    await store.open()
    events = [
        ("e-created", "course_created", orjson.dumps(example("course_created"))),
        ("e-section", "course_section_created", orjson.dumps(example("course_section_created"))),
    ]
    await store.accept_events(events, dedupe_window=60, now=NOW)
    created, section = await store.claim_events(10, lease=60, now=NOW)
    message = orjson.dumps({"title": "Section created", "text": "see the section"})
    await store.record_routing(
        [
            RoutedEvent(created, [NewDelivery("e-created:all:hook", "all", "hook", b"{}")]),
            RoutedEvent(
                section,
                [
                    NewDelivery("e-section:all:hook", "all", "hook", message, "HTTP 410 Gone"),
                    NewDelivery(
                        "e-section:sections:audit", "sections", "audit", message, "template x"
                    ),
                ],
            ),
        ],
        now=NOW + 1,
    )
    [job] = await store.claim_deliveries("hook", 10, lease=60, now=NOW + 2)
    await store.finish_delivery(job.id, "delivered", attempts=1, now=NOW + 3)
    await store.close()


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "ops.db"
    asyncio.run(_fill(path))
    return str(path)


def test_deliveries_table_and_json(db: str) -> None:
    code, out = run("deliveries", "--db", db)
    assert code == 0, out
    header, *rows = out.splitlines()
    assert header.split() == [
        "ID", "STATE", "ATTEMPTS", "UPDATED", "(UTC)", "EVENT", "RULE", "CHANNEL", "LAST", "ERROR"
    ]  # fmt: skip
    assert len(rows) == 3
    # Aligned: every column starts at the same offset on every line.
    start = header.index("RULE")
    assert {row[start - 2 : start] for row in rows} == {"  "}
    assert rows[0].split()[:2] == ["3", "dead"]
    assert "2023-11-14 22:13:21" in rows[0]

    code, out = run("deliveries", "--db", db, "--json", "--state", "delivered")
    assert code == 0
    [record] = orjson.loads(out)
    assert record["key"] == "e-created:all:hook" and record["attempts"] == 1
    assert record["event_name"] == "course_created"

    code, out = run("deliveries", "--db", db, "--json", "--channel", "audit")
    assert [r["rule"] for r in orjson.loads(out)] == ["sections"]
    code, out = run("deliveries", "--db", db, "--json", "--rule", "all", "--limit", "1")
    assert [r["id"] for r in orjson.loads(out)] == [2]
    code, out = run("deliveries", "--db", db, "--json", "--since", str(NOW + 2))
    assert [r["state"] for r in orjson.loads(out)] == ["delivered"]
    code, out = run("deliveries", "--db", db, "--since", "2d")
    assert (code, out.strip()) == (0, "no deliveries match")
    code, out = run("deliveries", "--db", db, "--since", "whenever")
    assert code == 2 and "--since" in out

    # ROUTER_DB names the store as well as --db does.
    code, out = run("deliveries", "--json", env={"ROUTER_DB": db})
    assert code == 0 and len(orjson.loads(out)) == 3


def test_dlq_list_and_show(db: str) -> None:
    code, out = run("dlq", "list", "--db", db)
    assert code == 0
    _header, *rows = out.splitlines()
    assert [row.split()[0] for row in rows] == ["3", "2"]
    assert "HTTP 410 Gone" in rows[1]
    code, out = run("dlq", "list", "--db", db, "--json", "--channel", "hook")
    [record] = orjson.loads(out)
    assert (record["id"], record["last_error"], record["state"]) == (2, "HTTP 410 Gone", "dead")
    code, out = run("dlq", "list", "--db", db, "--rule", "nope")
    assert (code, out.strip()) == (0, "no dead letters match; the queue holds 2")

    code, out = run("dlq", "show", "2", "--db", db)
    assert code == 0, out
    assert "e-section:all:hook" in out and "HTTP 410 Gone" in out
    assert "message title: Section created" in out
    assert "access_token=***" in out and ACCESS_TOKEN not in out
    code, out = run("dlq", "show", "2", "--db", db, "--json")
    shown = orjson.loads(out)
    assert shown["message"]["text"] == "see the section"
    assert shown["event"]["body"]["name"] == "Winter 2020 Linear Algebra"
    assert ACCESS_TOKEN not in out
    code, out = run("dlq", "show", "1", "--db", db)  # delivered, not a dead letter
    assert code == 1 and "no dead letter 1" in out


async def _fill_raw(path: Path) -> None:
    """One event whose delivery to a raw-event channel (no template) is dead."""
    store = SqliteStore(str(path))
    await store.open()
    event = ("e-raw", "course_created", orjson.dumps(example("course_created")))
    await store.accept_events([event], dedupe_window=60, now=NOW)
    [claimed] = await store.claim_events(1, lease=60, now=NOW)
    dead = NewDelivery("e-raw:all:audit", "all", "audit", NOT_RENDERED, "HTTP 410 Gone")
    await store.record_routing([RoutedEvent(claimed, [dead])], now=NOW + 1)
    await store.close()


def test_dlq_show_of_a_raw_event_channel(tmp_path: Path) -> None:
    path = tmp_path / "raw.db"
    asyncio.run(_fill_raw(path))
    code, out = run("dlq", "show", "1", "--db", str(path))
    assert code == 0, out
    assert "message: the raw event (the channel renders no template)" in out
    assert "message title" not in out


def test_dlq_replay_and_purge(db: str, tmp_path: Path) -> None:
    code, out = run("dlq", "replay", "--db", db)
    assert code == 2 and "say which dead letters" in out
    code, out = run("dlq", "replay", "2", "--db", db)
    assert (code, out.strip()) == (0, "replayed 1 dead letter(s)")
    code, out = run("deliveries", "--db", db, "--json", "--state", "pending")
    [record] = orjson.loads(out)
    assert (record["id"], record["key"], record["attempts"]) == (2, "e-section:all:hook", 0)

    code, out = run("dlq", "purge", "--db", db, "--rule", "nope", "--json")
    assert orjson.loads(out) == {"purged": 0}
    code, out = run("dlq", "purge", "--all", "--db", db)
    assert (code, out.strip()) == (0, "purged 1 dead letter(s)")
    code, out = run("dlq", "list", "--db", db)
    assert (code, out.strip()) == (0, "no dead letters: the dead-letter queue is empty")
    code, out = run("dlq", "list", "--db", db, "--json")
    assert orjson.loads(out) == []
    code, out = run("deliveries", "--db", db, "--json")
    assert sorted(r["state"] for r in orjson.loads(out)) == ["delivered", "pending"]

    code, out = run("dlq", "list", "--db", str(tmp_path / "missing.db"))
    assert code == 1 and "no store at" in out
    assert not (tmp_path / "missing.db").exists()


async def test_replay_from_the_cli_while_the_service_runs(
    service: ServiceFactory, receiver: WebhookReceiver, db_url: str
) -> None:
    receiver.script.append((422, {}))
    client = await service(webhook_rules(receiver.url))
    await client.post("/events", json=example("course_created"))
    await until_metric(client, "router_dead_letters", 1)
    db = db_url

    # Another process's view: the CLI opens the same store while it is served.
    code, out = await asyncio.to_thread(run, "dlq", "list", "--db", db, "--json")
    [dead] = orjson.loads(out)
    started = time.monotonic()
    code, out = await asyncio.to_thread(run, "dlq", "replay", "--all", "--db", db)
    assert (code, out.strip()) == (0, "replayed 1 dead letter(s)")
    [got] = await receiver.wait_for(1, timeout=5)
    assert got.webhook_id == dead["key"]
    assert time.monotonic() - started < 5  # the dispatcher polls about every second
    await until_metric(client, "router_dead_letters", 0)


def test_serve_start_up_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.cli import _startup_summary, _store_label
    from router.http.app import create_app
    from router.settings import Settings
    from tests.conftest import ROOT

    monkeypatch.setenv("AUDIT_WEBHOOK_URL", "https://audit.example.edu/hook?key=s3cr3t-k3y")
    for name in ("SLACK_BOT_TOKEN", "SMTP_HOST"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(
        rules=ROOT / "rules.yaml",
        templates=ROOT / "templates",
        db=str(tmp_path / "router.db"),
        admin_token="start-up-admin-token",
        log_format="text",
        port=9999,
    )
    _startup_summary(settings, create_app(settings))
    out = capsys.readouterr().err
    lines = out.splitlines()
    assert lines[0] == "router 0.1.0 listening on http://127.0.0.1:9999"
    summary = dict(line.strip().split(":", 1) for line in lines[1:])
    summary = {key: value.strip() for key, value in summary.items()}
    assert summary["store"] == f"{tmp_path / 'router.db'} (SQLite, new)"
    assert summary["rules file"].startswith(f"{ROOT / 'rules.yaml'} (5 rules)")
    assert summary["channels"] == "course-slack (slack), registrar (email), audit (webhook)"
    # What runs log-only for lack of credentials, and why; audit has its URL.
    assert summary["log only"] == (
        "course-slack (no Slack token configured), registrar (no SMTP host configured)"
    )
    assert "webhook 0.1.0" in summary["plugins"]
    assert summary["admin api"] == "http://127.0.0.1:9999/-/ (needs ROUTER_ADMIN_TOKEN)"
    assert "status page http://127.0.0.1:9999/ (admin token required)" in summary["operations"]
    assert summary["retention"] == "7d, checked every 5m"
    assert "s3cr3t" not in out and "start-up-admin-token" not in out
    assert _store_label("postgresql://router:pa55@db:5432/router") == (
        "postgresql://router:***@db:5432/router"
    )


def test_commands_never_open_the_store_under_a_replicas_name() -> None:
    from router.cli_ops import _without_replica

    url = "postgresql://postgres@127.0.0.1/test?schema=r&replica=web-1&pool_max=4"
    assert _without_replica(url) == "postgresql://postgres@127.0.0.1/test?schema=r&pool_max=4"
    assert _without_replica("router.db") == "router.db"
