"""Test a plugin inside a real router: ``async with run_router(rules) as router: ...``.

The harness builds the real service (``create_app``) on a temporary rules file,
SQLite store and templates directory, serves it with aiohttp's test server on
127.0.0.1, and lets a test post events and wait until every delivery has reached
its final state::

    from router.testing import event, run_router

    async def test_my_channel_delivers(fake_server_url):
        rules = f'''
        version: 1
        channels:
          chat: {{type: mychannel, url: "{fake_server_url}"}}
        rules:
          - {{name: all, events: ["*"], notify: [chat]}}
        '''
        async with run_router(rules, plugins=[my_plugin]) as router:
            await router.send(event("course_created", body={"name": "Physics"}))
            [delivery] = await router.wait_until_settled()
            assert delivery.state == "delivered"

It needs no pytest plugin: any asyncio test runner will do.
"""

import asyncio
import contextlib
import importlib.metadata
import sqlite3
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from router.channels import DeliveryOutcome
from router.config_source import ConfigErrors
from router.hookspecs import hookimpl
from router.http.app import create_app
from router.http.keys import DISPATCHER, PLUGINS
from router.plugins import ENTRY_POINT_GROUP, PluginProblem, Plugins, load_plugins
from router.settings import Settings
from router.templates import builtin_templates

__all__ = [
    "BUILTIN_TEMPLATES",
    "TEST_SETTINGS",
    "ConfigErrors",
    "Delivery",
    "PluginLoadError",
    "RouterHarness",
    "SettleTimeout",
    "event",
    "run_router",
]

#: The templates shipped with the router (``router.templates.builtin_templates``).
BUILTIN_TEMPLATES = builtin_templates()

#: Settings that make tests fast; any of them can be overridden.
TEST_SETTINGS: dict[str, Any] = {
    "backoff_base": 0.05,
    "backoff_cap": 0.2,
    "shutdown_grace": 2.0,
    "reload_poll": 0.0,
}

FINAL_STATES = ("delivered", "logged", "dead")


class PluginLoadError(Exception):
    """A plugin failed to import or register; the message lists every problem."""

    def __init__(self, problems: list[PluginProblem]) -> None:
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = problems


class SettleTimeout(AssertionError):
    """Deliveries were still pending when ``wait_until_settled`` gave up."""


@dataclass(frozen=True)
class Delivery:
    """One delivery job as the store holds it, with the message that was rendered."""

    id: int
    key: str
    event_id: str
    event_name: str
    rule: str
    channel: str
    state: str
    attempts: int
    last_error: str | None
    title: str
    text: str
    blocks: dict[str, str]


def event(name: str, body: Mapping[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    """A minimal event: ``{"metadata": {"event_name": name, **metadata}, "body": body}``.

    The router drops an exact repeat of an event it has seen, so vary the body or
    metadata (e.g. ``request_id=...``) to send "the same" event twice.
    """
    return {"metadata": {"event_name": name, **metadata}, "body": dict(body or {})}


class _OutcomeRecorder:
    """A plugin of the harness's own: records every ``delivery_finished`` outcome."""

    __name__ = "router.testing"

    def __init__(self) -> None:
        self.outcomes: list[DeliveryOutcome] = []

    @hookimpl
    def delivery_finished(self, outcome: DeliveryOutcome) -> None:
        self.outcomes.append(outcome)


class _IsolatedSettings(Settings):
    """``Settings`` that ignore ``ROUTER_*`` environment variables: only what the
    test passes counts, so a developer's shell cannot change a test's outcome."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


@dataclass
class RouterHarness:
    """A running router. Every method reads the real store; nothing is mocked."""

    client: TestClient
    settings: Settings
    _recorder: _OutcomeRecorder = field(repr=False)

    @property
    def app(self) -> web.Application:
        return self.client.app  # type: ignore[return-value]

    @property
    def plugins(self) -> Plugins:
        """The loaded plugins: ``infos``, ``channel_types``, ``filters``, ``problems``."""
        return self.app[PLUGINS]

    @property
    def outcomes(self) -> list[DeliveryOutcome]:
        """Every attempt's outcome so far, in order (what ``delivery_finished`` saw),
        including retries, which ``deliveries()`` only shows as an attempt count."""
        return list(self._recorder.outcomes)

    async def send(self, events: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[str]:
        """``POST /events`` one event or a list of them; return their ids.

        Raises ``AssertionError`` with the router's answer unless it is 202.
        """
        payload = dict(events) if isinstance(events, Mapping) else [dict(e) for e in events]
        async with self.client.post("/events", json=payload) as resp:
            text = await resp.text()
            if resp.status != 202:
                raise AssertionError(f"POST /events answered {resp.status}: {text}")
        return [answer["id"] for answer in orjson.loads(text)["accepted"]]

    # The timeout is a parameter on purpose: on expiry the error lists what is pending.
    async def wait_until_settled(self, timeout: float = 10.0) -> list[Delivery]:  # noqa: ASYNC109
        """Wait until every accepted event is routed, no digest group is open, and
        every delivery is ``delivered``, ``logged`` or ``dead``; return them all.

        Retries happen for real in between (with the short backoff of the test
        settings, but never sooner than a receiver's ``Retry-After``). Raises
        ``SettleTimeout`` listing what is still pending.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._settled():
                return self.deliveries()
            if time.monotonic() > deadline:
                pending = [d for d in self.deliveries() if d.state not in FINAL_STATES]
                raise SettleTimeout(
                    f"not settled after {timeout:g}s: {self._unsettled()}; pending: "
                    + (
                        ", ".join(
                            f"{d.key} (attempts={d.attempts}, last_error={d.last_error!r})"
                            for d in pending
                        )
                        or "none"
                    )
                )
            await asyncio.sleep(0.02)

    def deliveries(self, state: str | None = None) -> list[Delivery]:
        """Every delivery job, oldest first, optionally only those in ``state``."""
        query = (
            "SELECT d.id, d.key, e.id AS event_id, e.name AS event_name, d.rule, d.channel,"
            " d.state, d.attempts, d.last_error, d.message"
            " FROM deliveries d JOIN events e ON e.seq = d.event_seq"
        )
        args: tuple[str, ...] = ()
        if state is not None:
            query += " WHERE d.state = ?"
            args = (state,)
        with self._read() as conn:
            rows = conn.execute(query + " ORDER BY d.id", args).fetchall()
        found = []
        for row in rows:
            message = orjson.loads(row["message"]) if row["message"] else {}
            found.append(
                Delivery(
                    id=row["id"],
                    key=row["key"],
                    event_id=row["event_id"],
                    event_name=row["event_name"],
                    rule=row["rule"],
                    channel=row["channel"],
                    state=row["state"],
                    attempts=row["attempts"],
                    last_error=row["last_error"],
                    title=message.get("title", ""),
                    text=message.get("text", ""),
                    blocks=message.get("blocks", {}),
                )
            )
        return found

    def delivered(self) -> list[Delivery]:
        """Deliveries a channel's ``send`` completed."""
        return self.deliveries("delivered")

    def logged(self) -> list[Delivery]:
        """Deliveries of log-only channels (``log_only_reason()`` or ``log_only: true``)."""
        return self.deliveries("logged")

    def failed(self) -> list[Delivery]:
        """Dead letters, each with its ``last_error`` and ``attempts``."""
        return self.deliveries("dead")

    # -- internals ---------------------------------------------------------------------

    def _read(self) -> contextlib.closing[sqlite3.Connection]:
        conn = sqlite3.connect(f"file:{self.settings.db}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        return contextlib.closing(conn)

    def _counts(self) -> tuple[int, int, int]:
        with self._read() as conn:
            events = conn.execute("SELECT count(*) FROM events WHERE state = 'pending'")
            deliveries = conn.execute("SELECT count(*) FROM deliveries WHERE state = 'pending'")
            digests = conn.execute("SELECT count(*) FROM digests WHERE state = 'open'")
            return events.fetchone()[0], deliveries.fetchone()[0], digests.fetchone()[0]

    def _in_flight(self) -> int:
        # A job's row is final before the dispatcher tells observers; counting claimed
        # jobs makes "settled" include the ``delivery_finished`` calls.
        return sum(runtime.claimed for runtime in self.app[DISPATCHER].channels.values())

    def _settled(self) -> bool:
        return self._counts() == (0, 0, 0) and self._in_flight() == 0

    def _unsettled(self) -> str:
        events, deliveries, digests = self._counts()
        return (
            f"{events} event(s) not routed, {deliveries} delivery(ies) pending,"
            f" {digests} digest group(s) open, {self._in_flight()} attempt(s) in flight"
        )


def _templates_dir(templates: Mapping[str, str] | Path | str | None, workdir: Path) -> Path:
    if isinstance(templates, Path | str):
        return Path(templates)
    if templates is None:
        return BUILTIN_TEMPLATES
    directory = workdir / "templates"
    for name, source in templates.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    directory.mkdir(exist_ok=True)
    return directory


def _entry_points_providing(plugins: Iterable[object]) -> list[str]:
    """Entry points whose module is one of ``plugins``: the test passes that module
    itself, so loading it a second time through its entry point must not happen."""
    modules = {getattr(plugin, "__name__", None) for plugin in plugins} - {None}
    return [
        ep.name
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.module in modules
    ]


@contextlib.asynccontextmanager
async def run_router(
    rules: str,
    *,
    plugins: Iterable[object] = (),
    templates: Mapping[str, str] | Path | str | None = None,
    entry_points: bool = True,
    allow_plugin_problems: bool = False,
    directory: Path | None = None,
    **settings: Any,
) -> AsyncIterator[RouterHarness]:
    """Run a real router on ``rules`` (the text of a rules.yaml) until the block ends.

    :param plugins: modules or objects with ``@hookimpl`` functions, loaded as
        ``load_plugins(extra=plugins)`` does; a module that is also installed through an
        entry point is loaded once, from here.
    :param templates: ``None`` for the templates shipped with the router, a dict of file
        name to template source written to a temporary directory, or a directory to use
        as is.
    :param entry_points: also load installed plugins (the built-in channels among them).
    :param allow_plugin_problems: start even if a plugin failed to load (see
        ``harness.plugins.problems``); by default that raises ``PluginLoadError``.
    :param directory: where to put the rules file, store and templates (default: a
        temporary directory removed afterwards).
    :param settings: any ``Settings`` field (``max_attempts=2``, ``plugins_dir=...``);
        the defaults shorten retry backoff. ``ROUTER_*`` environment variables are ignored.

    Raises ``ConfigErrors`` (importable from here) when the rules file is invalid, as
    ``router validate`` would report it.
    """
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="router-")))
        directory.mkdir(parents=True, exist_ok=True)
        rules_file = directory / "rules.yaml"
        rules_file.write_text(textwrap.dedent(rules))
        options = {
            **TEST_SETTINGS,
            "rules": rules_file,
            "templates": _templates_dir(templates, directory),
            "db": str(directory / "router.db"),
            **settings,
        }
        config = _IsolatedSettings(**options)
        recorder = _OutcomeRecorder()
        plugins = list(plugins)
        loaded = load_plugins(
            plugins_dir=config.plugins_dir,
            extra=[*plugins, recorder],
            entry_points=entry_points,
            blocked=[*config.plugins_block, *_entry_points_providing(plugins)],
        )
        if loaded.problems and not allow_plugin_problems:
            raise PluginLoadError(loaded.problems)
        app = create_app(config, plugins=loaded)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        try:
            await client.start_server()  # runs the app's startup: store, channels, workers
            yield RouterHarness(client, config, recorder)
        finally:
            await client.close()  # drains the dispatcher, closes channels and the store
