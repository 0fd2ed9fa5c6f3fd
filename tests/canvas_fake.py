"""A fake Canvas REST API on 127.0.0.1 that follows the documented contract (canvas-lms
``doc/api/``): bearer token (401 without it), ``Link`` pagination with ``per_page``
capped by the server, global ids (``21070000000000565``, ``2107~565``) and local ids
(``565``), 404 for what does not exist, and throttling per ``doc/api/throttling.md``:
every answer carries ``X-Request-Cost`` and ``X-Rate-Limit-Remaining``, and an answer
over quota is ``403 Forbidden (Rate Limit Exceeded)``. ``POST /api/v1/conversations``
answers 201 with the conversations, or 400 with Canvas' error list.
"""

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

SHARD = 2107
TOKEN = "canvas-test-token-7d1f"
DEFAULT_PER_PAGE = 10


def local(raw: str) -> str | None:
    """The local id behind ``565``, ``21070000000000565`` or ``2107~565`` (this shard)."""
    if re.fullmatch(r"\d+~\d+", raw):
        shard, _, rest = raw.partition("~")
        return rest if int(shard) == SHARD else None
    if not raw.isdigit():
        return None
    number = int(raw)
    if number >= 10**13:
        return str(number % 10**13) if number // 10**13 == SHARD else None
    return str(number)


@dataclass
class FakeCanvas:
    """The data the fake serves and the knobs a test turns."""

    courses: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    assignments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    submissions: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    topics: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    enrollments: list[tuple[str, str, str]] = field(default_factory=list)  # course, user, type
    hits: Counter[str] = field(default_factory=Counter)  # GET path -> requests
    conversations: list[dict[str, Any]] = field(default_factory=list)
    quota: float = 700.0  # X-Rate-Limit-Remaining
    cost: float = 1.0  # X-Request-Cost of each request
    throttle_next: int = 0  # answer this many requests with the throttling 403
    fail_next: int = 0  # answer this many requests with 503
    retry_after: str | None = None  # sent with the throttling 403 when set
    throttle_method: str | None = None  # throttle only requests of this method
    max_per_page: int = 50  # Canvas caps per_page itself; tests cap lower to force pages
    unreachable: set[str] = field(default_factory=set)  # users no message may reach
    next_origin: str | None = None  # a misbehaving server: rel="next" on another host
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def add_user(self, uid: str, name: str, email: str | None, tz: str = "America/Denver"):
        user = {"id": int(uid), "name": name, "sortable_name": name, "short_name": name}
        self.users[uid] = {**user, "primary_email": email, "time_zone": tz, "email": email}

    def enroll(self, course: str, uid: str, kind: str) -> None:
        self.enrollments.append((course, uid, kind))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/api/v1/courses/{course}", self._course)
        app.router.add_get("/api/v1/courses/{course}/users", self._course_users)
        app.router.add_get("/api/v1/courses/{course}/assignments/{assignment}", self._assignment)
        app.router.add_get(
            "/api/v1/courses/{course}/assignments/{assignment}/submissions/{user}",
            self._submission,
        )
        app.router.add_get("/api/v1/courses/{course}/discussion_topics/{topic}", self._topic)
        app.router.add_get("/api/v1/users/{user}/profile", self._profile)
        app.router.add_get("/api/v1/users/{user}", self._user)
        app.router.add_get("/api/v1/sections/{section}", self._section)
        app.router.add_post("/api/v1/conversations", self._create_conversation)
        return app

    async def start(self) -> None:
        self.server = TestServer(self.app(), host="127.0.0.1")
        await self.server.start_server()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    # -- the contract's envelope: auth, throttling, outages --------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "GET":
            self.hits[request.path] += 1
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response(
                {"errors": [{"message": "Invalid access token."}]},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="canvas-lms"'},
            )
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=503, text="Service Unavailable")
        if self.throttle_next > 0 and self.throttle_method in (None, request.method):
            self.throttle_next -= 1
            headers = {"X-Request-Cost": "0", "X-Rate-Limit-Remaining": "-12.5"}
            if self.retry_after is not None:
                headers["Retry-After"] = self.retry_after
            return web.Response(
                status=403, text="403 Forbidden (Rate Limit Exceeded)\n", headers=headers
            )
        self.quota -= self.cost
        response = await handler(request)
        response.headers["X-Request-Cost"] = f"{self.cost:.4f}"
        response.headers["X-Rate-Limit-Remaining"] = f"{self.quota:.4f}"
        return response

    # -- GET handlers ----------------------------------------------------------------

    @staticmethod
    def _not_found() -> web.Response:
        return web.json_response(
            {"errors": [{"message": "The specified resource does not exist."}]}, status=404
        )

    async def _course(self, request: web.Request) -> web.Response:
        course = self.courses.get(local(request.match_info["course"]) or "")
        return web.json_response(course) if course else self._not_found()

    async def _profile(self, request: web.Request) -> web.Response:
        user = self.users.get(local(request.match_info["user"]) or "")
        if user is None:
            return self._not_found()
        keys = ("id", "name", "short_name", "sortable_name", "primary_email", "time_zone")
        return web.json_response({k: user[k] for k in keys})

    async def _user(self, request: web.Request) -> web.Response:
        user = self.users.get(local(request.match_info["user"]) or "")
        if user is None:
            return self._not_found()
        return web.json_response({k: user[k] for k in ("id", "name", "short_name")})

    async def _assignment(self, request: web.Request) -> web.Response:
        key = (
            local(request.match_info["course"]) or "",
            local(request.match_info["assignment"]) or "",
        )
        found = self.assignments.get(key)
        return web.json_response(found) if found else self._not_found()

    async def _submission(self, request: web.Request) -> web.Response:
        key = tuple(
            local(request.match_info[part]) or "" for part in ("course", "assignment", "user")
        )
        found = self.submissions.get(key)  # type: ignore[arg-type]
        return web.json_response(found) if found else self._not_found()

    async def _topic(self, request: web.Request) -> web.Response:
        key = (local(request.match_info["course"]) or "", local(request.match_info["topic"]) or "")
        found = self.topics.get(key)
        return web.json_response(found) if found else self._not_found()

    async def _section(self, request: web.Request) -> web.Response:
        found = self.sections.get(local(request.match_info["section"]) or "")
        return web.json_response(found) if found else self._not_found()

    async def _course_users(self, request: web.Request) -> web.Response:
        course = local(request.match_info["course"]) or ""
        if course not in self.courses:
            return self._not_found()
        kinds = request.query.getall("enrollment_type[]", [])
        include = request.query.getall("include[]", [])
        people = []
        for c, uid, kind in self.enrollments:
            if c == course and (not kinds or kind in kinds):
                user = self.users[uid]
                shown = {k: user[k] for k in ("id", "name", "sortable_name", "short_name")}
                if "email" in include:
                    shown["email"] = user["email"]
                people.append(shown)
        per_page = min(int(request.query.get("per_page", DEFAULT_PER_PAGE)), self.max_per_page)
        page = int(request.query.get("page", "1"))
        chunk = people[(page - 1) * per_page : page * per_page]
        last = max(1, -(-len(people) // per_page))

        def link(number: int, rel: str) -> str:
            url = request.url.update_query({"page": str(number), "per_page": str(per_page)})
            return f'<{url}>; rel="{rel}"'

        links = [link(page, "current")]
        if page < last:
            following = link(page + 1, "next")
            if self.next_origin is not None:
                following = following.replace(str(request.url.origin()), self.next_origin)
            links.append(following)
        if page > 1:
            links.append(link(page - 1, "prev"))
        links += [link(1, "first"), link(last, "last")]
        return web.json_response(chunk, headers={"Link": ",".join(links)})

    # -- Conversations -----------------------------------------------------------------

    async def _create_conversation(self, request: web.Request) -> web.Response:
        form = await request.post()
        recipients = form.getall("recipients[]", [])
        body = str(form.get("body", ""))
        context = str(form.get("context_code", ""))
        if not recipients:
            return web.json_response([{"attribute": "recipients", "message": "blank"}], status=400)
        if any(local(str(r)) not in self.users or r in self.unreachable for r in recipients):
            return web.json_response(
                [{"attribute": "recipients", "message": "invalid recipients"}], status=400
            )
        if not body:
            return web.json_response(
                [{"attribute": "body", "message": "Unable to create message without a body"}],
                status=400,
            )
        if len(str(form.get("subject", ""))) > 255:
            return web.json_response([{"attribute": "subject", "message": "too long"}], status=400)
        if context.startswith("course_"):
            course = self.courses.get(local(context.removeprefix("course_")) or "")
            if course is None:
                return web.json_response(
                    [{"attribute": "context_code", "message": "invalid context"}], status=400
                )
            if course.get("workflow_state") == "completed":
                return web.json_response(
                    [
                        {
                            "attribute": "workflow_state",
                            "message": "Course concluded, unable to send messages",
                        }
                    ],
                    status=400,
                )
        sent = {
            "recipients": list(recipients),
            "subject": form.get("subject"),
            "body": body,
            "context_code": context or None,
            "force_new": form.get("force_new"),
            "group_conversation": form.get("group_conversation"),
        }
        self.conversations.append(sent)
        created = {"id": len(self.conversations), "subject": sent["subject"]}
        return web.json_response([created], status=201)
