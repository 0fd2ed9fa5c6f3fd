"""Operator commands on the store: ``router deliveries`` and ``router dlq ...``.

They open the store named by ``--db`` / ``ROUTER_DB`` themselves, so they work
whether or not ``router serve`` runs on the same SQLite file (WAL mode lets both
in; the server's dispatcher polls, so a replayed delivery goes out within a second).
"""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import click
import orjson

from router.cli_settings import settings_from_options
from router.delivery_queries import (
    REPLAYABLE,
    STATES,
    BadQuery,
    Selector,
    empty_dlq,
    loads_redacted,
    parse_since,
    record_dict,
)
from router.outbox import is_raw_event
from router.plugins import load_plugins
from router.redact import Redactor
from router.routing import build_router
from router.store import DeliveryRecord, Store, open_store

__all__ = ["deliveries", "dlq"]

T = TypeVar("T")

ERROR_WIDTH = 70


def _with_store(db: str | None, action: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store, run ``action`` on it, close it."""
    settings = settings_from_options(db=db)
    path = settings.db.removeprefix("sqlite:///").removeprefix("sqlite://")
    if "://" not in settings.db or settings.db.startswith("sqlite:"):
        if not os.path.exists(path):
            raise click.ClickException(f"no store at {path} (set --db or ROUTER_DB)")

    async def run() -> T:
        store = open_store(_without_replica(settings.db), synchronous=settings.sqlite_synchronous)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _without_replica(url: str) -> str:
    """The store URL minus ``replica=``: a command must never open the store under a
    running replica's name, which would release that replica's leases."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "replica"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redactor(db: str | None) -> Redactor:
    """The usual credential patterns, plus the rules file's secrets when it loads."""
    settings = settings_from_options(db=db)
    try:
        logging.disable(logging.CRITICAL)  # a broken plugin is not this command's topic
        try:
            plugins = load_plugins(plugins_dir=settings.plugins_dir, blocked=settings.plugins_block)
            return build_router(settings, plugins).rules.redactor()
        finally:
            logging.disable(logging.NOTSET)
    except Exception:
        return Redactor()


def _since(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parse_since(value, now=time.time())
    except BadQuery as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _when(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str | None, width: int = ERROR_WIDTH) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], right: frozenset[int] = frozenset()
) -> str:
    """An aligned text table: a header line, then one line per row."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if i in right else value.ljust(width)
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def _print_records(records: list[DeliveryRecord], redact: Redactor, *, as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps([record_dict(r, redact) for r in records]).decode())
        return
    if not records:
        click.echo("no deliveries match")
        return
    rows = [
        (
            r.id,
            r.state,
            r.attempts,
            _when(r.updated_at),
            r.event_name,
            r.rule,
            r.channel,
            _note(r, redact),
        )
        for r in records
    ]
    headers = ("ID", "STATE", "ATTEMPTS", "UPDATED (UTC)", "EVENT", "RULE", "CHANNEL", "LAST ERROR")
    click.echo(table(headers, rows, right=frozenset({0, 2})))


def _note(record: DeliveryRecord, redact: Redactor) -> str:
    """The last column: the last error, or why a delivery waits or was not sent."""
    if record.state == "held":
        return f"held until {_when(record.next_attempt_at)} UTC (quiet hours)"
    if record.state == "silenced":
        return f"silenced by {record.silence}"
    return _short(redact(record.last_error or ""))


def _db_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--db", help="Store: a SQLite file (default router.db). [env: ROUTER_DB]")(
        function
    )


def _filter_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--since", help="Changed since: 1h / 30m / 2d ago, unix seconds or ISO 8601 time."
    )(function)
    function = click.option("--rule", help="Only this rule.")(function)
    return click.option("--channel", help="Only this channel.")(function)


_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
_limit_option = click.option(
    "--limit", type=click.IntRange(1, 100_000), default=50, show_default=True
)


@click.command()
@_db_option
@click.option("--state", type=click.Choice(STATES), help="Only deliveries in this state.")
@_filter_options
@_limit_option
@_json_option
def deliveries(
    db: str | None,
    state: str | None,
    channel: str | None,
    rule: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List deliveries, newest first."""
    after = _since(since)
    records = _with_store(
        db,
        lambda store: store.list_deliveries(
            state=state,  # type: ignore[arg-type]
            channel=channel,
            rule=rule,
            since=after,
            limit=limit,
        ),
    )
    _print_records(records, _redactor(db), as_json=as_json)


@click.group()
def dlq() -> None:
    """The dead-letter queue: list, show, replay, purge."""


@dlq.command("list")
@_db_option
@_filter_options
@_limit_option
@_json_option
def dlq_list(
    db: str | None,
    channel: str | None,
    rule: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List dead letters, newest first, with attempts and last error."""
    after = _since(since)

    async def listing(store: Store) -> tuple[list[DeliveryRecord], int]:
        records = await store.list_deliveries(
            state="dead", channel=channel, rule=rule, since=after, limit=limit
        )
        return records, (await store.counts()).dead

    records, total = _with_store(db, listing)
    if not records and not as_json:
        click.echo(empty_dlq(total))
        return
    _print_records(records, _redactor(db), as_json=as_json)


@dlq.command("show")
@click.argument("delivery_id", type=int, metavar="ID")
@_db_option
@_json_option
def dlq_show(delivery_id: int, db: str | None, as_json: bool) -> None:
    """Show one dead letter: its error, rendered message and event."""
    detail = _with_store(db, lambda store: store.get_delivery(delivery_id))
    if detail is None or detail.record.state != "dead":
        raise click.ClickException(f"no dead letter {delivery_id}")
    redact = _redactor(db)
    message = loads_redacted(detail.message, redact)
    event = loads_redacted(detail.event, redact)
    record = record_dict(detail.record, redact)
    if as_json:
        click.echo(orjson.dumps({"delivery": record, "message": message, "event": event}).decode())
        return
    fields = [
        ("id", record["id"]),
        ("key", record["key"]),
        ("event", f"{record['event_name']} {record['event_id']}"),
        ("rule", record["rule"]),
        ("channel", record["channel"]),
        ("attempts", record["attempts"]),
        ("created", _when(record["created_at"]) + " UTC"),
        ("died", _when(record["updated_at"]) + " UTC"),
        ("last error", record["last_error"] or "-"),
    ]
    click.echo(table(("FIELD", "VALUE"), fields))
    if isinstance(message, dict) and is_raw_event(message):
        click.echo("\nmessage: the raw event (the channel renders no template)")
    elif isinstance(message, dict):
        click.echo(f"\nmessage title: {message.get('title', '')}")
        for line in str(message.get("text", "")).splitlines():
            click.echo(f"  | {line}")
        if message.get("recipient"):
            click.echo("\nrecipient:")
            click.echo(orjson.dumps(message["recipient"], option=orjson.OPT_INDENT_2).decode())
        if message.get("canvas"):
            click.echo("\nCanvas data used (enrich:):")
            click.echo(orjson.dumps(message["canvas"], option=orjson.OPT_INDENT_2).decode())
    click.echo("\nevent:")
    click.echo(orjson.dumps(event, option=orjson.OPT_INDENT_2).decode())


def _selector(
    ids: tuple[int, ...], everything: bool, state: str = "dead", **filters: str | None
) -> Selector:
    selector = Selector(
        list(ids) or None,
        all=everything,
        channel=filters["channel"],
        rule=filters["rule"],
        since=_since(filters["since"]),
        state=state,
    )
    if selector.empty:
        raise click.UsageError("say which dead letters: IDs, --all, or --channel/--rule/--since")
    return selector


def _selection_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """IDs, ``--all`` and the filters: which dead letters a replay or purge is about."""
    function = _filter_options(function)
    function = click.option(
        "--all", "everything", is_flag=True, help="Every dead letter (narrowed by filters)."
    )(function)
    return click.argument("ids", type=int, nargs=-1, metavar="[ID]...")(function)


_state_option = click.option(
    "--state",
    type=click.Choice(REPLAYABLE),
    default="dead",
    show_default=True,
    help="Silenced or muted deliveries instead of dead letters.",
)


@dlq.command("replay")
@_selection_options
@_state_option
@_db_option
@_json_option
def dlq_replay(
    ids: tuple[int, ...],
    everything: bool,
    channel: str | None,
    rule: str | None,
    since: str | None,
    state: str,
    db: str | None,
    as_json: bool,
) -> None:
    """Put dead letters (or silenced or muted deliveries) back in the queue; they keep
    their idempotency keys."""
    selector = _selector(ids, everything, state, channel=channel, rule=rule, since=since)
    count = _with_store(
        db,
        lambda store: store.replay(
            now=time.time(),
            state=selector.state,  # type: ignore[arg-type]
            **selector.store_args(),
        ),
    )
    what = "dead letter(s)" if state == "dead" else f"{state} deliveries"
    click.echo(
        orjson.dumps({"replayed": count}).decode() if as_json else f"replayed {count} {what}"
    )


@dlq.command("purge")
@_selection_options
@_state_option
@_db_option
@_json_option
def dlq_purge(
    ids: tuple[int, ...],
    everything: bool,
    channel: str | None,
    rule: str | None,
    since: str | None,
    state: str,
    db: str | None,
    as_json: bool,
) -> None:
    """Delete dead letters (or silenced or muted deliveries) for good."""
    selector = _selector(ids, everything, state, channel=channel, rule=rule, since=since)
    count = _with_store(
        db,
        lambda store: store.purge(
            state=selector.state,  # type: ignore[arg-type]
            **selector.store_args(),
        ),
    )
    what = "dead letter(s)" if state == "dead" else f"{state} deliveries"
    click.echo(orjson.dumps({"purged": count}).decode() if as_json else f"purged {count} {what}")
