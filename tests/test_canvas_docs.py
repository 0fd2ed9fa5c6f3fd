"""docs/canvas.md is kept honest: its rules files validate, its IAM policy grants what
the SQS source calls, its Caliper table is the code's, and its curl command works."""

import asyncio
import json
import os
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from router.caliper import CALIPER_NAMES
from router.cli import cli
from router.redact import Redactor
from router.testing import run_router

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "canvas.md"
SQS_PLUGIN = ROOT / "plugins" / "router_sqs" / "__init__.py"


def blocks(language: str) -> list[str]:
    """Fenced blocks of one language, indented ones (inside list items) included."""
    found = re.finditer(r"^( *)```(\w*)\n(.*?)^\1```", DOC.read_text(), re.S | re.M)
    return [textwrap.dedent(m[3]) for m in found if m[2] == language]


@pytest.mark.parametrize("index", range(len(blocks("yaml"))))
def test_yaml_examples_validate(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "CANVAS_SQS_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/canvas-live-events-x"
    )
    monkeypatch.setenv("OPS_WEBHOOK_URL", "https://hooks.example.edu/ops")
    path = tmp_path / "rules.yaml"
    path.write_text(blocks("yaml")[index])
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_iam_policy_grants_what_the_sqs_source_calls() -> None:
    calls = set(re.findall(r"client\.(\w+)\(", SQS_PLUGIN.read_text()))
    # The batch calls need the single message permission (AWS SQS API reference).
    needed = {
        "receive_message": "sqs:ReceiveMessage",
        "delete_message_batch": "sqs:DeleteMessage",
        "change_message_visibility_batch": "sqs:ChangeMessageVisibility",
    }
    assert calls == set(needed)
    policies = [json.loads(block) for block in blocks("json") if '"Statement"' in block]
    [router_policy] = [p for p in policies if "sqs:ReceiveMessage" in json.dumps(p)]
    [statement] = router_policy["Statement"]
    assert set(statement["Action"]) == set(needed.values())
    [canvas_policy] = [p for p in policies if "sqs:SendMessage" in json.dumps(p)]
    [statement] = canvas_policy["Statement"]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::636161780776:root"}
    assert statement["Resource"].split(":")[-1].startswith("canvas-live-events")


def test_caliper_table_is_the_code_table() -> None:
    rows = re.findall(
        r"^\| (\w+) \| (\w+) \| (\w+) \| ([^|]+) \| ([^|]+) \|$", DOC.read_text(), re.M
    )
    documented = {}
    for name, kind_of, action, object_type, kind in rows:
        if "with `state`" in kind:
            continue  # enrollment_state_*: told apart from enrollment_* by a field
        key = (
            kind_of,
            action,
            None if object_type.strip() == "(any)" else object_type.strip(),
            None if kind.strip() == "(any)" else kind.strip(),
        )
        documented[key] = name
    assert documented == CALIPER_NAMES


def test_caliper_envelope_example_is_an_envelope() -> None:
    [envelope] = [json.loads(b) for b in blocks("json") if '"sensor"' in b]
    assert set(envelope) == {"sensor", "sendTime", "dataVersion", "data"}


async def test_curl_example_posts_with_the_token_in_the_path() -> None:
    [shell] = blocks("shell")
    token = "path-token-0123456789"
    rules = """
        version: 1
        channels:
          log: {type: webhook, url: "", log_only: true}
        rules:
          - {name: everything, events: ["*"], notify: [log]}
    """
    async with run_router(rules, ingest_token=token) as router:
        base = str(router.client.make_url("")).rstrip("/")
        command = shell.replace("http://127.0.0.1:8080", base)

        async def run(value: str) -> str:
            process = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                command.rstrip() + ' -w " HTTP %{http_code}"',
                env={**os.environ, "ROUTER_INGEST_TOKEN": value},
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await process.communicate()
            return out.decode()

        accepted = await run(token)
        refused = await run("wrong-token")
        [delivery] = await router.wait_until_settled()
    assert accepted.endswith("HTTP 202") and '"duplicate":false' in accepted
    assert refused.endswith("HTTP 401")
    assert delivery.event_name == "course_created"
    assert Redactor()(f"POST /events/{token} 202") == "POST /events/*** 202"
