"""Verification of Canvas LMS Live Events delivered as signed JWTs.

Canvas can deliver Live Events over HTTPS as a JWT (RS256) whose claims are the
event itself (``{"metadata": {...}, "body": {...}}``).  The signing key is
identified by the ``kid`` header and published in a JWKS document at a URL
configured per deployment.  :class:`JwksVerifier` fetches and caches that
document and verifies tokens against it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import jwt

__all__ = ["JwksVerifier", "JwtError"]

_FETCH_TIMEOUT_SECONDS = 10.0
_MAX_JWKS_BYTES = 1 << 20
_MAX_REASON_CHARS = 100


class JwtError(Exception):
    """Token rejected.

    ``str(exc)`` is a short reason that is safe to return to the client: it never
    contains the token or any key material.
    """


class KeysUnavailable(JwtError):
    """The token could not be checked: the JWKS could not be fetched, or the token's
    ``kid`` is unknown while refetches are rate limited (Canvas may just have published
    the key). Not the sender's fault, and it may pass later: ingest answers 503 with
    ``Retry-After`` (``retry_after`` seconds, when known), not 401."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _JwksUnavailable(Exception):
    """Internal: the JWKS document could not be fetched or parsed."""


class JwksVerifier:
    """Verify JWTs against signing keys published in a remote JWKS document.

    The JWKS is fetched with the given :class:`aiohttp.ClientSession` on first
    use and cached for ``cache_seconds``.  A token whose ``kid`` is not in the
    cached set triggers one refetch (to pick up key rotation), but fetches are
    never attempted more often than every ``min_refetch_seconds``, so clients
    cannot force the verifier to hammer the JWKS endpoint.  Concurrent callers
    that need a fetch share a single request.  A failed fetch never replaces a
    previously fetched key set; the stale set keeps being used until a fetch
    succeeds.

    Only algorithms listed in ``algorithms`` are accepted, whatever the token
    header claims.  A key must also match the token's algorithm: a JWK without
    an ``alg`` member is treated as RS256 (RSA), ES256/384/512 (EC, by curve)
    or EdDSA (OKP).

    ``audience``/``issuer``: when ``None`` the corresponding claim is not
    checked; otherwise it must be present and match.  ``clock`` is a monotonic
    clock used only for cache bookkeeping (token ``exp``/``nbf`` are checked
    against wall-clock time by PyJWT, with ``leeway_seconds`` of tolerance).
    """

    def __init__(
        self,
        jwks_url: str,
        session: aiohttp.ClientSession,
        *,
        algorithms: Sequence[str] = ("RS256",),
        audience: str | None = None,
        issuer: str | None = None,
        cache_seconds: float = 3600.0,
        min_refetch_seconds: float = 10.0,
        leeway_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(algorithms, str):
            algorithms = (algorithms,)
        algs = tuple(algorithms)
        if not algs:
            raise ValueError("algorithms must not be empty")
        supported = jwt.algorithms.get_default_algorithms()
        for alg in algs:
            if alg.lower() == "none":
                raise ValueError("the 'none' algorithm cannot be allowed")
            if alg not in supported:
                raise ValueError(f"unsupported algorithm: {alg!r}")

        self._jwks_url = jwks_url
        self._session = session
        self._algorithms = algs
        self._audience = audience
        self._issuer = issuer
        self._cache_seconds = cache_seconds
        self._min_refetch_seconds = min_refetch_seconds
        self._leeway_seconds = leeway_seconds
        self._clock = clock
        self._log = logging.getLogger(__name__)

        self._keys: jwt.PyJWKSet | None = None
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch attempt (success or not)
        self._last_fetch_ok = True  # outcome of the latest completed fetch attempt
        self._inflight: asyncio.Future[jwt.PyJWKSet] | None = None

    async def verify(self, token: str) -> dict[str, Any]:
        """Return the verified claims or raise JwtError."""
        header = self._unverified_header(token)

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise JwtError("algorithm not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise JwtError("token has no kid")

        fetched_before = self._fetched_at
        keys = await self._current_keys()
        key = _find_key(keys, kid)
        if key is None:
            if self._fetched_at != fetched_before:
                # The set was fetched for this very token: the kid is not Canvas'.
                raise JwtError("unknown signing key")
            keys = await self._keys_for_unknown_kid()
            if keys is None:
                # No refetch allowed yet: the key may be one just published. Canvas
                # retries a 503; a 401 would count against the subscription.
                reason = (
                    "signing keys unavailable"
                    if not self._last_fetch_ok
                    else ("unknown signing key; the key set was fetched moments ago")
                )
                raise KeysUnavailable(reason, retry_after=self._refetch_in())
            key = _find_key(keys, kid)
            if key is None:
                raise JwtError("unknown signing key")

        return self._decode(token, key)

    # -- token handling ---------------------------------------------------

    @staticmethod
    def _unverified_header(token: str) -> dict[str, Any]:
        if not isinstance(token, str):
            raise JwtError("malformed token: not a string")
        try:
            return jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise JwtError(f"malformed token: {_short(exc)}") from None
        except jwt.PyJWTError:
            # e.g. non-string kid or bad "crit"; PyJWT's message may echo header content.
            raise JwtError("malformed token: invalid header") from None

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=list(self._algorithms),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_seconds,
                options={
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.InvalidSignatureError:
            raise JwtError("bad signature") from None
        except jwt.ExpiredSignatureError:
            raise JwtError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise JwtError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise JwtError("invalid audience") from None
        except jwt.InvalidIssuerError:
            raise JwtError("invalid issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise JwtError(f"missing claim: {_short(exc.claim)}") from None
        except jwt.InvalidAlgorithmError:
            raise JwtError("algorithm not allowed for signing key") from None
        except jwt.InvalidIssuedAtError:
            raise JwtError("invalid iat claim") from None
        except jwt.DecodeError as exc:
            raise JwtError(f"malformed token: {_short(exc)}") from None
        except jwt.InvalidTokenError:
            raise JwtError("invalid token") from None
        except jwt.PyJWTError:
            raise JwtError("unusable signing key") from None

    # -- key set cache ----------------------------------------------------

    async def _current_keys(self) -> jwt.PyJWKSet:
        """Return a key set to verify against, fetching if the cache has expired.

        A stale set is preferred over failing when a fetch fails or is rate limited.
        """
        now = self._clock()
        if (
            self._keys is not None
            and self._fetched_at is not None
            and now - self._fetched_at < self._cache_seconds
        ):
            return self._keys
        if self._inflight is None and not self._may_fetch(now):
            if self._keys is not None:
                return self._keys
            raise KeysUnavailable("signing keys unavailable")
        try:
            return await self._fetch_shared()
        except _JwksUnavailable:
            if self._keys is not None:
                return self._keys
            raise KeysUnavailable("signing keys unavailable") from None

    async def _keys_for_unknown_kid(self) -> jwt.PyJWKSet | None:
        """Refetch once for a kid missing from the cached set, if rate limits allow.

        Returns ``None`` when no refetch is allowed right now.
        """
        if self._inflight is None and not self._may_fetch(self._clock()):
            return None
        try:
            return await self._fetch_shared()
        except _JwksUnavailable:
            raise KeysUnavailable("signing keys unavailable") from None

    def _refetch_in(self) -> float:
        """Seconds until the rate limit allows the next fetch."""
        if self._attempted_at is None:
            return 0.0
        return max(0.0, self._min_refetch_seconds - (self._clock() - self._attempted_at))

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_refetch_seconds

    async def _fetch_shared(self) -> jwt.PyJWKSet:
        """Join the in-flight fetch or start one; every waiter gets the same outcome."""
        inflight = self._inflight
        if inflight is None:
            self._attempted_at = self._clock()
            inflight = asyncio.ensure_future(self._fetch())
            self._inflight = inflight
            inflight.add_done_callback(self._fetch_done)
        # Shield so that one cancelled caller does not cancel the fetch for the others.
        return await asyncio.shield(inflight)

    def _fetch_done(self, fut: asyncio.Future[jwt.PyJWKSet]) -> None:
        if self._inflight is fut:
            self._inflight = None
        if not fut.cancelled():
            fut.exception()  # mark as retrieved even if every waiter was cancelled

    async def _fetch(self) -> jwt.PyJWKSet:
        timeout = aiohttp.ClientTimeout(total=_FETCH_TIMEOUT_SECONDS)
        try:
            async with self._session.get(
                self._jwks_url, timeout=timeout, headers={"Accept": "application/json"}
            ) as resp:
                if resp.status != 200:
                    raise _JwksUnavailable(f"HTTP status {resp.status}")
                body = await resp.content.read(_MAX_JWKS_BYTES + 1)
                if len(body) > _MAX_JWKS_BYTES:
                    raise _JwksUnavailable("document too large")
            data = json.loads(body)
            if not isinstance(data, dict):
                raise _JwksUnavailable("document is not a JSON object")
            keys = jwt.PyJWKSet.from_dict(data)
        except _JwksUnavailable as exc:
            self._last_fetch_ok = False
            self._log.warning("JWKS fetch from %s failed: %s", self._jwks_url, exc)
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
            self._last_fetch_ok = False
            self._log.warning(
                "JWKS fetch from %s failed: %s: %s", self._jwks_url, type(exc).__name__, exc
            )
            raise _JwksUnavailable(type(exc).__name__) from exc
        # Only a successful fetch replaces the cached set.
        self._keys = keys
        self._fetched_at = self._clock()
        self._last_fetch_ok = True
        self._log.info("fetched %d signing key(s) from %s", len(keys.keys), self._jwks_url)
        return keys


def _find_key(keys: jwt.PyJWKSet, kid: str) -> jwt.PyJWK | None:
    """Return the signing key with this kid, ignoring keys marked for encryption."""
    for key in keys.keys:
        if key.key_id == kid and key.public_key_use in (None, "sig"):
            return key
    return None


def _short(value: object) -> str:
    """A printable, length-limited rendering of an error detail."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    if len(text) > _MAX_REASON_CHARS:
        text = text[: _MAX_REASON_CHARS - 3] + "..."
    return text
