"""Who counts as an admin: the admin API and the status page share it.

An admin request carries ``Authorization: Bearer <ROUTER_ADMIN_TOKEN>``; a browser that
opened the status page once with ``?token=`` carries a session cookie instead, and then
a POST must also carry the page's CSRF field (the status page's forms do).
"""

import hashlib
import hmac

from aiohttp import web
from aiohttp.typedefs import Handler

from router.http.keys import SETTINGS

__all__ = [
    "COOKIE",
    "FORM_TYPES",
    "admin_only",
    "authorized",
    "bearer_ok",
    "cookie_ok",
    "csrf_value",
    "same",
    "session_value",
]

COOKIE = "router_admin"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _derived(token: str, purpose: bytes) -> str:
    return hmac.new(token.encode(), purpose, hashlib.sha256).hexdigest()


def session_value(token: str) -> str:
    """The session cookie's value: derived from the token, never the token itself."""
    return _derived(token, b"router status page session")


def csrf_value(token: str) -> str:
    """The hidden field the status page's forms carry with a cookie-authenticated POST."""
    return _derived(token, b"router status page csrf")


def same(given: str, expected: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_ok(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and same(given.strip(), token)


def cookie_ok(request: web.Request, token: str) -> bool:
    return same(request.cookies.get(COOKIE, ""), session_value(token))


async def authorized(request: web.Request) -> bool:
    """Whether the request comes from an admin (always False without an admin token)."""
    secret = request.app[SETTINGS].admin_token
    if secret is None:
        return False
    token = secret.get_secret_value()
    if bearer_ok(request, token):
        return True
    if not cookie_ok(request, token):
        return False
    if request.method in ("GET", "HEAD"):
        return True
    # A cookie rides along with any cross-site form, so a POST must prove it came
    # from our page (SameSite=Strict already stops most browsers from sending it).
    form = await request.post() if request.content_type in FORM_TYPES else {}
    given = form.get("csrf", "")
    return isinstance(given, str) and same(given, csrf_value(token))


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
