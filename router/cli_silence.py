"""``router silence add|list|expire``: silences on the store, like ``router dlq``.

They open the store named by ``--db`` / ``ROUTER_DB`` themselves; a running server
reads the silences from the store about once a second, so a new or expired silence
takes effect there within a couple of seconds.
"""

import getpass
import time
from typing import Any

import click
import orjson

from router.cli_ops import _db_option, _json_option, _when, _with_store, table
from router.delivery_queries import BadQuery
from router.silence_requests import new_silence, silence_dict, silence_state
from router.silences import describe
from router.store import Silence, Store

__all__ = ["silence"]


@click.group()
def silence() -> None:
    """Silences: deliveries they match are recorded as silenced, not sent."""


def _print(silences: list[Silence], as_json: bool) -> None:
    now = time.time()
    if as_json:
        click.echo(orjson.dumps([silence_dict(s, now) for s in silences]).decode())
        return
    if not silences:
        click.echo("no silences")
        return
    rows = [
        (
            s.id,
            silence_state(s, now),
            _when(s.starts_at),
            _when(s.ends_at),
            s.author,
            describe(s.matchers),
            s.comment,
        )
        for s in silences
    ]
    headers = ("ID", "STATE", "STARTS (UTC)", "ENDS (UTC)", "AUTHOR", "MATCHES", "COMMENT")
    click.echo(table(headers, rows))


@silence.command("add")
@click.option("--rule", help="Rule name (glob: course-*).")
@click.option("--channel", help="Channel name (glob).")
@click.option("--event", help="Event name (glob: course_*).")
@click.option(
    "--match",
    "match",
    help='Event field conditions as JSON, as a rule\'s match: \'{"body.course_id": "42"}\'.',
)
@click.option("--for", "duration", help="How long: 30m, 2h, 3d.")
@click.option("--until", "ends_at", help="Or when it ends: ISO 8601 or unix seconds.")
@click.option("--starts", "starts_at", help="When it starts (default now).")
@click.option("--author", help="Who (default: the user running the command).")
@click.option("--comment", default="", help="Why.")
@_db_option
@_json_option
def silence_add(db: str | None, as_json: bool, match: str | None, **fields: Any) -> None:
    """Add a silence; prints it with its id."""
    data: dict[str, Any] = {
        "rule": fields["rule"],
        "channel": fields["channel"],
        "event": fields["event"],
        "for": fields["duration"],
        "ends_at": fields["ends_at"],
        "starts_at": fields["starts_at"],
        "author": fields["author"] or getpass.getuser(),
        "comment": fields["comment"],
    }
    if match:
        try:
            data["match"] = orjson.loads(match)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--match") from None
    try:
        made = new_silence(data)
    except BadQuery as exc:
        raise click.UsageError(str(exc)) from None

    async def add(store: Store) -> Silence:
        await store.add_silence(made)
        return made

    _print([_with_store(db, add)], as_json)


@silence.command("list")
@click.option("--all", "everything", is_flag=True, help="Expired and future ones too.")
@_db_option
@_json_option
def silence_list(everything: bool, db: str | None, as_json: bool) -> None:
    """List the active silences (with --all, every silence), newest first."""
    now = time.time()
    active_at = None if everything else now
    found = _with_store(db, lambda store: store.list_silences(active_at=active_at))
    _print(found, as_json)


@silence.command("expire")
@click.argument("silence_id", metavar="ID")
@_db_option
@_json_option
def silence_expire(silence_id: str, db: str | None, as_json: bool) -> None:
    """End a silence now."""
    ended = _with_store(db, lambda store: store.expire_silence(silence_id, now=time.time()))
    if ended is None:
        raise click.ClickException(f"no silence {silence_id}")
    _print([ended], as_json)
