"""Issue 18, finding 6: credentials in JSON fields (``"access_token": "..."``) are
masked wherever events are shown: ``GET /-/dlq/{id}``, ``router dlq show --json`` and
the logs; the list of field names is extendable with ``defaults.redact_keys``."""

import asyncio
import logging
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from router.cli import cli
from router.logs import RedactingFilter
from router.redact import MASK, REDACT_KEYS, Redactor
from tests.conftest import ROOT, ServiceFactory, StoreDB

ADMIN = {"Authorization": "Bearer admin-s3cret"}
TOKEN = "7~Zx9kQ2mP4vB8nR1tY6uW3eS5dF0gH"


def test_fields_named_like_credentials_are_masked_whole() -> None:
    redact = Redactor(keys=["sis_secret"])
    event = {
        "metadata": {"event_name": "x", "Authorization": f"Bearer {TOKEN}"},
        "body": {
            "access_token": TOKEN,
            "nested": [{"PASSWORD": 1234}, {"api_key": {"a": "b"}}, {"token": None}],
            "sis_secret": "abc",
            "url": f"https://canvas.example/api?access_token={TOKEN}&x=1",
            "name": "token",  # a value, not a field name
        },
    }
    assert redact.tree(event) == {
        "metadata": {"event_name": "x", "Authorization": MASK},
        "body": {
            "access_token": MASK,
            "nested": [{"PASSWORD": MASK}, {"api_key": MASK}, {"token": None}],
            "sis_secret": MASK,
            "url": f"https://canvas.example/api?access_token={MASK}&x=1",
            "name": "token",
        },
    }
    assert {"access_token", "token", "password", "secret", "authorization", "api_key"} <= (
        REDACT_KEYS
    )
    assert Redactor().tree({"sis_secret": "abc"}) == {"sis_secret": "abc"}


def test_log_records_mask_credential_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "would send", None, None)
    record.event = {"body": {"access_token": TOKEN, "n": 1}}  # type: ignore[attr-defined]
    RedactingFilter(Redactor()).filter(record)
    assert record.event == {"body": {"access_token": MASK, "n": 1}}  # type: ignore[attr-defined]


RULES = """\
version: 1
defaults:
  redact_keys: [sis_secret]
channels:
  hook: {type: webhook, url: "http://127.0.0.1:9/"}
rules:
  - name: all
    events: [secretive]
    notify: [hook]
"""


def secretive() -> dict[str, Any]:
    return {
        "metadata": {"event_name": "secretive"},
        "body": {"access_token": TOKEN, "sis_secret": "s3cr3t-sis", "user": {"password": "pw1"}},
    }


async def dead_letter(service: ServiceFactory, tmp_path: Path, store_db: StoreDB) -> Any:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "default.j2").write_text("{{ body.missing.field }}\n")  # born dead
    client = await service(RULES, admin_token="admin-s3cret")
    assert (await client.post("/events", json=secretive())).status == 202
    deadline = time.monotonic() + 10
    while not (dead := store_db.dicts("SELECT id FROM deliveries WHERE state = 'dead'")):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    return client, dead[0]["id"]


def assert_masked(text: str, shown: dict[str, Any]) -> None:
    assert shown["body"] == {"access_token": MASK, "sis_secret": MASK, "user": {"password": MASK}}
    for secret in (TOKEN, "s3cr3t-sis", "pw1"):
        assert secret not in text


async def test_the_admin_api_masks_credential_fields(
    service: ServiceFactory, tmp_path: Path, store_db: StoreDB
) -> None:
    client, dead_id = await dead_letter(service, tmp_path, store_db)
    resp = await client.get(f"/-/dlq/{dead_id}", headers=ADMIN)
    assert resp.status == 200
    text = await resp.text()
    assert_masked(text, orjson.loads(text)["event"])


async def test_router_dlq_show_masks_credential_fields(
    service: ServiceFactory, tmp_path: Path, store_db: StoreDB, db_url: str
) -> None:
    _, dead_id = await dead_letter(service, tmp_path, store_db)
    env = {
        "ROUTER_RULES": str(tmp_path / "rules.yaml"),
        "ROUTER_TEMPLATES": str(ROOT / "templates"),
    }

    def show() -> Any:
        args = ["dlq", "show", str(dead_id), "--db", db_url, "--json"]
        return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)

    result = await asyncio.to_thread(show)
    assert result.exit_code == 0, result.output
    assert_masked(result.output, orjson.loads(result.output)["event"])


def test_redact_keys_is_a_list_of_names(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES.replace("[sis_secret]", "sis_secret"))
    result = CliRunner().invoke(cli, ["validate", str(rules)])
    assert result.exit_code != 0
    assert "defaults.redact_keys" in result.output
    rules.write_text(textwrap.dedent(RULES))
    assert CliRunner().invoke(cli, ["validate", str(rules)]).exit_code == 0
