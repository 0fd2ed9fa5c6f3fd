"""A real crash: flood a ``router serve`` process, SIGKILL it mid-flight, restart it on
the same store and check that nothing acknowledged was lost or delivered twice.

What is promised and checked:

* every event answered 202 before the kill is in the store and reaches the receiver
  after the restart (at least once);
* a delivery recorded ``delivered`` before the kill is never sent again;
* Canvas retrying an already-accepted event gets 202 ``duplicate: true`` and
  causes no new delivery;
* SIGTERM after all that is a clean exit (code 0).
"""

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import ROOT, example, webhook_rules
from tests.processes import RouterProcess, free_port, unique_event
from tests.processes import tail as tail_of
from tests.receiver import WebhookReceiver

CONCURRENCY = 16  # flooding client tasks
KILL_AFTER = 300  # accepted events before the SIGKILL
DELIVERED_BEFORE_KILL = 10  # and this many received (so some are recorded delivered)
RECEIVER_DELAY = 0.02  # slow receiver: deliveries are still pending at the kill
RECOVERY_TIMEOUT = 60.0
RESEND_SAMPLE = 50


def _store_snapshot(db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    try:
        event_ids = {row[0] for row in conn.execute("SELECT id FROM events")}
        unrouted = conn.execute("SELECT count(*) FROM events WHERE state = 'pending'").fetchone()[0]
        states = Counter(row[0] for row in conn.execute("SELECT state FROM deliveries"))
        delivered = {
            row[0] for row in conn.execute("SELECT key FROM deliveries WHERE state = 'delivered'")
        }
    finally:
        conn.close()
    return {"event_ids": event_ids, "unrouted": unrouted, "states": states, "delivered": delivered}


@pytest.mark.timeout(120)
async def test_sigkill_mid_flood_loses_nothing_and_repeats_nothing(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    receiver_runner = await receiver.start()
    rules = tmp_path / "rules.yaml"
    rules.write_text(webhook_rules(receiver.url))
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    db = tmp_path / "router.db"
    port = free_port()
    log1, log2 = tmp_path / "router-1.log", tmp_path / "router-2.log"
    services: list[RouterProcess] = []

    def tail() -> str:
        return tail_of(log1, log2)

    base = example("course_completed")
    sent: dict[str, dict[str, Any]] = {}  # accepted event id -> the event as posted
    accepted: list[str] = []
    unexpected: list[str] = []
    kill_now = asyncio.Event()
    counter = iter(range(1_000_000))

    try:
        # -- run 1: flood, then SIGKILL mid-flight ------------------------------------
        first = RouterProcess(
            "router",
            db=str(tmp_path / "router.db"),
            rules=rules,
            templates=templates,
            workdir=tmp_path,
            port=port,
            log=log1,
        )
        services.append(first)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY * 2),
            timeout=aiohttp.ClientTimeout(total=10),
        ) as session:
            await first.wait_healthy(session)
            receiver.delay = RECEIVER_DELAY

            async def flood(worker: int) -> None:
                round_ = 0
                while not kill_now.is_set():
                    round_ += 1
                    size = 1 if (worker + round_) % 3 else 2 + (worker + round_) % 4
                    events = [unique_event(next(counter), base, 100_000) for _ in range(size)]
                    body: Any = events[0] if size == 1 and worker % 2 else events
                    try:
                        async with session.post(
                            f"{first.base}/events",
                            data=orjson.dumps(body),
                            headers={"Content-Type": "application/json"},
                        ) as resp:
                            text = await resp.text()
                            if resp.status != 202:
                                unexpected.append(f"{resp.status}: {text[:200]}")
                                continue
                            answers = orjson.loads(text)["accepted"]
                    except (aiohttp.ClientError, TimeoutError, ValueError):
                        # In flight at the kill: never acknowledged, so never promised.
                        if kill_now.is_set():
                            return
                        raise
                    for event, answer in zip(events, answers, strict=True):
                        assert not answer["duplicate"], answer
                        sent[answer["id"]] = event
                        accepted.append(answer["id"])

            async def kill_point() -> None:
                while len(accepted) < KILL_AFTER or len(receiver.received) < DELIVERED_BEFORE_KILL:
                    await asyncio.sleep(0.005)

            started = time.monotonic()
            tasks = [asyncio.create_task(flood(n)) for n in range(CONCURRENCY)]
            waiter = asyncio.create_task(kill_point())
            done, _ = await asyncio.wait(
                [waiter, *tasks], timeout=30, return_when=asyncio.FIRST_COMPLETED
            )
            if waiter not in done:
                waiter.cancel()
                kill_now.set()
                first.kill()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                pytest.fail(
                    f"flood stopped early after {len(accepted)} accepted: "
                    f"{[r for r in results if r]!r} {unexpected[:3]}\n{tail()}"
                )
            kill_now.set()
            os.kill(first.proc.pid, signal.SIGKILL)
            at_kill = len(accepted)
            flood_seconds = time.monotonic() - started
            first.proc.wait(timeout=10)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"flood task failed before the kill: {errors!r}\n{tail()}"
        assert not unexpected, f"non-202 answers before the kill: {unexpected[:5]}\n{tail()}"
        accepted_ids = set(accepted)
        assert len(accepted_ids) == len(accepted), "two accepted events share an id"
        received_at_kill = Counter(r.webhook_id for r in receiver.received)

        # -- the store as the crash left it -------------------------------------------
        snap = _store_snapshot(db)
        missing = accepted_ids - snap["event_ids"]
        assert not missing, f"{len(missing)} events answered 202 are not in the store\n{tail()}"
        delivered_before = snap["delivered"]
        pending_deliveries = snap["states"]["pending"]
        unrouted = snap["unrouted"]
        unfinished = unrouted + pending_deliveries
        print(
            f"flood {flood_seconds:.2f}s accepted={len(accepted)} (at kill {at_kill})"
            f" in store={len(snap['event_ids'])}"
            f" delivered-before-kill={len(delivered_before)}"
            f" pending-deliveries={pending_deliveries} unrouted-events={unrouted}"
            f" states={dict(snap['states'])}"
        )
        assert unfinished > 0, f"no unfinished work at the kill: the test proves nothing {snap}"
        assert delivered_before, "nothing was delivered before the kill: the test proves nothing"
        not_received = [key for key in delivered_before if key not in received_at_kill]
        assert not not_received, f"recorded delivered but never received: {not_received[:5]}"

        # -- run 2: restart on the same store and port ---------------------------------
        second = RouterProcess(
            "router",
            db=str(tmp_path / "router.db"),
            rules=rules,
            templates=templates,
            workdir=tmp_path,
            port=port,
            log=log2,
        )
        services.append(second)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await second.wait_healthy(session)

            deadline = time.monotonic() + RECOVERY_TIMEOUT
            while True:
                arrived = {r.webhook_id.split(":")[0] for r in receiver.received}
                lost = accepted_ids - arrived
                if not lost:
                    break
                if time.monotonic() > deadline or second.proc.poll() is not None:
                    pytest.fail(
                        f"{len(lost)} of {len(accepted_ids)} accepted events never reached the"
                        f" receiver (exit code {second.proc.poll()}), e.g. {sorted(lost)[:3]}"
                        f"\n{tail()}"
                    )
                await asyncio.sleep(0.1)

            # Quiesce: events in flight at the kill may have been stored without their
            # 202 reaching us; let the restarted router finish those too.
            deadline = time.monotonic() + RECOVERY_TIMEOUT
            while True:
                ready = await second.ready(session)
                if ready.get("events_pending") == 0 and ready.get("deliveries_pending") == 0:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"router never went idle: {ready}\n{tail()}")
                await asyncio.sleep(0.1)
            assert ready.get("dead_letters") == 0, f"dead letters after recovery: {ready}\n{tail()}"

            counts = Counter(r.webhook_id for r in receiver.received)
            repeated = {key: counts[key] for key in delivered_before if counts[key] != 1}
            assert not repeated, (
                f"{len(repeated)} deliveries recorded 'delivered' before the kill arrived"
                f" again after the restart, e.g. {list(repeated.items())[:5]}\n{tail()}"
            )
            assert not receiver.rejected, receiver.rejected[:5]

            # -- Canvas retries already-accepted events --------------------------------
            before = len(receiver.received)
            sample = accepted[:: max(1, len(accepted) // RESEND_SAMPLE)][:RESEND_SAMPLE]

            async def resend(event_id: str) -> tuple[str, int, Any]:
                async with session.post(
                    f"{second.base}/events",
                    data=orjson.dumps(sent[event_id]),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    return event_id, resp.status, await resp.json()

            answers = await asyncio.gather(*(resend(event_id) for event_id in sample))
            wrong = [
                a
                for a in answers
                if a[1] != 202 or a[2].get("accepted") != [{"id": a[0], "duplicate": True}]
            ]
            assert not wrong, f"re-posted events not answered as duplicates: {wrong[:3]}\n{tail()}"
            await asyncio.sleep(1.0)
            ready = await second.ready(session)
            new = [r.webhook_id for r in receiver.received[before:]]
            assert not new, f"re-posted duplicates were delivered again: {new[:5]}\n{tail()}"
            assert ready.get("deliveries_pending") == 0, f"{ready}\n{tail()}"
            assert ready.get("events_pending") == 0, f"{ready}\n{tail()}"

        # -- clean shutdown ------------------------------------------------------------
        second.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(second.proc.wait, 15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"router did not exit within 15s of SIGTERM\n{tail()}")
        assert code == 0, f"router exited with {code} after SIGTERM\n{tail()}"
        print(
            f"received={len(receiver.received)} distinct={len(set(counts))}"
            f" redelivered-after-restart={sum(1 for c in counts.values() if c > 1)}"
        )
    finally:
        for service in services:
            service.kill()
        await receiver_runner.cleanup()


async def test_one_process_serves_a_sqlite_file_and_a_killed_one_lets_go(
    tmp_path: Path,
) -> None:
    # Leases live in memory: a second server on the same file would route and
    # deliver the same events again. Operator commands are welcome meanwhile.
    rules = tmp_path / "rules.yaml"
    rules.write_text(webhook_rules("", secret=None))
    db = tmp_path / "router.db"
    common = {"db": str(db), "rules": rules, "templates": ROOT / "templates", "workdir": tmp_path}
    started: list[RouterProcess] = []

    def start(name: str) -> RouterProcess:
        started.append(
            RouterProcess(name, port=free_port(), log=tmp_path / f"{name}.log", **common)
        )
        return started[-1]

    try:
        async with aiohttp.ClientSession() as session:
            first = start("first")
            await first.wait_healthy(session)
            second = start("second")
            assert await asyncio.to_thread(second.proc.wait, 60) == 1
            assert (
                f"error: cannot open the store {db}: another router serves this file already"
                f" (pid {first.proc.pid})" in second.log.read_text()
            )
            listing = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "router.cli", "dlq", "list", "--db", str(db)],
                capture_output=True, text=True, timeout=60, cwd=tmp_path,
            )  # fmt: skip
            assert listing.returncode == 0, listing.stderr
            first.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.proc.wait, 10)
            await start("third").wait_healthy(session)  # the kernel let go of the lock
    finally:
        for process in started:
            process.kill()
