"""Tests for router.canvas_jwt against a real local JWKS server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from router.canvas_jwt import JwksVerifier, JwtError, KeysUnavailable

CANVAS_EVENT: dict[str, Any] = {
    "metadata": {
        "event_name": "submission_created",
        "event_time": "2024-05-01T12:34:56.789Z",
        "root_account_uuid": "VicYj3cu5BIFpoZhDVU4DZumnlBrWi1grgJEzADs",
        "root_account_id": "10000000000001",
        "context_type": "Course",
        "context_id": "10000000000123",
        "user_id": "10000000000042",
        "producer": "canvas",
    },
    "body": {
        "submission_id": "10000000000777",
        "assignment_id": "10000000000456",
        "user_id": "10000000000042",
        "submission_type": "online_text_entry",
        "submitted_at": "2024-05-01T12:34:56Z",
        "workflow_state": "submitted",
    },
}


@dataclass
class Keys:
    """RSA keys generated once for the whole module."""

    primary: rsa.RSAPrivateKey
    rotated: rsa.RSAPrivateKey
    attacker: rsa.RSAPrivateKey


@dataclass
class JwksState:
    """What the local JWKS server serves, and how often it was asked."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    raw_body: bytes | None = None
    delay: float = 0.0
    fetches: int = 0


class FakeClock:
    """A manually advanced monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def public_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(kid=kid, alg="RS256", use="sig")
    return jwk


def sign(
    key: rsa.RSAPrivateKey,
    kid: str | None = "k1",
    claims: dict[str, Any] | None = None,
    algorithm: str = "RS256",
) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(
        dict(CANVAS_EVENT if claims is None else claims), key, algorithm, headers=headers
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


async def rejected(verifier: JwksVerifier, token: str) -> str:
    """Verify a token expected to fail; return the reason, checking it leaks nothing."""
    with pytest.raises(JwtError) as info:
        await verifier.verify(token)
    reason = str(info.value)
    assert reason
    if token:
        assert token not in reason
        for segment in token.split("."):
            if len(segment) > 8:
                assert segment not in reason
    return reason


@pytest.fixture(scope="module")
def keys() -> Keys:
    def gen() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    return Keys(primary=gen(), rotated=gen(), attacker=gen())


@pytest.fixture
def state(keys: Keys) -> JwksState:
    return JwksState(keys=[public_jwk(keys.primary, "k1")])


@pytest.fixture
async def jwks_url(state: JwksState, aiohttp_server: Any) -> str:
    async def handler(request: web.Request) -> web.Response:
        state.fetches += 1
        if state.delay:
            await asyncio.sleep(state.delay)
        if state.status != 200:
            return web.Response(status=state.status, text="boom")
        if state.raw_body is not None:
            return web.Response(body=state.raw_body, content_type="application/json")
        return web.json_response({"keys": state.keys})

    app = web.Application()
    app.router.add_get("/jwks", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("/jwks"))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_verifier(
    jwks_url: str, session: aiohttp.ClientSession, clock: FakeClock
) -> Callable[..., JwksVerifier]:
    def make(**kwargs: Any) -> JwksVerifier:
        kwargs.setdefault("clock", clock)
        return JwksVerifier(kwargs.pop("url", jwks_url), session, **kwargs)

    return make


async def test_valid_token_returns_canvas_event(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState
) -> None:
    verifier = make_verifier()
    claims = await verifier.verify(sign(keys.primary))
    assert claims == CANVAS_EVENT
    assert claims["metadata"]["event_name"] == "submission_created"
    assert state.fetches == 1


async def test_cache_hit_does_not_refetch(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState, clock: FakeClock
) -> None:
    verifier = make_verifier(cache_seconds=3600)
    token = sign(keys.primary)
    for _ in range(5):
        assert await verifier.verify(token) == CANVAS_EVENT
    clock.advance(3599)
    assert await verifier.verify(token) == CANVAS_EVENT
    assert state.fetches == 1
    # Once the cache expires the set is fetched again.
    clock.advance(2)
    assert await verifier.verify(token) == CANVAS_EVENT
    assert state.fetches == 2


async def test_wrong_key_same_kid_is_bad_signature(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState
) -> None:
    verifier = make_verifier()
    assert await rejected(verifier, sign(keys.attacker, kid="k1")) == "bad signature"
    assert state.fetches == 1


async def test_tampered_claims_are_bad_signature(
    make_verifier: Callable[..., JwksVerifier], keys: Keys
) -> None:
    header, _, signature = sign(keys.primary).split(".")
    forged = dict(CANVAS_EVENT, body={"submission_id": "1"})
    payload = b64url(json.dumps(forged).encode())
    assert await rejected(make_verifier(), f"{header}.{payload}.{signature}") == "bad signature"


async def test_unknown_kid_refetches_once_then_fails(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState, clock: FakeClock
) -> None:
    verifier = make_verifier(min_refetch_seconds=10)
    await verifier.verify(sign(keys.primary))
    assert state.fetches == 1

    clock.advance(11)
    token = sign(keys.rotated, kid="nope")
    assert await rejected(verifier, token) == "unknown signing key"
    assert state.fetches == 2
    # Within min_refetch_seconds further unknown kids do not cause fetches; the key
    # may be one just published, so they are "unavailable, retry" (503), not rejected.
    for _ in range(5):
        with pytest.raises(KeysUnavailable) as info:
            await verifier.verify(token)
        assert "unknown signing key" in str(info.value)
        assert 0 < info.value.retry_after <= 10
    assert state.fetches == 2
    clock.advance(11)  # the refetch is allowed again: the kid is still unknown
    assert await rejected(verifier, token) == "unknown signing key"
    assert state.fetches == 3
    # Known keys keep working meanwhile.
    assert await verifier.verify(sign(keys.primary)) == CANVAS_EVENT
    assert state.fetches == 3


async def test_unknown_kid_on_cold_cache_fetches_once(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState
) -> None:
    verifier = make_verifier()
    assert await rejected(verifier, sign(keys.rotated, kid="nope")) == "unknown signing key"
    assert state.fetches == 1


async def test_key_rotation_picked_up_after_one_refetch(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState, clock: FakeClock
) -> None:
    verifier = make_verifier()
    await verifier.verify(sign(keys.primary))
    assert state.fetches == 1

    state.keys.append(public_jwk(keys.rotated, "k2"))
    clock.advance(30)
    new_token = sign(keys.rotated, kid="k2")
    assert await verifier.verify(new_token) == CANVAS_EVENT
    assert state.fetches == 2
    assert await verifier.verify(new_token) == CANVAS_EVENT
    assert await verifier.verify(sign(keys.primary)) == CANVAS_EVENT
    assert state.fetches == 2


async def test_hs256_token_rejected_without_fetch(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState
) -> None:
    verifier = make_verifier()
    token = jwt.encode(CANVAS_EVENT, "x" * 32, algorithm="HS256", headers={"kid": "k1"})
    assert await rejected(verifier, token) == "algorithm not allowed"

    # Key-confusion attempt: HMAC keyed with the published RSA public key.
    pem = keys.primary.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
        + "."
        + b64url(json.dumps(CANVAS_EVENT).encode())
    )
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert await rejected(verifier, f"{signing_input}.{b64url(mac)}") == "algorithm not allowed"
    assert state.fetches == 0


async def test_alg_none_rejected(
    make_verifier: Callable[..., JwksVerifier], state: JwksState
) -> None:
    verifier = make_verifier()
    token = jwt.encode(CANVAS_EVENT, None, algorithm="none", headers={"kid": "k1"})
    assert await rejected(verifier, token) == "algorithm not allowed"
    # Same with a signature segment attached, and with a mixed-case alg.
    assert await rejected(verifier, token + "c2ln") == "algorithm not allowed"
    header = b64url(json.dumps({"alg": "None", "kid": "k1"}).encode())
    payload = b64url(json.dumps(CANVAS_EVENT).encode())
    assert await rejected(verifier, f"{header}.{payload}.") == "algorithm not allowed"
    assert state.fetches == 0


def test_none_algorithm_cannot_be_configured(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError):
        JwksVerifier("http://127.0.0.1/jwks", session, algorithms=("RS256", "none"))
    with pytest.raises(ValueError):
        JwksVerifier("http://127.0.0.1/jwks", session, algorithms=())


async def test_expired_token(make_verifier: Callable[..., JwksVerifier], keys: Keys) -> None:
    verifier = make_verifier(leeway_seconds=60)
    now = int(time.time())
    expired = sign(keys.primary, claims={**CANVAS_EVENT, "exp": now - 3600})
    assert await rejected(verifier, expired) == "token expired"
    # Within the leeway the token is still accepted.
    recent = sign(keys.primary, claims={**CANVAS_EVENT, "exp": now - 10})
    assert (await verifier.verify(recent))["body"] == CANVAS_EVENT["body"]


async def test_token_without_kid(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState
) -> None:
    assert await rejected(make_verifier(), sign(keys.primary, kid=None)) == "token has no kid"
    assert state.fetches == 0


async def test_audience_and_issuer_checked_when_configured(
    make_verifier: Callable[..., JwksVerifier], keys: Keys
) -> None:
    claims = {**CANVAS_EVENT, "aud": "router", "iss": "https://canvas.example.edu"}
    token = sign(keys.primary, claims=claims)
    # Not configured: aud/iss are not verified.
    assert await make_verifier().verify(token) == claims
    ok = make_verifier(audience="router", issuer="https://canvas.example.edu")
    assert await ok.verify(token) == claims
    assert await rejected(make_verifier(audience="other"), token) == "invalid audience"
    assert await rejected(make_verifier(issuer="https://evil"), token) == "invalid issuer"
    bare = sign(keys.primary)
    assert await rejected(make_verifier(audience="router"), bare) == "missing claim: aud"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "not.a.jwt",
        "a.b",
        "....",
        "eyJhbGciOiJSUzI1NiJ9.e30",
        "!!!!.@@@@.####",
        b64url(b"[1, 2]") + ".e30.c2ln",
        "\u00e9\u00e9.\u00e9.\u00e9",
    ],
)
async def test_garbage_token(
    make_verifier: Callable[..., JwksVerifier], state: JwksState, token: str
) -> None:
    assert (await rejected(make_verifier(), token)).startswith("malformed token")
    assert state.fetches == 0


async def test_jwks_500_fails_without_cache(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState, clock: FakeClock
) -> None:
    verifier = make_verifier(min_refetch_seconds=10)
    token = sign(keys.primary)
    state.status = 500
    assert await rejected(verifier, token) == "signing keys unavailable"
    assert state.fetches == 1
    # Failures are rate limited too.
    assert await rejected(verifier, token) == "signing keys unavailable"
    assert state.fetches == 1
    # The failure did not poison anything: once the server recovers it works.
    state.status = 200
    clock.advance(10)
    assert await verifier.verify(token) == CANVAS_EVENT
    assert state.fetches == 2


async def test_jwks_500_keeps_previous_set(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState, clock: FakeClock
) -> None:
    verifier = make_verifier(cache_seconds=60, min_refetch_seconds=10)
    token = sign(keys.primary)
    assert await verifier.verify(token) == CANVAS_EVENT
    assert state.fetches == 1

    state.status = 500
    clock.advance(61)  # cache expired: the refetch fails, the stale set is used
    assert await verifier.verify(token) == CANVAS_EVENT
    assert state.fetches == 2

    clock.advance(11)  # unknown kid: the refetch fails, reported as such
    assert await rejected(verifier, sign(keys.rotated, kid="k2")) == "signing keys unavailable"
    assert state.fetches == 3
    assert await verifier.verify(token) == CANVAS_EVENT
    assert state.fetches == 3

    state.status = 200
    state.keys.append(public_jwk(keys.rotated, "k2"))
    clock.advance(11)
    assert await verifier.verify(sign(keys.rotated, kid="k2")) == CANVAS_EVENT
    assert state.fetches == 4


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2, 3]", b'{"keys": []}', b'{"keys": "x"}', b"\xff\xfe"],
    ids=["invalid-json", "not-object", "no-keys", "bad-keys", "not-utf8"],
)
async def test_bad_jwks_document(
    make_verifier: Callable[..., JwksVerifier],
    keys: Keys,
    state: JwksState,
    clock: FakeClock,
    body: bytes,
) -> None:
    verifier = make_verifier(cache_seconds=60)
    token = sign(keys.primary)
    await verifier.verify(token)

    state.raw_body = body
    clock.advance(61)
    assert await verifier.verify(token) == CANVAS_EVENT  # stale set survives
    assert state.fetches == 2

    fresh = make_verifier()
    assert await rejected(fresh, token) == "signing keys unavailable"


async def test_jwks_connection_refused(
    make_verifier: Callable[..., JwksVerifier], keys: Keys
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    verifier = make_verifier(url=f"http://127.0.0.1:{port}/jwks")
    assert await rejected(verifier, sign(keys.primary)) == "signing keys unavailable"


async def test_concurrent_verifies_share_one_fetch(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState, clock: FakeClock
) -> None:
    verifier = make_verifier()
    state.delay = 0.05
    token = sign(keys.primary)
    results = await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
    assert results == [CANVAS_EVENT] * 20
    assert state.fetches == 1

    # Concurrent unknown-kid refetches after a rotation are shared as well.
    state.keys.append(public_jwk(keys.rotated, "k2"))
    clock.advance(30)
    new_token = sign(keys.rotated, kid="k2")
    results = await asyncio.gather(*(verifier.verify(new_token) for _ in range(20)))
    assert results == [CANVAS_EVENT] * 20
    assert state.fetches == 2


async def test_concurrent_failure_shared_and_cancel_safe(
    make_verifier: Callable[..., JwksVerifier], keys: Keys, state: JwksState
) -> None:
    verifier = make_verifier()
    state.delay = 0.05
    token = sign(keys.primary)

    # One cancelled waiter must not cancel the fetch the others are waiting on.
    first = asyncio.ensure_future(verifier.verify(token))
    second = asyncio.ensure_future(verifier.verify(token))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == CANVAS_EVENT
    with pytest.raises(asyncio.CancelledError):
        await first
    assert state.fetches == 1

    failing = make_verifier()
    state.status = 503
    outcomes = await asyncio.gather(
        *(failing.verify(token) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(o, JwtError) for o in outcomes)
    assert {str(o) for o in outcomes} == {"signing keys unavailable"}
    assert state.fetches == 2
