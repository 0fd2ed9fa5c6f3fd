"""The SQS source: Canvas Live Events (either format) from an Amazon SQS queue.

Declared in rules.yaml under ``sources:`` with ``type: sqs``. Several receivers long
poll the queue; each batch's events are committed to the router's inbox (the queue
messages stay invisible meanwhile) and only then deleted. A message that is not an
event is counted, logged with its SQS message id and left in the queue, whose redrive
policy moves it to a dead-letter queue after ``maxReceiveCount`` receives.

Credentials come from the standard AWS chain (environment, shared files, container or
instance role) unless ``access_key_id`` and ``secret_access_key`` are set.
"""

import asyncio
import contextlib
import re
from typing import Any

import orjson
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field, SecretStr, model_validator

from router import (
    BadRequest,
    IngestUnavailable,
    InvalidEvents,
    ParsedEvent,
    Source,
    SourceConfig,
    SourceHost,
    hookimpl,
)

__all__ = ["SqsConfig", "SqsSource"]

_REGION_IN_URL = re.compile(
    r"^https?://(?:sqs\.)?([a-z0-9-]+)\.(?:queue\.)?amazonaws\.com(?:\.cn)?/"
)
#: Longest pause between failed receive calls (the queue or the network is down).
_MAX_BACKOFF = 30.0
#: Attempts at deleting a batch whose entries keep failing.
_DELETE_ATTEMPTS = 5


class SqsConfig(SourceConfig):
    """An SQS queue to receive Live Events from."""

    queue_url: str = Field(min_length=1, description="the queue's URL")
    region: str | None = Field(None, description="else from the queue URL or the AWS environment")
    endpoint_url: str | None = Field(None, description="any SQS-compatible server")
    receivers: int = Field(2, ge=1, le=32, description="receive calls in flight at once")
    wait_time_seconds: int = Field(20, ge=0, le=20, description="long polling wait")
    max_messages: int = Field(10, ge=1, le=10, description="messages per receive call")
    visibility_timeout: int = Field(
        30, ge=2, le=43200, description="seconds a batch stays hidden; extended while committing"
    )
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None

    @model_validator(mode="after")
    def _keys_together(self) -> "SqsConfig":
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set access_key_id and secret_access_key together, or neither")
        return self

    def region_name(self) -> str | None:
        """The region given, else the one in an AWS queue URL, else None (AWS chain)."""
        if self.region:
            return self.region
        match = _REGION_IN_URL.match(self.queue_url)
        return match[1] if match else None


def describe(exc: BaseException) -> str:
    """What went wrong, for the log and the status page (no credentials in it)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'ClientError')}: {error.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def publisher_form(data: bytes) -> bytes | None:
    """canvas-lms' live_events publisher writes ``{"attributes": {...}, "body": {...}}``
    (attributes: ``event_name``, ``event_time`` and the request context); Data
    Services turns that into ``{"metadata": ..., "body": ...}``. Take both: return the
    Canvas form of the first, or None when ``data`` is not in that shape."""
    try:
        item = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not (isinstance(item, dict) and isinstance(item.get("attributes"), dict)):
        return None
    if "metadata" in item:
        return None
    rest = {k: v for k, v in item.items() if k != "attributes"}
    return orjson.dumps({"metadata": item["attributes"], **rest})


class SqsSource(Source):
    """Receives from one queue with several long polls in flight; deletes after commit."""

    type = "sqs"
    Config = SqsConfig

    @classmethod
    def warnings(cls, config: SourceConfig) -> list[str]:
        return [
            "the router cannot check the queue's redrive policy: give the queue a"
            " dead-letter queue (maxReceiveCount), or a message that is not an event"
            " comes back until the queue's retention drops it"
        ]

    async def run(self, host: SourceHost) -> None:
        config = self.config
        assert isinstance(config, SqsConfig)
        session = get_session()
        client_config = AioConfig(
            connect_timeout=5,
            read_timeout=config.wait_time_seconds + 15,
            retries={"mode": "standard", "max_attempts": 2},
        )
        keys: dict[str, Any] = {}
        if config.access_key_id and config.secret_access_key:
            keys = {
                "aws_access_key_id": config.access_key_id,
                "aws_secret_access_key": config.secret_access_key.get_secret_value(),
            }
        backoff = 1.0
        while True:
            try:
                async with session.create_client(
                    "sqs",
                    region_name=config.region_name(),
                    endpoint_url=config.endpoint_url,
                    config=client_config,
                    **keys,
                ) as client:
                    # A task group: if one receiver fails, the others stop with it.
                    async with asyncio.TaskGroup() as group:
                        for _ in range(config.receivers):
                            group.create_task(self._receive(client, host, config))
            except (BotoCoreError, ClientError) as exc:  # no region, bad endpoint URL
                host.set_state("failing", describe(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _receive(self, client: Any, host: SourceHost, config: SqsConfig) -> None:
        backoff = 1.0
        while True:
            await host.wait_until_ready()
            try:
                answer = await client.receive_message(
                    QueueUrl=config.queue_url,
                    MaxNumberOfMessages=config.max_messages,
                    WaitTimeSeconds=config.wait_time_seconds,
                    VisibilityTimeout=config.visibility_timeout,
                )
            except (BotoCoreError, ClientError) as exc:
                # Credentials, permissions, the server away: say so, wait, try again.
                host.count("receive_error")
                host.set_state("failing", describe(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            backoff = 1.0
            host.set_state("running")
            messages = answer.get("Messages") or []
            if messages:
                await self._handle(client, host, config, messages)

    async def _handle(
        self, client: Any, host: SourceHost, config: SqsConfig, messages: list[dict[str, Any]]
    ) -> None:
        host.count("received", len(messages))
        good: list[dict[str, Any]] = []
        events: list[ParsedEvent] = []
        for message in messages:
            try:
                parsed = _parse(host, message.get("Body") or "")
            except (BadRequest, InvalidEvents) as exc:
                # Left in the queue: the redrive policy moves it to the dead-letter queue.
                host.count("invalid")
                host.log.warning(
                    "SQS message %s is not an event: %s", message.get("MessageId"), exc
                )
                continue
            good.append(message)
            events.extend(parsed)
        if not good:
            return
        # Hidden until deleted: extended while the commit and the delete run.
        keeper = asyncio.create_task(self._keep_hidden(client, config, good))
        try:
            try:
                answers = await host.submit(events)
            except IngestUnavailable as exc:
                keeper.cancel()
                host.set_state("waiting", str(exc))
                await self._release(client, config, good, exc.retry_after)
                return
            duplicates = sum(answer.duplicate for answer in answers)
            if duplicates:
                host.log.info("%d event(s) were repeats of events already stored", duplicates)
            await self._delete(client, host, config, good)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _keep_hidden(
        self, client: Any, config: SqsConfig, messages: list[dict[str, Any]]
    ) -> None:
        """While the batch is being committed, keep extending its visibility timeout."""
        while True:
            await asyncio.sleep(config.visibility_timeout / 2)
            with contextlib.suppress(BotoCoreError, ClientError):
                await client.change_message_visibility_batch(
                    QueueUrl=config.queue_url,
                    Entries=[
                        {
                            "Id": str(i),
                            "ReceiptHandle": m["ReceiptHandle"],
                            "VisibilityTimeout": config.visibility_timeout,
                        }
                        for i, m in enumerate(messages)
                    ],
                )

    async def _release(
        self, client: Any, config: SqsConfig, messages: list[dict[str, Any]], after: float
    ) -> None:
        """The router cannot take the batch now: let SQS hand it out again soon."""
        with contextlib.suppress(BotoCoreError, ClientError):
            await client.change_message_visibility_batch(
                QueueUrl=config.queue_url,
                Entries=[
                    {
                        "Id": str(i),
                        "ReceiptHandle": m["ReceiptHandle"],
                        "VisibilityTimeout": max(1, min(int(after + 0.999), 43200)),
                    }
                    for i, m in enumerate(messages)
                ],
            )

    async def _delete(
        self, client: Any, host: SourceHost, config: SqsConfig, messages: list[dict[str, Any]]
    ) -> None:
        """Delete a committed batch; retry the entries SQS answers in ``Failed``. What
        is left reappears later and is answered as a duplicate (same canonical id)."""
        pending = {str(i): m for i, m in enumerate(messages)}
        for attempt in range(_DELETE_ATTEMPTS):
            try:
                answer = await client.delete_message_batch(
                    QueueUrl=config.queue_url,
                    Entries=[
                        {"Id": key, "ReceiptHandle": m["ReceiptHandle"]}
                        for key, m in pending.items()
                    ],
                )
            except (BotoCoreError, ClientError) as exc:
                host.log.warning("SQS delete failed: %s", describe(exc))
            else:
                deleted = answer.get("Successful") or []
                for entry in deleted:
                    pending.pop(entry["Id"], None)
                host.count("deleted", len(deleted))
                for entry in answer.get("Failed") or []:
                    message = pending.get(entry["Id"])
                    host.log.warning(
                        "SQS could not delete message %s: %s: %s",
                        message.get("MessageId") if message else entry["Id"],
                        entry.get("Code"),
                        entry.get("Message", ""),
                    )
                    if entry.get("SenderFault") and message is not None:
                        # A stale receipt handle: retrying cannot help.
                        pending.pop(entry["Id"])
                        host.count("delete_failed")
            if not pending:
                return
            await asyncio.sleep(0.2 * 2**attempt)
        host.count("delete_failed", len(pending))
        host.log.warning(
            "%d SQS message(s) not deleted; they will be received again and answered as duplicates",
            len(pending),
        )


def _parse(host: SourceHost, body: str) -> list[ParsedEvent]:
    data = body.encode()
    try:
        return host.parse(data)
    except InvalidEvents:
        canvas = publisher_form(data)
        if canvas is None:
            raise
        return host.parse(canvas)


@hookimpl
def register_sources(register: Any) -> None:
    register(SqsSource)
