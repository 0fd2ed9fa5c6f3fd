"""Who counts as an admin: the admin API and the status page share it.

An admin request carries ``Authorization: Bearer <ROUTER_ADMIN_TOKEN>``; a browser that
opened the status page once with ``?token=`` carries a session cookie instead, and then
a POST must also carry the page's CSRF field (the status page's forms do).
"""

import hashlib
import hmac
import secrets
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDictProxy

from router.http.keys import SESSION_KEY, SETTINGS

__all__ = [
    "COOKIE",
    "FORM_TYPES",
    "SESSION_SECONDS",
    "BadForm",
    "admin_only",
    "authorized",
    "bearer_ok",
    "cookie_session",
    "csrf_value",
    "read_form",
    "same",
    "session_nonce",
    "session_value",
]

COOKIE = "router_admin"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


#: How long a status page session lasts.
SESSION_SECONDS = 12 * 3600


def _sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def session_value(key: bytes, now: float) -> str:
    """A new session cookie: ``<random nonce>.<expiry>.<signature>``, signed with the
    process's session key (``SESSION_KEY``: random per start, so a restart revokes
    every session). It holds nothing derived from the admin token."""
    body = f"{secrets.token_urlsafe(16)}.{int(now + SESSION_SECONDS)}"
    return f"{body}.{_sign(key, body)}"


def session_nonce(key: bytes, value: str, now: float) -> str | None:
    """The nonce of a valid, unexpired session cookie, else None."""
    body, _, signature = value.rpartition(".")
    nonce, _, expires = body.partition(".")
    if not (nonce and expires.isdigit() and same(signature, _sign(key, body))):
        return None
    return nonce if now < int(expires) else None


def csrf_value(key: bytes, nonce: str) -> str:
    """The hidden field the status page's forms carry with a cookie-authenticated POST:
    bound to the session, so it dies with it."""
    return _sign(key, f"csrf.{nonce}")


class BadForm(ValueError):
    """A posted form that cannot be read (a multipart body without its boundary)."""


async def read_form(request: web.Request) -> MultiDictProxy[Any]:
    """The posted form; a malformed one is ``BadForm`` (answered 400), not a 500."""
    try:
        return await request.post()
    except ValueError as exc:
        raise BadForm(f"malformed form: {exc}") from None


def same(given: str, expected: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_ok(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and same(given.strip(), token)


def cookie_session(request: web.Request) -> str | None:
    """The nonce of the request's valid session cookie, or None."""
    return session_nonce(request.app[SESSION_KEY], request.cookies.get(COOKIE, ""), time.time())


async def authorized(request: web.Request) -> bool:
    """Whether the request comes from an admin (always False without an admin token)."""
    secret = request.app[SETTINGS].admin_token
    if secret is None:
        return False
    token = secret.get_secret_value()
    if bearer_ok(request, token):
        return True
    nonce = cookie_session(request)
    if nonce is None:
        return False
    if request.method in ("GET", "HEAD"):
        return True
    # A cookie rides along with any cross-site form, so a POST must prove it came
    # from our page (SameSite=Strict already stops most browsers from sending it).
    try:
        form = await read_form(request) if request.content_type in FORM_TYPES else {}
    except BadForm:
        return False  # no readable form, no CSRF field
    given = form.get("csrf", "")
    return isinstance(given, str) and same(given, csrf_value(request.app[SESSION_KEY], nonce))


def admin_only(handler: Handler) -> Handler:
    """Wrap an admin route: it needs ``Authorization: Bearer <ROUTER_ADMIN_TOKEN>``, or
    the status page's session cookie (plus its CSRF field on a POST)."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        if not await authorized(request):
            return web.json_response(
                {"error": "missing or wrong admin token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="router-admin"'},
            )
        return await handler(request)

    return guarded
