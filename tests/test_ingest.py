"""POST /events against a real service: every accepted form, every rejection."""

import asyncio
import copy
import json

import jwt
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.conftest import ServiceFactory, StoreDB, all_examples, example, webhook_rules
from tests.receiver import WebhookReceiver

LOG_ONLY = webhook_rules("", secret=None)


def stored_events(store_db: StoreDB) -> list[tuple[str, str, str]]:
    return store_db.rows("SELECT id, name, state FROM events ORDER BY seq")


async def test_single_event_is_stored_before_202(
    service: ServiceFactory, store_db: StoreDB
) -> None:
    client = await service(LOG_ONLY)
    resp = await client.post("/events", json=example("course_completed"))
    assert resp.status == 202
    answer = await resp.json()
    [accepted] = answer["accepted"]
    assert accepted["duplicate"] is False and len(accepted["id"]) == 32
    # The 202 came after the commit: a separate connection sees the row.
    assert [(row[0], row[1]) for row in stored_events(store_db)] == [
        (accepted["id"], "course_completed")
    ]


async def test_array_and_ndjson_batches(service: ServiceFactory, store_db: StoreDB) -> None:
    client = await service(LOG_ONLY)
    events = list(all_examples().values())
    resp = await client.post("/events", json=events)
    assert resp.status == 202
    ids = [a["id"] for a in (await resp.json())["accepted"]]
    assert len(set(ids)) == len(events) > 80

    ndjson = b"\n".join(
        orjson.dumps({**e, "body": {**e["body"], "n": i}}) for i, e in enumerate(events)
    )
    resp = await client.post(
        "/events", data=ndjson + b"\n\n", headers={"Content-Type": "application/x-ndjson"}
    )
    assert resp.status == 202
    assert len((await resp.json())["accepted"]) == len(events)
    assert len(stored_events(store_db)) == 2 * len(events)


async def test_unknown_events_and_fields_pass_through(service: ServiceFactory) -> None:
    client = await service(LOG_ONLY)
    event = {
        "metadata": {"event_name": "quiz_exploded", "brand_new": {"x": [1, 2]}},
        "body": None,
        "extra_top_level": True,
    }
    resp = await client.post("/events", json=event)
    assert resp.status == 202


async def test_malformed_json_names_the_position(service: ServiceFactory) -> None:
    client = await service(LOG_ONLY)
    resp = await client.post(
        "/events",
        data=b'{"metadata": {"event_name": "x",}}',
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error.startswith("malformed JSON at line 1 column 32 (char 31): trailing comma")


async def test_malformed_ndjson_names_the_line(service: ServiceFactory) -> None:
    client = await service(LOG_ONLY)
    body = orjson.dumps(example("course_created")) + b"\n{oops\n"
    resp = await client.post("/events", data=body, headers={"Content-Type": "application/x-ndjson"})
    assert resp.status == 400
    assert "on line 2" in (await resp.json())["error"]


async def test_batch_is_all_or_nothing_and_lists_every_bad_item(
    service: ServiceFactory, store_db: StoreDB
) -> None:
    client = await service(LOG_ONLY)
    good = example("course_completed")
    no_name = copy.deepcopy(good)
    del no_name["metadata"]["event_name"]
    bad_body = copy.deepcopy(good)
    bad_body["body"] = "not an object"
    resp = await client.post("/events", json=[good, no_name, 42, bad_body, {"body": {}}])
    assert resp.status == 422
    errors = (await resp.json())["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [
        (1, "metadata.event_name"),
        (2, "(event)"),
        (3, "body"),
        (4, "metadata"),
    ]
    assert errors[0]["message"] == "is required"
    assert stored_events(store_db) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("[1]", "(event)"),
        ('"just a string"', "(event)"),
        ('{"metadata": {"event_name": ""}}', "metadata.event_name"),
        ('{"metadata": {"event_name": 7}}', "metadata.event_name"),
        ('{"metadata": "x"}', "metadata"),
        ("[]", "(body)"),
    ],
)
async def test_not_an_event_is_422_naming_the_field(
    service: ServiceFactory, body: str, field: str
) -> None:
    client = await service(LOG_ONLY)
    resp = await client.post("/events", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["field"] == field


async def test_wrong_content_type_is_415(service: ServiceFactory) -> None:
    client = await service(LOG_ONLY)
    resp = await client.post("/events", data=b"<xml/>", headers={"Content-Type": "application/xml"})
    assert resp.status == 415
    assert "application/xml" in (await resp.json())["error"]


async def test_oversize_body_and_batch_are_413(service: ServiceFactory, store_db: StoreDB) -> None:
    client = await service(LOG_ONLY, max_body_bytes=4096, max_batch_items=3)
    big = example("syllabus_updated")
    big["body"]["syllabus_body"] = "x" * 5000
    resp = await client.post("/events", json=big)
    assert resp.status == 413
    assert "4096" in (await resp.json())["error"]

    # Chunked upload without Content-Length is cut off while streaming.
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b" " * 1000

    resp = await client.post("/events", data=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status == 413
    small = [{"metadata": {"event_name": f"e{i}"}} for i in range(4)]
    resp = await client.post("/events", json=small)
    assert resp.status == 413
    assert "limit is 3" in (await resp.json())["error"]
    assert stored_events(store_db) == []


# Make the store refuse new events, as a full disk or a broken database would.
REFUSE_WRITES = {
    "sqlite": "CREATE TRIGGER refuse BEFORE INSERT ON events"
    " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
    "postgresql": "ALTER TABLE events ADD CONSTRAINT refuse CHECK (false) NOT VALID",
}
ALLOW_WRITES = {
    "sqlite": "DROP TRIGGER refuse",
    "postgresql": "ALTER TABLE events DROP CONSTRAINT refuse",
}


async def test_a_failing_store_is_503_with_retry_after_and_the_service_goes_on(
    service: ServiceFactory,
    store_db: StoreDB,
    backend: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await service(LOG_ONLY)
    # In a thread: on PostgreSQL the DDL waits for the service's own queries to end,
    # and they need this event loop to run.
    await asyncio.to_thread(store_db.rows, REFUSE_WRITES[backend])
    resp = await client.post("/events", json=example("course_completed"))
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "5"
    error = (await resp.json())["error"]
    assert error.startswith("the store failed (") and "retry later" in error
    assert "disk is full" not in error and "refuse" not in error  # for the log only
    assert any(
        "events not stored" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records
    )
    assert stored_events(store_db) == []
    metrics = await (await client.get("/metrics")).text()
    assert 'router_events_rejected_total{reason="store_failed"} 1.0' in metrics

    await asyncio.to_thread(store_db.rows, ALLOW_WRITES[backend])
    resp = await client.post("/events", json=example("course_completed"))
    assert resp.status == 202  # the same event, retried: stored now, not a duplicate
    assert (await resp.json())["accepted"][0]["duplicate"] is False
    assert len(stored_events(store_db)) == 1


async def test_bearer_token(service: ServiceFactory) -> None:
    client = await service(LOG_ONLY, ingest_token="s3cret-token")
    event = example("course_created")
    assert (await client.post("/events", json=event)).status == 401
    wrong = await client.post("/events", json=event, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert "s3cret" not in await wrong.text()
    ok = await client.post("/events", json=event, headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status == 202


async def test_repeated_event_is_a_duplicate_and_notifies_once(
    service: ServiceFactory, receiver: WebhookReceiver, store_db: StoreDB
) -> None:
    client = await service(webhook_rules(receiver.url))
    event = example("course_completed")
    first = await (await client.post("/events", json=event)).json()
    # Canvas retries with the same payload; key order must not matter.
    reordered = json.loads(json.dumps(event, sort_keys=True))
    again = await client.post("/events", json=[reordered, event])
    answers = (await again.json())["accepted"]
    assert again.status == 202
    assert {a["id"] for a in answers} == {first["accepted"][0]["id"]}
    assert all(a["duplicate"] for a in answers)
    await receiver.wait_for(1)
    await client.post("/events", json=example("course_created"))
    await receiver.wait_for(2)
    assert [r.body["event_name"] for r in receiver.received] == [
        "course_completed",
        "course_created",
    ]
    states = [row[2] for row in stored_events(store_db)]
    assert states.count("duplicate") == 2


async def test_dedupe_window_expires(service: ServiceFactory) -> None:
    client = await service(LOG_ONLY, dedupe_window=0)
    event = example("course_completed")
    await client.post("/events", json=event)
    again = await (await client.post("/events", json=event)).json()
    assert again["accepted"][0]["duplicate"] is False


# -- Canvas signed (JWT) deliveries -------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def jwks_url(aiohttp_server, rsa_key: rsa.RSAPrivateKey) -> str:  # type: ignore[no-untyped-def]
    jwk = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk.update(kid="canvas-1", alg="RS256", use="sig")

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    server = await aiohttp_server(app)
    return str(server.make_url("/jwks"))


async def test_signed_delivery_verified_against_jwks(
    service: ServiceFactory, jwks_url: str, rsa_key: rsa.RSAPrivateKey, store_db: StoreDB
) -> None:
    client = await service(LOG_ONLY, jwks_url=jwks_url, require_signed=True)
    event = example("course_section_created")
    token = jwt.encode(event, rsa_key, algorithm="RS256", headers={"kid": "canvas-1"})
    resp = await client.post("/events", data=token, headers={"Content-Type": "application/jwt"})
    assert resp.status == 202, await resp.text()
    [(event_id, name, _)] = stored_events(store_db)
    assert name == "course_section_created"
    # The identity is the event's, whichever way it arrived.
    plain = await service(LOG_ONLY)
    assert event_id == (await (await plain.post("/events", json=event)).json())["accepted"][0]["id"]


async def test_signed_delivery_rejections(
    service: ServiceFactory, jwks_url: str, rsa_key: rsa.RSAPrivateKey, store_db: StoreDB
) -> None:
    client = await service(LOG_ONLY, jwks_url=jwks_url, require_signed=True)
    event = example("course_created")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(event, other, algorithm="RS256", headers={"kid": "canvas-1"})
    unknown = jwt.encode(event, rsa_key, algorithm="RS256", headers={"kid": "nope"})
    for token, reason in [(forged, "bad signature"), (unknown, "unknown signing key")]:
        resp = await client.post("/events", data=token, headers={"Content-Type": "application/jwt"})
        assert resp.status == 401
        assert reason in (await resp.json())["error"]
    unsigned = await client.post("/events", json=event)
    assert unsigned.status == 401
    assert stored_events(store_db) == []


async def test_signed_delivery_while_the_jwks_is_down_is_503_not_401(
    service: ServiceFactory,
    aiohttp_server,
    rsa_key: rsa.RSAPrivateKey,
    store_db: StoreDB,  # type: ignore[no-untyped-def]
) -> None:
    # The signature cannot be checked, which is not the sender's fault: retry later.
    async def down(request: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway")

    app = web.Application()
    app.router.add_get("/jwks", down)
    server = await aiohttp_server(app)
    client = await service(LOG_ONLY, jwks_url=str(server.make_url("/jwks")))
    token = jwt.encode(
        example("course_created"), rsa_key, algorithm="RS256", headers={"kid": "canvas-1"}
    )
    resp = await client.post("/events", data=token, headers={"Content-Type": "application/jwt"})
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "30"
    assert (await resp.json())["error"] == (
        "cannot check the signature now: signing keys unavailable; retry later"
    )
    assert stored_events(store_db) == []
    metrics = await (await client.get("/metrics")).text()
    assert 'router_events_rejected_total{reason="keys_unavailable"} 1.0' in metrics
    assert 'router_events_rejected_total{reason="draining"} 0.0' in metrics


async def test_jwt_without_jwks_configured_is_401(service: ServiceFactory, rsa_key) -> None:  # type: ignore[no-untyped-def]
    client = await service(LOG_ONLY)
    token = jwt.encode(example("course_created"), rsa_key, algorithm="RS256")
    resp = await client.post("/events", data=token, headers={"Content-Type": "application/jwt"})
    assert resp.status == 401
    assert "ROUTER_JWKS_URL" in (await resp.json())["error"]


async def test_json_sent_as_plain_text_is_json_and_a_plain_text_jwt_stays_a_jwt(
    service: ServiceFactory, jwks_url: str, rsa_key: rsa.RSAPrivateKey, store_db: StoreDB
) -> None:
    client = await service(LOG_ONLY, jwks_url=jwks_url)
    plain = {"Content-Type": "text/plain; charset=utf-8"}
    event = example("course_created")
    resp = await client.post("/events", data=orjson.dumps(event), headers=plain)
    assert resp.status == 202, await resp.text()
    batch = b"  \n" + orjson.dumps([example("course_updated"), example("course_completed")])
    resp = await client.post("/events", data=batch, headers=plain)
    assert resp.status == 202, await resp.text()
    token = jwt.encode(
        example("syllabus_updated"), rsa_key, algorithm="RS256", headers={"kid": "canvas-1"}
    )
    resp = await client.post("/events", data=token, headers=plain)
    assert resp.status == 202, await resp.text()
    names = [name for _, name, _ in stored_events(store_db)]
    assert names == ["course_created", "course_updated", "course_completed", "syllabus_updated"]
    # Neither JSON nor a token: the token check answers, as for any bad token.
    resp = await client.post("/events", data=b"hello", headers=plain)
    assert resp.status == 401
    # Broken JSON sent as plain text gets the JSON parser's answer.
    resp = await client.post("/events", data=b'{"metadata": ', headers=plain)
    assert resp.status == 400


async def test_health_and_readiness(service: ServiceFactory) -> None:
    client = await service(LOG_ONLY)
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["state"] == "ready"
