"""Issue 18, findings 3 to 5 at the HTTP edge: bodies labelled compressed that are not,
bodies and request heads that stall, integers beyond 64 bits, event names of any
length, and a template lookup cache that grew with every distinct event name."""

import asyncio
import gzip
import select
import shutil
import socket
import time
import zlib
from pathlib import Path

import aiohttp
import orjson
import pytest

from router.templates import RESOLVED_CACHE, Templates
from tests.conftest import ROOT, ServiceFactory, StoreDB, example, webhook_rules
from tests.processes import RouterProcess, free_port
from tests.receiver import WebhookReceiver

EVENT = orjson.dumps(example("course_created"))


@pytest.mark.sqlite_only("the HTTP edge does not depend on the store")
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_labelled_compressed_that_is_not_is_400(
    service: ServiceFactory, encoding: str
) -> None:
    client = await service(webhook_rules("http://127.0.0.1:9/"))
    resp = await client.post(
        "/events",
        data=EVENT,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert resp.status == 400
    assert (await resp.json()) == {"error": f"the body is not valid {encoding} data"}


@pytest.mark.sqlite_only("the HTTP edge does not depend on the store")
async def test_compressed_bodies_are_accepted_and_unknown_codings_are_415(
    service: ServiceFactory,
) -> None:
    client = await service(webhook_rules("http://127.0.0.1:9/"))
    headers = {"Content-Type": "application/json"}
    for encoding, data in (("gzip", gzip.compress(EVENT)), ("deflate", zlib.compress(EVENT))):
        resp = await client.post(
            "/events", data=data, headers={**headers, "Content-Encoding": encoding}
        )
        assert resp.status == 202, await resp.text()
    resp = await client.post(
        "/events", data=EVENT, headers={**headers, "Content-Encoding": "compress"}
    )
    assert resp.status == 415
    assert "unsupported Content-Encoding 'compress'" in (await resp.json())["error"]


def raw_request(
    port: int, head: bytes, trickle: list[bytes], every: float
) -> tuple[bytes, float, bool]:
    """Send ``head``, then each piece of ``trickle`` ``every`` seconds until the server
    answers or closes. Return the answer, the seconds until it came (or the connection
    closed), and whether the server closed the connection afterwards (within 5 s)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for piece in trickle:
            readable, _, _ = select.select([sock], [], [], every)
            if readable:
                break
            try:
                sock.sendall(piece)
            except OSError:
                break
        sock.settimeout(5)
        answer, closed = b"", False
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if answer.count(b"\r\n\r\n") and b'"}' in answer:
                    break  # a whole error answer: see whether the server closes next
            took = time.monotonic() - started
            closed = sock.recv(1) == b""
        except ConnectionResetError:
            took, closed = time.monotonic() - started, True
        except TimeoutError:
            took = time.monotonic() - started
    return answer, took, closed


@pytest.mark.sqlite_only("the HTTP edge does not depend on the store")
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_that_stalls_is_cut_off_at_read_timeout(
    service: ServiceFactory, framing: str
) -> None:
    client = await service(webhook_rules("http://127.0.0.1:9/"), read_timeout=1.0)
    port = client.server.port
    if framing == "chunked":
        length = b"Transfer-Encoding: chunked\r\n"
        # A chunk, then neither the next nor the final one.
        trickle = [f"{len(EVENT):x}\r\n".encode() + EVENT + b"\r\n"] + [b""] * 8
    else:
        length = f"Content-Length: {len(EVENT)}\r\n".encode()
        trickle = [bytes([b]) for b in EVENT[:40]]  # one byte every 0.25 s: 10 s in all
    head = (
        b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + length + b"\r\n"
    )
    answer, took, closed = await asyncio.to_thread(raw_request, port, head, trickle, 0.25)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"the body did not arrive within 1s" in answer
    assert took < 8 and closed
    assert (await client.get("/healthz")).status == 200


async def test_a_request_head_that_stalls_is_cut_off_by_router_serve(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(webhook_rules("http://127.0.0.1:9/"))
    port = free_port()
    proc = RouterProcess(
        "edge",
        db=str(tmp_path / "router.db"),
        rules=rules,
        templates=ROOT / "templates",
        workdir=tmp_path,
        port=port,
        log=tmp_path / "router.log",
        env={"ROUTER_READ_TIMEOUT": "1"},
    )
    try:
        async with aiohttp.ClientSession() as session:
            await proc.wait_healthy(session)
            head = b"POST /events HTTP/1.1\r\nHost: x\r\n"
            trickle = [b"X-Slow: 1\r\n"] * 40  # a header line every 0.25 s: 10 s in all
            answer, took, closed = await asyncio.to_thread(raw_request, port, head, trickle, 0.25)
            assert answer == b""  # closed, nothing answered: there was no request yet
            assert took < 8 and closed
            async with session.get(f"{proc.base}/healthz") as resp:
                assert resp.status == 200
    finally:
        proc.kill()


@pytest.mark.sqlite_only("the HTTP edge does not depend on the store")
async def test_an_integer_beyond_64_bits_is_refused_naming_the_field(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    rules = webhook_rules(receiver.url).replace("timeout: 5", "timeout: 5\n    body: event")
    client = await service(rules)
    body = (
        b'{"metadata": {"event_name": "course_created"},'
        b' "body": {"id": 123456789012345678901234567890, "name": "12345678901234567890123",'
        b' "max": 18446744073709551615, "min": -9223372036854775808}}'
    )
    resp = await client.post("/events", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 422
    [error] = (await resp.json())["errors"]
    assert error == {
        "index": 0,
        "field": "body.id",
        "message": "integer beyond 64 bits; send it as a string to keep it exact",
    }
    assert store_db.dicts("SELECT id FROM events") == []
    # The biggest 64-bit integers are kept exactly, end to end.
    ok = body.replace(b"123456789012345678901234567890", b"1")
    assert (
        await client.post("/events", data=ok, headers={"Content-Type": "application/json"})
    ).status == 202
    [row] = store_db.dicts("SELECT payload FROM event_payloads")
    stored = orjson.loads(row["payload"])
    assert (stored["body"]["max"], stored["body"]["min"]) == (2**64 - 1, -(2**63))
    [got] = await receiver.wait_for(1)
    assert got.body == orjson.loads(ok)
    assert (got.body["body"]["max"], got.body["body"]["min"]) == (2**64 - 1, -(2**63))


@pytest.mark.sqlite_only("the HTTP edge does not depend on the store")
async def test_big_integers_in_an_ndjson_batch_name_the_line(service: ServiceFactory) -> None:
    client = await service(webhook_rules("http://127.0.0.1:9/"))
    lines = [EVENT, b'{"metadata": {"event_name": "x"}, "body": {"a": [1, 99999999999999999999]}}']
    resp = await client.post(
        "/events", data=b"\n".join(lines), headers={"Content-Type": "application/x-ndjson"}
    )
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["index"] == 1
    assert (await resp.json())["errors"][0]["field"] == "body.a.1"


@pytest.mark.sqlite_only("the HTTP edge does not depend on the store")
async def test_an_event_name_over_255_characters_is_422(service: ServiceFactory) -> None:
    client = await service(webhook_rules("http://127.0.0.1:9/"))
    resp = await client.post("/events", json={"metadata": {"event_name": "x" * 256}})
    assert resp.status == 422
    [error] = (await resp.json())["errors"]
    assert error["field"] == "metadata.event_name"
    assert "at most 255 characters" in error["message"]


@pytest.mark.sqlite_only("template lookup does not depend on the store")
async def test_a_name_too_long_for_a_template_file_gets_the_default_template(
    service: ServiceFactory, receiver: WebhookReceiver, tmp_path: Path, store_db: StoreDB
) -> None:
    client = await service(webhook_rules(receiver.url))
    name = "n" * 250  # 250 + ".webhook.j2" is over the file system's 255 bytes
    assert (await client.post("/events", json={"metadata": {"event_name": name}})).status == 202
    [got] = await receiver.wait_for(1)
    assert got.body["event_name"] == name
    assert all(d["state"] != "dead" for d in store_db.dicts("SELECT state FROM deliveries"))


def test_the_template_lookup_cache_is_bounded(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "templates", tmp_path / "t")
    templates = Templates(tmp_path / "t")
    for n in range(RESOLVED_CACHE + 1000):
        assert templates.resolve(None, f"event_{n}", "webhook") == "default.j2"
    assert len(templates._resolved) == RESOLVED_CACHE
