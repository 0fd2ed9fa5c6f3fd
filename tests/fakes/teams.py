"""A Microsoft Teams Workflows webhook ("When a Teams webhook request is received" +
"Post card in a chat or channel"), as Microsoft Learn and msteams-docs describe it.

The webhook answers 202 with an empty body as soon as it has the request; the flow runs
afterwards. So a message the flow cannot post (not an Adaptive Card, over 28 KB) is
still answered 202, and the failure only shows in the flow's run history: ``runs``.
Errors the trigger itself gives are Logic Apps errors, ``{"error": {"code", "message"}}``:
401 for a bad signature, 404 for an unknown flow, 429 with ``Retry-After``.
"""

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

#: Teams' message size limit ("about 28 KB").
MAX_BYTES = 28 * 1024
FLOW_ID = "0b5e3a4c9d8f4e7aa1c2d3e4f5a6b7c8"
SIGNATURE = "sig0123456789abcdefSECRET"
PATH = f"/workflows/{FLOW_ID}/triggers/manual/paths/invoke"


@dataclass
class Run:
    """One flow run: the request it got and whether posting the card succeeded."""

    at: float
    body: Any
    size: int
    status: str
    error: str = ""


def logic_apps_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def card_problem(body: Any) -> str | None:
    """Why "Post card in a chat or channel" would fail on this request body, or None."""
    if not isinstance(body, dict) or body.get("type") != "message":
        return "the body is not a message ({'type': 'message', ...})"
    attachments = body.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return "the message has no attachments"
    for attachment in attachments:
        if attachment.get("contentType") != "application/vnd.microsoft.card.adaptive":
            return f"unsupported contentType {attachment.get('contentType')!r}"
        card = attachment.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            return "the attachment's content is not an AdaptiveCard"
        if not isinstance(card.get("version"), str):
            return "the card has no version"
        if not isinstance(card.get("body"), list):
            return "the card has no body"
        for element in card["body"]:
            if element.get("type") == "TextBlock" and not isinstance(element.get("text"), str):
                return "a TextBlock without text"
        for action in card.get("actions", []):
            if action.get("type") == "Action.OpenUrl" and not str(action.get("url", "")).startswith(
                ("https://", "http://")
            ):
                return "an Action.OpenUrl without a url"
    return None


@dataclass
class FakeTeams:
    """Records every request; ``script`` holds answers (status, code, message, headers)
    given instead of 202 to the next requests that reach the trigger."""

    runs: list[Run] = field(default_factory=list)
    script: deque[tuple[int, str, str, dict[str, str]]] = field(default_factory=deque)
    arrivals: list[float] = field(default_factory=list)
    base: str = ""

    @property
    def url(self) -> str:
        return (
            f"{self.base}{PATH}?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIGNATURE}"
        )

    def posted(self) -> list[Run]:
        """The runs that posted a card."""
        return [run for run in self.runs if run.status == "Succeeded"]

    async def invoke(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        if request.match_info["flow"] != FLOW_ID:
            flow = request.match_info["flow"]
            return logic_apps_error(
                404, "WorkflowNotFound", f"The workflow '{flow}' could not be found."
            )
        if (
            request.query.get("sig") != SIGNATURE
            or "sp=%2Ftriggers%2Fmanual%2Frun" not in request.raw_path
        ):
            return logic_apps_error(
                401,
                "DirectApiInvalidAuthorizationSignature",
                "The provided authorization signature is not valid.",
            )
        raw = await request.read()
        if self.script:
            status, code, message, headers = self.script.popleft()
            return logic_apps_error(status, code, message, **headers)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return logic_apps_error(
                400, "InvalidRequestContent", f"The request content is not valid JSON: {exc}"
            )
        # Accepted: the flow runs after the answer, and may fail there.
        problem = card_problem(body)
        if problem is None and len(raw) > MAX_BYTES:
            problem = "RequestEntityTooLarge: the message is over 28 KB"
        status = "Failed" if problem else "Succeeded"
        self.runs.append(Run(time.monotonic(), body, len(raw), status, problem or ""))
        return web.Response(status=202)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_post("/workflows/{flow}/triggers/manual/paths/invoke", self.invoke)
        return app
