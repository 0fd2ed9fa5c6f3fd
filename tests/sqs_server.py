"""A real SQS-protocol server on loopback for tests and benchmarks: moto's server mode
(``moto_server -H 127.0.0.1 -p PORT``) as a subprocess, and a small client for it."""

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session

REGION = "us-east-1"
#: moto accepts any credentials; these reach it through the standard AWS chain.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """``moto_server`` on 127.0.0.1; ``stop`` and ``start`` again keep the port (its
    queues are in memory: a restarted server has none)."""

    def __init__(self, log: Path, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        executable = Path(sys.executable).parent / "moto_server"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(executable), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **CREDENTIALS},
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {self.log.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("moto_server did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[MotoServer]:
    server = MotoServer(log)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def sqs_client(endpoint: str) -> AsyncIterator[Any]:
    """An aiobotocore SQS client for the test side (sending, inspecting queues)."""
    session = get_session()
    async with session.create_client(
        "sqs",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    ) as client:
        yield client


async def queue_counts(client: Any, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages in a queue."""
    answer = await client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    attributes = answer["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


async def send_all(client: Any, queue_url: str, bodies: list[str]) -> None:
    """Send bodies in batches of ten (the SQS limit per call)."""
    for start in range(0, len(bodies), 10):
        chunk = bodies[start : start + 10]
        answer = await client.send_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)],
        )
        assert not answer.get("Failed"), answer["Failed"]


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll an async predicate until it holds, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
