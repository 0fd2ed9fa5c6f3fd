"""Shared fixtures: a verifying webhook receiver, and a router service built on a
temporary rules file, templates and store.

The store is parametrized over both backends: every test that uses ``service`` (or
``db_url`` / ``store_db``) runs once on SQLite (a file in ``tmp_path``) and once on
PostgreSQL (a schema of its own on the server ``ROUTER_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432/test``, dropped after the test). Without a
reachable server the PostgreSQL runs are skipped, saying why, except under ``CI``,
where they fail. A test that only makes sense on the SQLite file is marked
``@pytest.mark.sqlite_only("why")`` and is generated for SQLite alone.
"""

import asyncio
import contextlib
import os
import shutil
import sqlite3
import textwrap
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient

from router.http.app import create_app
from router.settings import Settings
from tests.receiver import SECRET, WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "events"

PG_DSN = os.environ.get("ROUTER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")


def example(name: str) -> dict[str, Any]:
    """One of the Canvas example payloads (from the Live Events docs)."""
    return orjson.loads((EXAMPLES / f"{name}.json").read_bytes())


def all_examples() -> dict[str, dict[str, Any]]:
    return {path.stem: orjson.loads(path.read_bytes()) for path in sorted(EXAMPLES.glob("*.json"))}


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    hook = WebhookReceiver()
    runner = await hook.start()
    yield hook
    await runner.cleanup()


def count_calls(target: Any, *names: str) -> Counter[str]:
    """Wrap the async methods ``names`` of ``target`` (a store) to count their calls."""
    calls: Counter[str] = Counter()
    for name in names:
        method = getattr(target, name)

        async def counted(*args: Any, _name: str = name, _method: Any = method, **kw: Any) -> Any:
            calls[_name] += 1
            return await _method(*args, **kw)

        setattr(target, name, counted)
    return calls


def webhook_rules(url: str, *, secret: str | None = SECRET, extra_channel: str = "") -> str:
    """A rules file sending every event to ``url``."""
    secret_line = f'secret: "{secret}"' if secret else ""
    return textwrap.dedent(
        f"""\
        version: 1
        channels:
          hook:
            type: webhook
            url: "{url}"
            {secret_line}
            timeout: 5
        {textwrap.indent(textwrap.dedent(extra_channel), "  ")}
        rules:
          - name: everything
            events: ["*"]
            notify: [hook]
        """
    )


# -- PostgreSQL: the test server and per-test schemas ----------------------------------

_unreachable: list[str] = []  # the reason, once a connection attempt failed


def no_postgres(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI, which must test PostgreSQL for real."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


async def pg_admin_connection() -> asyncpg.Connection:
    """A plain connection to the test database, or skip (fail under CI) without one."""
    if _unreachable:
        no_postgres(_unreachable[0])
    try:
        return await asyncpg.connect(PG_DSN, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        _unreachable.append(
            f"PostgreSQL unreachable at {PG_DSN} ({type(exc).__name__}: {exc});"
            " set ROUTER_TEST_POSTGRES to a server with trust or password auth"
        )
        no_postgres(_unreachable[0])


def pg_url(schema: str, **params: str) -> str:
    """The store URL of ``schema`` on the test server, with extra store parameters."""
    extra = "".join(f"&{key}={value}" for key, value in params.items())
    return f"{PG_DSN}?schema={schema}{extra}"


async def drop_pg_schema(conn: asyncpg.Connection, schema: str) -> None:
    # A bounded wait: a store left open by a broken test must not hang the run.
    await conn.execute("SET lock_timeout = '10s'")
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.asynccontextmanager
async def fresh_pg_schema() -> AsyncIterator[str]:
    """A fresh schema name on the test server (the store creates the schema), dropped
    on exit; skips (fails under CI) without a server."""
    conn = await pg_admin_connection()
    name = f"router_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        try:
            await drop_pg_schema(conn, name)
        finally:
            await conn.close()


@pytest.fixture
async def pg_test_schema() -> AsyncIterator[str]:
    """A fresh schema name on the test server, dropped after the test."""
    async with fresh_pg_schema() as name:
        yield name


# -- both backends ---------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only(reason): the test needs the SQLite file; run it on SQLite only",
    )
    config.addinivalue_line(
        "markers",
        "container: builds and runs the container image (minutes); -m 'not container' skips",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        only_sqlite = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize(
            "backend", ["sqlite"] if only_sqlite else list(BACKENDS), indirect=True
        )


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``: the store the test's service runs on."""
    return request.param


@pytest.fixture
async def db_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The store the test's service uses (``--db``): ``tmp_path/router.db`` on SQLite,
    a fresh schema (dropped afterwards) on PostgreSQL."""
    if backend == "sqlite":
        yield str(tmp_path / "router.db")
        return
    async with fresh_pg_schema() as schema:
        yield pg_url(schema)


class StoreDB:
    """Read the test service's store with SQL, on either backend, from outside the
    service (a connection of its own, as another process would see it).

    Write queries with ``?`` placeholders (they become ``$1, $2...`` on PostgreSQL),
    and only SQL both backends understand; the tables and columns are the same.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn: asyncpg.Connection | None = None

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """The result rows as tuples."""
        if not self.postgres:
            with sqlite3.connect(self.url) as conn:
                return [tuple(row) for row in conn.execute(sql, args)]
        return [tuple(row) for row in self._pg_fetch(sql, args)]

    def dicts(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        """The result rows as dicts of column name to value."""
        if not self.postgres:
            with sqlite3.connect(self.url) as conn:
                conn.row_factory = sqlite3.Row
                return [dict(row) for row in conn.execute(sql, args)]
        return [dict(row) for row in self._pg_fetch(sql, args)]

    # PostgreSQL is read by asyncpg on a loop in a thread of its own, so that these
    # methods can be called synchronously (in polling predicates) from async tests.

    def _pg_fetch(self, sql: str, args: tuple[Any, ...]) -> list[asyncpg.Record]:
        parts = sql.split("?")
        numbered = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._fetch(numbered, args), self._loop)
        return future.result(timeout=30)

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[asyncpg.Record]:
        if self._conn is None:
            from router.store.postgres import parse_url

            dsn, params = parse_url(self.url)
            self._conn = await asyncpg.connect(
                dsn, server_settings={"search_path": f'"{params["schema"]}"'}
            )
        return await self._conn.fetch(sql, *args)

    def close(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._conn is not None:
            asyncio.run_coroutine_threadsafe(self._conn.close(), self._loop).result(timeout=10)
            self._conn = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = None


@pytest.fixture
def store_db(db_url: str) -> Iterator[StoreDB]:
    """SQL access to the test service's store, on whichever backend it runs."""
    reader = StoreDB(db_url)
    yield reader
    reader.close()


ServiceFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def service(
    tmp_path: Path, db_url: str, aiohttp_client: Any
) -> AsyncIterator[ServiceFactory]:
    """Build and start a router service: ``await service(rules_yaml, **settings)``.

    Its store is ``db_url``: the test runs once per backend. Every service built is
    closed when the test ends, before its PostgreSQL schema is dropped.
    """
    clients: list[TestClient] = []
    # On PostgreSQL, a fixed replica name, as one process restarted would have: a
    # service the test restarts releases its predecessor's leases at once. (Not in
    # ``db_url``: a CLI opening the store with it would release the service's leases.)
    service_db = db_url + "&replica=test" if db_url.startswith("postgresql://") else db_url

    async def make(rules: str, **overrides: Any) -> TestClient:
        rules_file = tmp_path / "rules.yaml"
        rules_file.write_text(rules)
        templates = tmp_path / "templates"
        if not templates.exists():
            shutil.copytree(ROOT / "templates", templates)
        quick: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.2, "shutdown_grace": 2}
        settings = Settings(
            rules=rules_file, templates=templates, db=service_db, **{**quick, **overrides}
        )
        client = await aiohttp_client(create_app(settings))
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        await client.close()
