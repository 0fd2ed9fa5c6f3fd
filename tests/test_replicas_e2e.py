"""Three real ``router serve`` processes on one PostgreSQL schema: flood them round-robin,
SIGKILL one mid-flight, and check that nothing acknowledged was lost or delivered
twice, and that dead letters and replays are one shared queue.

What is promised and checked:

* every event answered 202 (by any replica, before or after the kill) reaches the
  receiver at least once;
* a delivery recorded ``delivered`` in the store when the kill happened arrives
  exactly once: nothing re-sends finished work;
* the survivors keep accepting, routing and delivering while a replica is down; the
  killed replica, restarted under its stable ``replica=`` name, releases the leases
  its previous process held at once (instead of after they expire, 50-60 s), so its
  unfinished work is done within this test's time budget;
* a dead letter is listed (``GET /-/dlq``) by a replica other than the one that
  accepted the event, replayed through a third one, and then delivered;
* SIGTERM is a clean exit (code 0) for every replica.
"""

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from tests.conftest import PG_DSN, ROOT, example, pg_url
from tests.processes import RouterProcess, free_port, unique_event
from tests.processes import tail as tail_of
from tests.receiver import SECRET, WebhookReceiver

REPLICAS = 3
CONCURRENCY = 18  # flooding client tasks, spread round-robin over the live replicas
KILL_AFTER = 300  # accepted events before the SIGKILL...
DELIVERED_BEFORE_KILL = 20  # ...and this many received, and the victim holding leases
AFTER_KILL = 150  # events the survivors accept while the victim is down
RECEIVER_DELAY = 0.02  # a slow receiver: deliveries are in flight at the kill
PHASE_TIMEOUT = 15.0
RECOVERY_TIMEOUT = 20.0  # well under the leases (60 s events, 50 s deliveries here)
TOKEN = "replicas-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}

RULES = """\
version: 1
channels:
  hook: {{type: webhook, url: "{hook}", secret: "{secret}", timeout: 5}}
  gate: {{type: webhook, url: "{gate}", secret: "{secret}", timeout: 5}}
rules:
  - name: completions
    events: [course_completed]
    notify: [hook]
  - name: created
    events: [course_created]
    notify: [gate]
"""


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, headers=ADMIN) as resp:
        assert resp.status == 200, f"GET {url}: {resp.status} {await resp.text()}"
        return await resp.json()


@pytest.mark.timeout(90)
async def test_three_replicas_survive_a_sigkill_and_share_dead_letters(
    pg_test_schema: str, tmp_path: Path
) -> None:
    started_test = time.monotonic()
    hook, gate = WebhookReceiver(), WebhookReceiver()
    runners = [await hook.start(), await gate.start()]
    (tmp_path / "rules.yaml").write_text(RULES.format(hook=hook.url, gate=gate.url, secret=SECRET))
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    names = [f"r{n + 1}" for n in range(REPLICAS)]
    ports = {name: free_port() for name in names}
    logs: list[Path] = []
    procs: list[RouterProcess] = []

    def start(name: str, run: int) -> RouterProcess:
        log = tmp_path / f"{name}-{run}.log"
        logs.append(log)
        replica = RouterProcess(
            name,
            db=pg_url(pg_test_schema, replica=name),
            rules=tmp_path / "rules.yaml",
            templates=tmp_path / "templates",
            workdir=tmp_path,
            port=ports[name],
            log=log,
            env={"ROUTER_ADMIN_TOKEN": TOKEN, "ROUTER_RELOAD_POLL": "0"},
        )
        procs.append(replica)
        return replica

    def tail() -> str:
        return tail_of(*logs)

    # The test's own view of the store: a plain connection to the schema.
    db = await asyncpg.connect(PG_DSN, server_settings={"search_path": pg_test_schema})

    base = example("course_completed")
    sent: dict[str, dict[str, Any]] = {}
    accepted: list[str] = []
    unexpected: list[str] = []
    stop_flood = asyncio.Event()
    counter = iter(range(1_000_000))
    try:
        live = [start(name, 1) for name in names]
        victim = live[-1]
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY * 2),
            timeout=aiohttp.ClientTimeout(total=10),
        ) as session:
            await asyncio.gather(*(replica.wait_healthy(session) for replica in live))
            hook.delay = RECEIVER_DELAY

            # -- phase 1: flood all three, round-robin ---------------------------------
            async def flood(worker: int) -> None:
                round_ = 0
                while not stop_flood.is_set():
                    round_ += 1
                    targets = list(live)
                    target = targets[(worker + round_) % len(targets)]
                    size = 1 if (worker + round_) % 3 else 2 + (worker + round_) % 4
                    events = [unique_event(next(counter), base, 300_000) for _ in range(size)]
                    body: Any = events[0] if size == 1 and worker % 2 else events
                    try:
                        async with session.post(
                            f"{target.base}/events",
                            data=orjson.dumps(body),
                            headers={"Content-Type": "application/json"},
                        ) as resp:
                            text = await resp.text()
                            if resp.status != 202:
                                unexpected.append(f"{target.name} {resp.status}: {text[:200]}")
                                continue
                            answers = orjson.loads(text)["accepted"]
                    except (aiohttp.ClientError, TimeoutError, ValueError):
                        # In flight to the killed replica: never acknowledged, never
                        # promised. Any other failure is a failure.
                        if target.proc.poll() is not None:
                            continue
                        raise
                    for event, answer in zip(events, answers, strict=True):
                        assert not answer["duplicate"], answer
                        sent[answer["id"]] = event
                        accepted.append(answer["id"])

            async def victim_holds_leases() -> int:
                return await db.fetchval(
                    "SELECT (SELECT count(*) FROM events WHERE state = 'pending'"
                    " AND leased_by = $1) + (SELECT count(*) FROM deliveries"
                    " WHERE state = 'pending' AND leased_by = $1)",
                    victim.name,
                )

            async def until(condition: Any, what: str) -> None:
                deadline = time.monotonic() + PHASE_TIMEOUT
                while not await condition():
                    flood_broke = not stop_flood.is_set() and any(t.done() for t in tasks)
                    if time.monotonic() > deadline or flood_broke:
                        stop_flood.set()
                        results = await asyncio.gather(*tasks, return_exceptions=True)
                        pytest.fail(
                            f"{what}: not reached ({len(accepted)} accepted,"
                            f" {len(hook.received)} received) {[r for r in results if r]!r}"
                            f" {unexpected[:3]}\n{tail()}"
                        )
                    await asyncio.sleep(0.01)

            async def kill_point() -> bool:
                return (
                    len(accepted) >= KILL_AFTER
                    and len(hook.received) >= DELIVERED_BEFORE_KILL
                    and await victim_holds_leases() > 0
                )

            flood_started = time.monotonic()
            tasks = [asyncio.create_task(flood(n)) for n in range(CONCURRENCY)]
            await until(kill_point, "kill point")

            # -- the kill -------------------------------------------------------------
            live.remove(victim)
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(timeout=10)
            # A statement the victim sent just before dying still runs (and commits) on
            # its server session: count its leases once those sessions are gone.
            deadline = time.monotonic() + PHASE_TIMEOUT
            while await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                f"router {victim.name}",
            ):
                assert time.monotonic() < deadline, "the victim's sessions outlived it"
                await asyncio.sleep(0.01)
            at_kill = len(accepted)
            held = await victim_holds_leases()
            delivered_at_kill = {
                row[0]
                for row in await db.fetch("SELECT key FROM deliveries WHERE state = 'delivered'")
            }
            stored_at_kill = {row[0] for row in await db.fetch("SELECT id FROM events")}
            received_at_kill = Counter(r.webhook_id for r in hook.received)
            not_received = [key for key in delivered_at_kill if key not in received_at_kill]
            assert not not_received, f"recorded delivered, never received: {not_received[:5]}"
            assert held > 0, "the victim held no leases: the test proves nothing"

            # -- phase 2: the survivors carry on ---------------------------------------
            async def survivors_accepted() -> bool:
                return len(accepted) >= at_kill + AFTER_KILL

            await until(survivors_accepted, "accepting on the survivors")
            stop_flood.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            flood_seconds = time.monotonic() - flood_started
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, f"flood task failed: {errors!r}\n{tail()}"
            assert not unexpected, f"non-202 answers: {unexpected[:5]}\n{tail()}"
            assert len(set(accepted)) == len(accepted), "two accepted events share an id"
            accepted_ids = set(accepted)

            # The survivors finish everything but what the victim holds: its leases are
            # not taken over early (that would be double work while it might still run).
            async def survivors_idle() -> bool:
                return not await db.fetchval(
                    "SELECT (SELECT count(*) FROM events WHERE state = 'pending'"
                    " AND leased_by IS DISTINCT FROM $1) + (SELECT count(*) FROM deliveries"
                    " WHERE state = 'pending' AND leased_by IS DISTINCT FROM $1)",
                    victim.name,
                )

            await until(survivors_idle, "the survivors finishing their work")
            assert await victim_holds_leases() == held
            arrived = {r.webhook_id.split(":")[0] for r in hook.received}
            stored_later = accepted_ids - stored_at_kill  # the victim never saw these
            assert stored_later, "nothing was accepted after the kill"
            assert stored_later <= arrived, "the survivors left events undelivered"

            # -- restart the victim under its stable name: its leases are released ------
            restarted = start(victim.name, 2)
            await restarted.wait_healthy(session)
            live.append(restarted)
            restarted_at = time.monotonic()
            while lost := accepted_ids - {r.webhook_id.split(":")[0] for r in hook.received}:
                if time.monotonic() - restarted_at > RECOVERY_TIMEOUT:
                    pytest.fail(
                        f"{len(lost)} of {len(accepted_ids)} accepted events never reached"
                        f" the receiver, e.g. {sorted(lost)[:3]}\n{tail()}"
                    )
                await asyncio.sleep(0.05)
            recovered_in = time.monotonic() - restarted_at
            # Quiesce on every replica (the counts are the shared schema's).
            for replica in live:
                while True:
                    async with session.get(f"{replica.base}/readyz") as resp:
                        ready = await resp.json()
                    if (ready.get("events_pending"), ready.get("deliveries_pending")) == (0, 0):
                        break
                    if time.monotonic() - restarted_at > RECOVERY_TIMEOUT:
                        pytest.fail(f"{replica.name} never went idle: {ready}\n{tail()}")
                    await asyncio.sleep(0.05)
                assert ready.get("dead_letters") == 0, f"{ready}\n{tail()}"
            assert "released leases of a previous run" in restarted.log.read_text(), tail()

            counts = Counter(r.webhook_id for r in hook.received)
            repeated = {key: counts[key] for key in delivered_at_kill if counts[key] != 1}
            assert not repeated, (
                f"{len(repeated)} deliveries recorded 'delivered' at the kill arrived again,"
                f" e.g. {list(repeated.items())[:5]}\n{tail()}"
            )
            assert not hook.rejected, hook.rejected[:5]
            redelivered = sum(1 for n in counts.values() if n > 1)
            # Only what the victim was sending when it died may arrive twice.
            assert redelivered <= held, (redelivered, held)

            # -- dead letters are shared: accepted by r1, listed by r2, replayed by r3 --
            r1, r2, r3 = sorted(live, key=lambda replica: replica.name)
            gate.script.append((422, {}))
            async with session.post(f"{r1.base}/events", json=example("course_created")) as resp:
                assert resp.status == 202, await resp.text()
                [answer] = (await resp.json())["accepted"]
            deadline = time.monotonic() + 10
            while not (dlq := await _get_json(session, f"{r2.base}/-/dlq"))["dead_letters"]:
                assert time.monotonic() < deadline, f"no dead letter on {r2.name}\n{tail()}"
                await asyncio.sleep(0.05)
            [dead] = dlq["dead_letters"]
            assert dlq["total"] == 1
            assert (dead["event_id"], dead["rule"], dead["channel"]) == (
                answer["id"],
                "created",
                "gate",
            )
            assert dead["attempts"] == 1 and dead["last_error"].startswith("HTTP 422"), dead
            detail = await _get_json(session, f"{r3.base}/-/dlq/{dead['id']}")
            assert detail["event"]["metadata"]["event_name"] == "course_created"
            async with session.post(
                f"{r3.base}/-/dlq/replay", json={"ids": [dead["id"]]}, headers=ADMIN
            ) as resp:
                assert (resp.status, await resp.json()) == (200, {"replayed": 1})
            [got] = await gate.wait_for(1, timeout=10)
            assert got.webhook_id == dead["key"] == f"{answer['id']}:created:gate"
            deadline = time.monotonic() + 10
            while True:
                found = await _get_json(session, f"{r1.base}/-/deliveries?rule=created")
                if [d["state"] for d in found["deliveries"]] == ["delivered"]:
                    break
                assert time.monotonic() < deadline, f"{found}\n{tail()}"
                await asyncio.sleep(0.05)
            for replica in live:
                assert (await _get_json(session, f"{replica.base}/-/dlq"))["total"] == 0

        # -- clean shutdown -----------------------------------------------------------
        for replica in live:
            replica.proc.send_signal(signal.SIGTERM)
        for replica in live:
            try:
                code = await asyncio.to_thread(replica.proc.wait, 15)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{replica.name} did not exit within 15s of SIGTERM\n{tail()}")
            assert code == 0, f"{replica.name} exited with {code} after SIGTERM\n{tail()}"
        print(
            f"flood {flood_seconds:.2f}s accepted={len(accepted)} (at kill {at_kill})"
            f" victim-leases-at-kill={held} delivered-at-kill={len(delivered_at_kill)}"
            f" recovered-in={recovered_in:.2f}s received={len(hook.received)}"
            f" redelivered={redelivered} total={time.monotonic() - started_test:.1f}s"
        )
    finally:
        for replica in procs:
            replica.kill()
        await db.close()
        for runner in runners:
            await runner.cleanup()
