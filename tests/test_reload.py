"""Hot reload: POST /-/reload, file changes and SIGHUP; a bad file keeps the old rules."""

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceFactory, example, webhook_rules
from tests.receiver import WebhookReceiver

ADMIN = {"Authorization": "Bearer admin-s3cret"}


def two_rules(url: str) -> str:
    return (
        webhook_rules(url).replace('    events: ["*"]', "    events: [course_created]")
        + "  - {name: updates, events: [course_updated], notify: [hook]}\n"
    )


async def test_post_reload_swaps_rules(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    client = await service(two_rules(receiver.url), admin_token="admin-s3cret", reload_poll=0)
    await client.post("/events", json=example("course_updated"))
    [first] = await receiver.wait_for(1)
    assert first.body["rule"] == "updates"

    rules = tmp_path / "rules.yaml"
    rules.write_text(rules.read_text().replace("name: updates", "name: renamed-updates"))
    assert (await client.post("/-/reload")).status == 401
    resp = await client.post("/-/reload", headers=ADMIN)
    assert resp.status == 200
    assert (await resp.json())["ok"] is True
    event = example("course_updated")
    event["body"]["name"] = "Linear Algebra II"
    await client.post("/events", json=event)
    received = await receiver.wait_for(2)
    assert received[1].body["rule"] == "renamed-updates"


async def test_bad_file_keeps_old_rules_and_shows_errors(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    client = await service(two_rules(receiver.url), admin_token="admin-s3cret", reload_poll=0)
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules.read_text().replace("notify: [hook]}", "notify: [hok]}"))
    resp = await client.post("/-/reload", headers=ADMIN)
    assert resp.status == 422
    errors = (await resp.json())["errors"]
    assert len(errors) == 1
    assert errors[0].endswith("rules[1].notify[0]: unknown channel 'hok' (did you mean 'hook'?)")
    ready = await (await client.get("/readyz")).json()
    assert ready["rules_reload"]["ok"] is False
    assert ready["rules_reload"]["errors"] == errors
    await client.post("/events", json=example("course_updated"))
    [got] = await receiver.wait_for(1)
    assert got.body["rule"] == "updates"  # the old rules kept running


async def test_a_reload_naming_an_unknown_channel_type_says_plugins_need_a_restart(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    client = await service(two_rules(receiver.url), admin_token="admin-s3cret", reload_poll=0)
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules.read_text().replace("type: webhook", "type: mattermost-ng"))
    resp = await client.post("/-/reload", headers=ADMIN)
    assert resp.status == 422
    [error] = (await resp.json())["errors"]
    assert "channels.hook.type: unknown channel type 'mattermost-ng'" in error
    assert error.endswith(
        "; plugins are loaded when the router starts: if you installed the plugin since,"
        " restart the router (a reload does not load plugins)"
    )


async def test_a_likely_typo_in_an_event_name_is_a_warning_not_an_error(
    service: ServiceFactory,
    receiver: WebhookReceiver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await service(two_rules(receiver.url), admin_token="admin-s3cret", reload_poll=0)
    assert (await (await client.get("/readyz")).json())["rules_reload"]["warnings"] == []
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules.read_text().replace("[course_updated]", "[course_updatd]"))
    resp = await client.post("/-/reload", headers=ADMIN)
    assert resp.status == 200  # reloaded: any event name may arrive
    [warning] = (await resp.json())["warnings"]
    assert warning == (
        f"{rules}:13:30: rules[1].events[0]: 'course_updatd' is not a Canvas event"
        " (did you mean 'course_updated'?); the rule fires only for events named exactly so"
    )
    assert (await (await client.get("/readyz")).json())["rules_reload"]["warnings"] == [warning]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"rules file: {warning}"
    ]


async def test_admin_api_is_off_without_a_token(service: ServiceFactory) -> None:
    client = await service(webhook_rules("", secret=None))
    assert (await client.post("/-/reload")).status == 404


async def test_file_change_reloads(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    client = await service(two_rules(receiver.url), reload_poll=0.1)
    rules = tmp_path / "rules.yaml"
    await asyncio.sleep(0.3)
    rules.write_text(rules.read_text().replace("name: updates", "name: watched"))
    for _ in range(50):
        ready = await (await client.get("/readyz")).json()
        if ready["rules_reload"]["trigger"] == "file change":
            break
        await asyncio.sleep(0.1)
    assert ready["rules_reload"] == {
        "ok": True,
        "at": ready["rules_reload"]["at"],
        "trigger": "file change",
        "errors": [],
        "warnings": [],
    }
    await client.post("/events", json=example("course_updated"))
    [got] = await receiver.wait_for(1)
    assert got.body["rule"] == "watched"


async def test_sighup_reloads(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    client = await service(two_rules(receiver.url), reload_poll=0)
    # The service installed its handler; without it SIGHUP would end the test run.
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules.read_text().replace("name: updates", "name: hupped"))
    os.kill(os.getpid(), signal.SIGHUP)
    for _ in range(50):
        ready = await (await client.get("/readyz")).json()
        if ready["rules_reload"]["trigger"] == "SIGHUP":
            break
        await asyncio.sleep(0.05)
    assert ready["rules_reload"]["ok"] is True
    await client.post("/events", json=example("course_updated"))
    [got] = await receiver.wait_for(1)
    assert got.body["rule"] == "hupped"


def kubelet_update(directory: Path, name: str, content: str, mtime: float) -> None:
    """What the kubelet does to a ConfigMap volume: write the files into a new hidden
    directory, point ``..data`` at it with one rename, drop the old directory; each
    visible name is a symlink through ``..data``."""
    version = directory / f"..{time.time_ns()}"
    version.mkdir()
    (version / name).write_text(content)
    os.utime(version / name, (mtime, mtime))
    old = os.path.realpath(directory / "..data") if (directory / "..data").exists() else None
    (directory / "..data_tmp").symlink_to(version.name)
    os.replace(directory / "..data_tmp", directory / "..data")
    if not (directory / name).is_symlink():
        (directory / "link_tmp").symlink_to(f"..data/{name}")
        os.replace(directory / "link_tmp", directory / name)
    if old:
        shutil.rmtree(old)


async def test_a_configmap_update_reloads(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    client = await service(two_rules(receiver.url), reload_poll=0.1)
    rules = tmp_path / "rules.yaml"
    text, mtime = rules.read_text(), rules.stat().st_mtime

    async def reloaded(after: float | None, within: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            status = (await (await client.get("/readyz")).json())["rules_reload"]
            if status["at"] is not None and status["at"] != after:
                return status
            await asyncio.sleep(0.05)
        return None

    # The same file behind the ConfigMap's symlinks, swapped in again until a reload
    # shows the watcher has its first look (it takes it as the service starts). Each
    # swap keeps size and mtime: only the symlink swap tells.
    first = None
    for _ in range(20):
        kubelet_update(tmp_path, "rules.yaml", text, mtime)
        if first := await reloaded(None, within=1.0):
            break
    assert first is not None, "no reload after a ConfigMap update"
    kubelet_update(tmp_path, "rules.yaml", text.replace("name: updates", "name: renamed"), mtime)
    # A reload of an earlier swap may still land first: wait for the new rules to show.
    deadline = time.monotonic() + 10.0
    while "renamed" not in await (await client.get("/")).text():
        assert time.monotonic() < deadline, "the updated rules never loaded"
        await asyncio.sleep(0.05)
    status = (await (await client.get("/readyz")).json())["rules_reload"]
    assert status["ok"] and status["trigger"] == "file change"
    await client.post("/events", json=example("course_updated"))
    [got] = await receiver.wait_for(1)
    assert got.body["rule"] == "renamed"
