"""Issue 18, the attacks as a suite: ``GET /openapi.json`` describes the HTTP API, and
schemathesis, driven by it against a live ``router serve`` (admin API on), finds no
5xx and no answer the document does not describe. Bounded: a few examples per
operation and a time budget."""

import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from router.http.openapi import openapi
from tests.conftest import ROOT, ServiceFactory, webhook_rules
from tests.processes import RouterProcess, free_port

ADMIN_TOKEN = "schemathesis-admin"


@pytest.mark.sqlite_only("the document does not depend on the store")
async def test_openapi_json_lists_every_route(service: ServiceFactory) -> None:
    client = await service(webhook_rules("http://127.0.0.1:9/"), admin_token=ADMIN_TOKEN)
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    document = await resp.json()
    assert document == json.loads(json.dumps(openapi()))
    routes = {
        (route.method.lower(), route.resource.canonical)  # type: ignore[union-attr]
        for route in client.app.router.routes()
        if route.method != "HEAD"
    }
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    assert routes == described


def schemathesis_run(base: str, report: Path, max_examples: int, max_time: int) -> str:
    """Run schemathesis' CLI (in the report's directory: it keeps a database there)."""
    cli = Path(sys.executable).parent / "schemathesis"
    done = subprocess.run(
        [
            str(cli),
            "run",
            f"{base}/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance",
            "--max-examples",
            str(max_examples),
            "--max-time",
            str(max_time),
            "--request-timeout",
            "10",
            "--workers",
            "1",
            "--seed",
            "18",
            "--phases",
            "examples,coverage,fuzzing",
            "-H",
            f"Authorization: Bearer {ADMIN_TOKEN}",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
            "--warnings",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=max_time + 120,
        cwd=report.parent,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output


async def test_schemathesis_finds_no_5xx_and_only_documented_answers(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(webhook_rules("http://127.0.0.1:9/"))
    proc = RouterProcess(
        "schemathesis",
        db=str(tmp_path / "router.db"),
        rules=rules,
        templates=ROOT / "templates",
        workdir=tmp_path,
        port=free_port(),
        log=tmp_path / "router.log",
        env={"ROUTER_ADMIN_TOKEN": ADMIN_TOKEN, "ROUTER_READ_TIMEOUT": "5"},
    )
    try:
        async with aiohttp.ClientSession() as session:
            await proc.wait_healthy(session)
            output = schemathesis_run(proc.base, tmp_path / "report.ndjson", 25, 30)
            async with session.get(f"{proc.base}/healthz") as resp:
                assert resp.status == 200
        assert proc.proc.poll() is None, "router serve died under schemathesis"
        # aiohttp logs each malformed request it answers 400 with a traceback; any other
        # traceback is a crash of ours.
        tracebacks = [
            entry.get("exception", "")
            for line in (tmp_path / "router.log").read_text().splitlines()
            if line.startswith("{") and "exception" in (entry := json.loads(line))
        ]
        assert all("aiohttp.http_exceptions." in trace for trace in tracebacks), tracebacks
        print(output[-1500:])
    finally:
        proc.kill()
