"""A Discord webhook (``POST /api/webhooks/{id}/{token}``), as discord-api-docs
describe Execute Webhook, the embed limits, errors and rate limits.

- 200 with the message (``?wait=true``) or 204; ``thread_id`` posts in a thread.
- Invalid bodies: 400 ``{"code": 50035, "errors": {...}, "message": "Invalid Form Body"}``
  naming each bad field, or 50006 for an empty message.
- 404 ``{"code": 10015, "message": "Unknown Webhook"}`` for a deleted webhook.
- A per-webhook bucket (``limit`` requests per ``per`` seconds): past it, 429 with
  ``{"message", "retry_after" (fractional seconds), "global"}`` and the ``X-RateLimit-*``
  headers, ``retry_after`` being exactly the time left until the bucket resets.
"""

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

WEBHOOK_ID = "1180000000000000001"
TOKEN = "hooktoken-SECRET-0123456789abcdefghijklmnop"
EMBED_LIMITS = {"title": 256, "description": 4096}
MENTION_TYPES = {"users", "roles", "everyone"}


@dataclass
class Hit:
    """One request that reached the webhook."""

    at: float
    status: int
    body: Any
    query: dict[str, str]


def _error(field_errors: dict[str, Any]) -> web.Response:
    return web.json_response(
        {"code": 50035, "errors": field_errors, "message": "Invalid Form Body"}, status=400
    )


def _too_long(limit: int) -> dict[str, Any]:
    message = f"Must be {limit} or fewer in length."
    return {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": message}]}


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def embed_size(embed: dict[str, Any]) -> int:
    """Characters that count toward the 6000 across a message's embeds."""
    size = len(_text(embed.get("title"))) + len(_text(embed.get("description")))
    for item in embed.get("fields") or []:
        size += len(_text(item.get("name"))) + len(_text(item.get("value")))
    size += len(_text((embed.get("footer") or {}).get("text")))
    size += len(_text((embed.get("author") or {}).get("name")))
    return size


def form_errors(body: Any) -> dict[str, Any]:
    """Discord's ``errors`` object for an Execute Webhook body (empty when valid)."""
    errors: dict[str, Any] = {}
    if len(_text(body.get("content"))) > 2000:
        errors["content"] = _too_long(2000)
    embeds = body.get("embeds") or []
    if not isinstance(embeds, list):
        errors["embeds"] = {"_errors": [{"code": "LIST_TYPE_CONVERT", "message": "Not a list."}]}
        return errors
    if len(embeds) > 10:
        errors["embeds"] = _too_long(10)
    for index, embed in enumerate(embeds):
        problems: dict[str, Any] = {}
        if not isinstance(embed, dict):
            problems["_errors"] = [
                {
                    "code": "DICT_TYPE_CONVERT",
                    "message": "Only dictionaries may be used in a DictType",
                }
            ]
        else:
            for name, limit in EMBED_LIMITS.items():
                if len(_text(embed.get(name))) > limit:
                    problems[name] = _too_long(limit)
            url = embed.get("url")
            if url is not None and not str(url).startswith(("http://", "https://")):
                problems["url"] = {
                    "_errors": [
                        {"code": "URL_TYPE_INVALID_URL", "message": "Not a well formed URL."}
                    ]
                }
        if problems:
            errors.setdefault("embeds", {})[str(index)] = problems
    if "embeds" not in errors and sum(embed_size(e) for e in embeds if isinstance(e, dict)) > 6000:
        errors["embeds"] = {
            "_errors": [
                {
                    "code": "MAX_EMBED_SIZE_EXCEEDED",
                    "message": "Embed size exceeds maximum size of 6000",
                }
            ]
        }
    username = str(body.get("username") or "")
    for word in ("discord", "clyde"):
        if word in username.lower():
            errors["username"] = {
                "_errors": [
                    {
                        "code": "USERNAME_INVALID_CONTAINS",
                        "message": f'Username cannot contain "{word}"',
                    }
                ]
            }
    mentions = body.get("allowed_mentions")
    if mentions is not None and not set(mentions.get("parse", [])) <= MENTION_TYPES:
        errors["allowed_mentions"] = {
            "parse": {
                "_errors": [
                    {"code": "ENUM_TYPE_COERCE", "message": "Value is not a valid enum value."}
                ]
            }
        }
    return errors


@dataclass
class FakeDiscord:
    """Records requests. ``limit``/``per`` is the webhook's rate-limit bucket;
    ``script`` holds (status, JSON body) answers given to the next valid requests."""

    limit: int = 1000
    per: float = 1.0
    hits: list[Hit] = field(default_factory=list)
    script: deque[tuple[int, Any]] = field(default_factory=deque)
    deleted: bool = False
    base: str = ""
    _window: list[float] = field(default_factory=list)
    _reset_at: float = 0.0

    @property
    def url(self) -> str:
        return f"{self.base}/api/webhooks/{WEBHOOK_ID}/{TOKEN}"

    def messages(self) -> list[Any]:
        """Bodies of the messages Discord posted."""
        return [hit.body for hit in self.hits if hit.status in (200, 204)]

    def _record(self, status: int, body: Any, request: web.Request) -> None:
        self.hits.append(Hit(time.monotonic(), status, body, dict(request.query)))

    def _bucket(self) -> tuple[bool, dict[str, str], float]:
        """Take one request from the bucket: (allowed, headers, seconds to reset)."""
        now = time.monotonic()
        if now >= self._reset_at:
            self._window, self._reset_at = [], now + self.per
        reset_after = self._reset_at - now
        allowed = len(self._window) < self.limit
        if allowed:
            self._window.append(now)
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.limit - len(self._window)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": "fake-webhook-bucket",
        }
        return allowed, headers, reset_after

    async def execute(self, request: web.Request) -> web.Response:
        webhook_id, token = request.match_info["id"], request.match_info["token"]
        if webhook_id != WEBHOOK_ID or self.deleted:
            self._record(404, None, request)
            return web.json_response({"message": "Unknown Webhook", "code": 10015}, status=404)
        if token != TOKEN:
            self._record(401, None, request)
            return web.json_response(
                {"message": "Invalid Webhook Token", "code": 50027}, status=401
            )
        allowed, headers, reset_after = self._bucket()
        if not allowed:
            self._record(429, None, request)
            headers.update(
                {"Retry-After": str(math.ceil(reset_after)), "X-RateLimit-Scope": "user"}
            )
            body = {
                "message": "You are being rate limited.",
                "retry_after": round(reset_after, 3),
                "global": False,
            }
            return web.json_response(body, status=429, headers=headers)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            self._record(400, None, request)
            return web.json_response({"message": "400: Bad Request", "code": 0}, status=400)
        if not isinstance(body, dict):
            self._record(400, body, request)
            return _error(
                {
                    "_errors": [
                        {
                            "code": "DICT_TYPE_CONVERT",
                            "message": "Only dictionaries may be used in a DictType",
                        }
                    ]
                }
            )
        if not _text(body.get("content")) and not body.get("embeds"):
            self._record(400, body, request)
            return web.json_response(
                {"message": "Cannot send an empty message", "code": 50006},
                status=400,
                headers=headers,
            )
        errors = form_errors(body)
        if errors:
            self._record(400, body, request)
            return _error(errors)
        if self.script:
            status, answer = self.script.popleft()
            self._record(status, body, request)
            return web.json_response(answer, status=status, headers=headers)
        if request.query.get("wait") == "true":
            self._record(200, body, request)
            message = {
                "id": str(len(self.hits)),
                "channel_id": request.query.get("thread_id", "1"),
                **body,
            }
            return web.json_response(message, headers=headers)
        self._record(204, body, request)
        return web.Response(status=204, headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/webhooks/{id}/{token}", self.execute)
        return app
