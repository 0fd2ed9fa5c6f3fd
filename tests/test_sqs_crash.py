"""``kill -9`` of a ``router serve`` process in the middle of an SQS queue: after a
restart on the same store, every message's event reaches the receiver and the queue
ends empty (a message is deleted only after its events were committed)."""

import json
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT, example
from tests.processes import RouterProcess, free_port, tail, unique_event
from tests.receiver import SECRET, WebhookReceiver
from tests.sqs_server import CREDENTIALS, moto_server, queue_counts, send_all, sqs_client, wait_for

MESSAGES = 200
KILL_AFTER = 20  # deliveries received before the SIGKILL


@pytest.mark.timeout(150)
async def test_sigkill_mid_queue_delivers_every_message_after_restart(tmp_path: Path) -> None:
    receiver = WebhookReceiver()
    receiver.delay = 0.02  # slow: deliveries and SQS messages are still pending at the kill
    runner = await receiver.start()
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", templates)
    base = example("course_completed")
    events = [unique_event(n, base, 5000) for n in range(MESSAGES)]
    wanted = {e["metadata"]["request_id"] for e in events}
    logs = [tmp_path / "router-1.log", tmp_path / "router-2.log"]
    processes: list[RouterProcess] = []
    with moto_server(tmp_path / "moto.log") as moto:
        try:
            async with sqs_client(moto.url) as sqs:
                queue = (await sqs.create_queue(QueueName="canvas-live-events-crash"))["QueueUrl"]
                await send_all(sqs, queue, [json.dumps(e) for e in events])
                source = {
                    "type": "sqs",
                    "queue_url": queue,
                    "endpoint_url": moto.url,
                    "region": "us-east-1",
                    "wait_time_seconds": 1,
                    "visibility_timeout": 5,
                    "receivers": 3,
                }
                rules = tmp_path / "rules.yaml"
                rules.write_text(
                    "version: 1\n"
                    f"sources:\n  canvas: {json.dumps(source)}\n"
                    "channels:\n"
                    f'  hook: {{type: webhook, url: "{receiver.url}", secret: "{SECRET}"}}\n'
                    'rules:\n  - {name: everything, events: ["*"], notify: [hook]}\n'
                )
                port = free_port()

                def start(log: Path) -> RouterProcess:
                    process = RouterProcess(
                        log.stem,
                        db=str(tmp_path / "router.db"),
                        rules=rules,
                        templates=templates,
                        workdir=tmp_path,
                        port=port,
                        log=log,
                        env=CREDENTIALS,
                    )
                    processes.append(process)
                    return process

                async with aiohttp.ClientSession() as session:
                    first = start(logs[0])
                    await first.wait_healthy(session)
                    await receiver.wait_for(KILL_AFTER, timeout=60)
                    first.proc.kill()  # SIGKILL: no drain, no cleanup
                    first.proc.wait(timeout=10)
                    left = sum(await queue_counts(sqs, queue))
                    assert left > 0, "the kill came too late to test anything"
                    second = start(logs[1])
                    await second.wait_healthy(session)

                    def arrived() -> set[str]:
                        return {
                            r.body["event"]["metadata"]["request_id"] for r in receiver.received
                        }

                    async def all_arrived() -> bool:
                        return arrived() >= wanted

                    try:
                        await wait_for(all_arrived, 90, "every message's event at the receiver")
                    except AssertionError:
                        missing = len(wanted - arrived())
                        pytest.fail(f"{missing} event(s) never arrived\n" + tail(*logs))

                    async def emptied() -> bool:
                        return await queue_counts(sqs, queue) == (0, 0)

                    await wait_for(emptied, 30, "the queue to end empty")
        finally:
            for process in processes:
                process.kill()
            await runner.cleanup()
    assert receiver.rejected == []
