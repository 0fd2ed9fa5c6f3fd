"""A Google Chat space's incoming webhook (``POST /v1/spaces/{space}/messages?key=&token=``),
as the Chat API's spaces.messages.create and the webhook guide describe it.

- The body is a Message: ``text`` and/or ``cardsV2`` (plus ``thread``, ``fallbackText``);
  an unknown field or a message over 32,000 bytes is a 400 ``INVALID_ARGUMENT``, in
  Google's error format ``{"error": {"code", "message", "status"}}``.
- ``requestId``: a repeated create returns the message created with that id, it does
  not post again.
- ``thread.threadKey`` with ``messageReplyOption=REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD``
  replies in that key's thread (or starts it); without a reply option the key is
  ignored and every message starts a thread.
- 404 ``NOT_FOUND`` for an unknown space, 401 ``UNAUTHENTICATED`` for a bad token,
  429 ``RESOURCE_EXHAUSTED`` when scripted.
"""

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

SPACE = "AAAAfakeSpace"
KEY = "AIzaSyFAKEkey"
TOKEN = "tokenSECRET0123456789%3D"
MAX_BYTES = 32_000
MESSAGE_FIELDS = {"text", "cardsV2", "thread", "fallbackText", "accessoryWidgets"}
REPLY_OPTIONS = {
    "MESSAGE_REPLY_OPTION_UNSPECIFIED",
    "REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD",
    "REPLY_MESSAGE_OR_FAIL",
}
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND"}


def google_error(code: int, message: str, status: str | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "status": status or STATUS[code]}}
    return web.json_response(body, status=code)


def card_problem(cards: Any) -> str | None:
    """Why a ``cardsV2`` value is invalid, or None."""
    if not isinstance(cards, list):
        return "Invalid value at 'message.cards_v2': expected a list"
    for index, entry in enumerate(cards):
        card = entry.get("card") if isinstance(entry, dict) else None
        if not isinstance(card, dict) or not isinstance(card.get("sections", []), list):
            return f"Invalid value at 'message.cards_v2[{index}].card'"
        for section in card.get("sections", []):
            for widget in section.get("widgets", []):
                for button in (widget.get("buttonList") or {}).get("buttons", []):
                    url = ((button.get("onClick") or {}).get("openLink") or {}).get("url", "")
                    if not str(url).startswith(("https://", "http://")):
                        return f"Invalid value at 'message.cards_v2[{index}]': button without a URL"
    return None


@dataclass
class Created:
    """A message the space holds."""

    at: float
    name: str
    thread: str
    body: Any
    request_id: str | None


@dataclass
class FakeGoogleChat:
    """Records requests (``requests``) and created messages (``messages``). ``script``
    holds (status, message) answers; ``lose_answers`` creates the next N messages and
    then answers 503, as an answer lost on the way back would look to the sender."""

    messages: list[Created] = field(default_factory=list)
    requests: list[tuple[float, dict[str, str], Any]] = field(default_factory=list)
    script: deque[tuple[int, str]] = field(default_factory=deque)
    lose_answers: int = 0
    base: str = ""
    _threads: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.base}/v1/spaces/{SPACE}/messages?key={KEY}&token={TOKEN}"

    def _message(self, created: Created) -> dict[str, Any]:
        return {
            "name": created.name,
            "thread": {"name": created.thread},
            "space": {"name": f"spaces/{SPACE}"},
            **{k: v for k, v in created.body.items() if k != "thread"},
        }

    async def create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        query = dict(request.query)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.requests.append((time.monotonic(), query, body))
        if request.match_info["space"] != SPACE:
            return google_error(404, "Requested entity was not found.")
        if query.get("key") != KEY or request.raw_path.split("token=")[-1].split("&")[0] != TOKEN:
            return google_error(
                401, "Request had invalid authentication credentials.", "UNAUTHENTICATED"
            )
        if not isinstance(body, dict):
            return google_error(400, "Invalid JSON payload received.")
        unknown = sorted(set(body) - MESSAGE_FIELDS)
        if unknown:
            return google_error(
                400,
                f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at 'message':"
                " Cannot find field.",
            )
        if len(raw) > MAX_BYTES:
            return google_error(400, f"Message is too large: {len(raw)} bytes (at most 32,000).")
        if not body.get("text") and not body.get("cardsV2"):
            return google_error(400, "Message cannot be empty. Discarding empty message.")
        if "cardsV2" in body and (problem := card_problem(body["cardsV2"])):
            return google_error(400, problem)
        option = query.get("messageReplyOption", "MESSAGE_REPLY_OPTION_UNSPECIFIED")
        if option not in REPLY_OPTIONS:
            return google_error(
                400,
                f"Invalid value at 'message_reply_option' (type.googleapis.com/...), \"{option}\"",
            )
        request_id = query.get("requestId")
        for created in self.messages:
            if request_id and created.request_id == request_id:
                return web.json_response(self._message(created))  # the same message again
        if self.script:
            status, message = self.script.popleft()
            return google_error(status, message, "RESOURCE_EXHAUSTED" if status == 429 else None)
        thread_key = (body.get("thread") or {}).get("threadKey")
        if thread_key and option != "MESSAGE_REPLY_OPTION_UNSPECIFIED":
            thread = self._threads.setdefault(
                thread_key, f"spaces/{SPACE}/threads/t{len(self._threads)}"
            )
        else:
            thread = f"spaces/{SPACE}/threads/new{len(self.messages)}"
        created = Created(
            time.monotonic(),
            f"spaces/{SPACE}/messages/m{len(self.messages)}",
            thread,
            body,
            request_id,
        )
        self.messages.append(created)
        if self.lose_answers:
            self.lose_answers -= 1
            return google_error(503, "The service is currently unavailable.", "UNAVAILABLE")
        return web.json_response(self._message(created))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_post("/v1/spaces/{space}/messages", self.create)
        return app
