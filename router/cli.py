"""The ``router`` command line: serve, validate, plugins."""

import logging
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
from aiohttp import web

from router import __version__
from router.cli_ops import _with_store, deliveries, dlq, table
from router.cli_settings import settings_from_options
from router.cli_silence import silence
from router.config_source import ConfigErrors
from router.delivery_queries import BadQuery, parse_since
from router.dryrun import DryRunError, EventReport, dry_run
from router.history import diff, preview, read_history
from router.http.app import create_app
from router.http.keys import LIVE, PLUGINS
from router.logs import setup_logging, update_redactor
from router.outbox import PluginRaised, is_raw_event, log_only_reason
from router.plugins import Plugins, load_plugins
from router.redact import Redactor
from router.routing import Router, build_router
from router.rules import RuleSet
from router.settings import Settings
from router.store import StoreOpenError, served, sqlite_path

log = logging.getLogger("router")


def _print_plugin_problems(plugins: Plugins) -> None:
    for problem in plugins.problems:
        click.echo(f"warning: {problem}", err=True)


def _print_rule_warnings(rules: RuleSet) -> None:
    for warning in rules.warnings:
        click.echo(f"warning: {_one_line(str(warning))}", err=True)


def _one_line(message: str) -> str:
    """A message on one line: one problem per line, whatever a library's text holds."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _env(name: str) -> str:
    return f"[env: ROUTER_{name.upper()}]"


TEMPLATES_HELP = "Templates dir (default: ./templates if present, else the shipped ones)."
_templates_option = click.option(
    "--templates", type=click.Path(path_type=Path), help=TEMPLATES_HELP
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="router")
def cli() -> None:
    """A plugin-based notification router for Canvas LMS Live Events and other JSON events.

    Every option of `serve` can also be set through the environment variable shown
    beside it; the command line wins over the environment.
    """


@cli.command()
@click.option("--rules", type=click.Path(path_type=Path), help=f"Rules file. {_env('rules')}")
@click.option(
    "--templates",
    type=click.Path(path_type=Path),
    help=f"{TEMPLATES_HELP} {_env('templates')}",
)
@click.option("--db", help=f"Store: a SQLite file (default router.db). {_env('db')}")
@click.option("--host", help=f"Listen address (default 127.0.0.1). {_env('host')}")
@click.option("--port", type=int, help=f"Listen port (default 8080). {_env('port')}")
@click.option(
    "--plugins-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help=f"Directory of drop-in plugin .py files. {_env('plugins_dir')}",
)
@click.option("--log-level", help=f"DEBUG, INFO, WARNING, ERROR. {_env('log_level')}")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    help=f"Log lines as JSON or text (auto: text on a terminal). {_env('log_format')}",
)
def serve(**options: Any) -> None:
    """Run the service: POST /events, /healthz, /readyz, /metrics, the status page at /.

    The rules and templates reload on SIGHUP and when their files change; a bad
    file is rejected and the running rules stay.

    \b
    Other settings, environment only:
      ROUTER_INGEST_TOKEN    bearer token required on POST /events (or in the path:
                             POST /events/<token>, for Canvas HTTPS subscriptions)
      ROUTER_ADMIN_TOKEN     enables the admin API under /-/ (reload, deliveries, dead
                             letters), bearer token; also guards the status page
      ROUTER_RETENTION       keep delivered deliveries and routed events this long (7d)
      ROUTER_RETENTION_INTERVAL  seconds between retention passes (300; 0: off)
      ROUTER_RELOAD_POLL     seconds between checks for changed rules/templates (2; 0: off)
      ROUTER_JWKS_URL        JWKS for Canvas signed (JWT) deliveries
      ROUTER_JWT_AUDIENCE / ROUTER_JWT_ISSUER / ROUTER_REQUIRE_SIGNED
      ROUTER_MAX_BODY_BYTES (1 MiB)  ROUTER_MAX_BATCH_ITEMS (1000)
      ROUTER_DEDUPE_WINDOW (86400 s)  ROUTER_MAX_ATTEMPTS (10)  ROUTER_MAX_AGE (86400 s)
      ROUTER_BACKOFF_BASE (1 s)  ROUTER_BACKOFF_CAP (600 s)  ROUTER_SHUTDOWN_GRACE (10 s)
      ROUTER_SQLITE_SYNCHRONOUS (FULL|NORMAL)  ROUTER_PLUGINS_BLOCK (JSON list)
      ROUTER_BACKGROUND_SHARE (0.1) CPU share of routing/delivery during an ingest burst
      ROUTER_READ_TIMEOUT (30 s) to send a request's head, then its body (else closed/408)
      ROUTER_RELOAD_TIMEOUT (30 s) before a reload still validating is abandoned
      ROUTER_PUBLIC_URL      where people reach the router; https:// makes the status
                             page's session cookie Secure behind a TLS proxy
      ROUTER_TRACE_PLUGINS=1 logs every hook call
    """
    settings = settings_from_options(**options)
    # The SQLite writer thread needs the GIL to start each group commit. While it
    # waits behind a busy event loop, more requests join the next commit; too short
    # an interval spends the CPU on thread switches instead. Alternating runs of
    # bench/ingest.py's load: 2 ms +16 % requests/s over 0.5 ms; 1 ms +8 %; 5 ms
    # within noise of 2 ms. At a trickle the loop is idle and nothing waits.
    sys.setswitchinterval(0.002)
    setup_logging(settings.log_level, settings.log_format, Redactor())
    plugins = load_plugins(plugins_dir=settings.plugins_dir, blocked=settings.plugins_block)
    try:
        app = create_app(settings, plugins=plugins)
    except ConfigErrors as exc:
        for error in exc.errors:
            click.echo(_one_line(str(error)), err=True)
        for warning in exc.warnings:
            click.echo(f"warning: {_one_line(str(warning))}", err=True)
        click.echo(f"{len(exc.errors)} error(s) in {settings.rules}; not starting.", err=True)
        sys.exit(1)
    for warning in app[LIVE].router.rules.warnings:
        log.warning("rules file: %s", warning)
    try:
        import uvloop  # optional speed-up

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    runner_kwargs: dict[str, Any] = {}
    if loop_factory is not None:
        runner_kwargs["loop"] = loop_factory()
    try:
        with served(settings.db):
            web.run_app(
                app,
                host=settings.host,
                port=settings.port,
                shutdown_timeout=settings.shutdown_grace,
                # A connection that sends no complete request head in this time is closed
                # (aiohttp arms this timer when the connection opens): no slowloris.
                keepalive_timeout=settings.read_timeout,
                access_log=None,
                # aiohttp's banner comes once the port is bound: say what runs then,
                # not before a taken port or a served store ends it.
                print=lambda _banner: _startup_summary(settings, app),
                **runner_kwargs,
            )
    except StoreOpenError as exc:
        click.echo(f"error: cannot open the store {_store_name(settings.db)}: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # the port is taken, the address is not ours, ...
        reason = exc.strerror or str(exc)
        click.echo(f"error: cannot listen on {settings.host}:{settings.port}: {reason}", err=True)
        sys.exit(1)
    log.info("stopped")


def _startup_summary(settings: Settings, app: web.Application) -> None:
    """Say what is about to run: one structured log line, and for a person reading a
    terminal (text logs) the same as a readable block."""
    update_redactor(app[LIVE].router.rules.redactor())
    summary = startup_summary(settings, app)
    use_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not sys.stderr.isatty()
    )
    if use_json:
        log.info(summary.pop("headline"), extra=summary)
        return
    click.echo(summary["headline"], err=True)
    for key, value in summary.items():
        if key != "headline":
            click.echo(f"  {key.replace('_', ' ') + ':':<13} {value}", err=True)


def startup_summary(settings: Settings, app: web.Application) -> dict[str, str]:
    """What ``router serve`` runs: address, store, rules, channels, plugins, log-only
    channels (and why), and the operations endpoints. Credentials never appear."""
    rules = app[LIVE].router.rules
    plugins = app[PLUGINS]
    log_only = []
    for name, channel in rules.channels.items():
        try:
            reason = log_only_reason(channel, channel.type.cls(name, channel.config))
        except Exception as exc:  # a plugin's own code: its type only (its text may hold a secret)
            cause = exc.__cause__ if isinstance(exc, PluginRaised) else exc
            reason = f"cannot tell: {type(cause).__name__}"
        if reason:
            log_only.append(f"{name} ({reason})")
    base = f"http://{settings.host}:{settings.port}"
    admin = settings.admin_token is not None
    summary = {
        "headline": f"router {__version__} listening on {base}",
        "store": _store_label(settings.db),
        "rules_file": f"{settings.rules} ({len(rules.rules)} rules)"
        f"; templates {settings.templates}",
        "channels": ", ".join(f"{n} ({c.type.name})" for n, c in rules.channels.items()) or "none",
        "sources": ", ".join(f"{n} ({s.type.name})" for n, s in rules.sources.items())
        or "none besides POST /events",
        "log_only": ", ".join(log_only) or "none: every channel sends for real",
        "plugins": ", ".join(f"{i.name} {i.version or ''}".strip() for i in plugins.infos)
        + "".join(f"; FAILED {problem}" for problem in plugins.problems),
        "ingest": "POST /events"
        + (
            " (needs ROUTER_INGEST_TOKEN, as a bearer token or POST /events/<token>)"
            if settings.ingest_token
            else " (no token required)"
        ),
        "operations": f"status page {base}/"
        + (" (admin token required)" if admin else "")
        + f", metrics {base}/metrics, {base}/healthz, {base}/readyz",
        "admin_api": f"{base}/-/ (needs ROUTER_ADMIN_TOKEN)"
        if admin
        else "off (set ROUTER_ADMIN_TOKEN to enable)",
        "retention": f"{_seconds(settings.retention)}"
        + (
            f", checked every {_seconds(settings.retention_interval)}"
            if settings.retention_interval
            else " (off: ROUTER_RETENTION_INTERVAL=0)"
        ),
    }
    return {key: rules.redactor()(value) for key, value in summary.items()}


def _store_name(db: str) -> str:
    """The store's URL with its password hidden, or the SQLite file's path."""
    path = sqlite_path(db)
    if path is None or "://" in path:  # a server's URL, known or not: hide a password
        return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", db)
    return path


def _store_label(db: str) -> str:
    name = _store_name(db)
    if "://" in name:
        return name
    path = Path(name)
    size = f", {path.stat().st_size / 1048576:.1f} MiB" if path.exists() else ", new"
    return f"{path} (SQLite{size})"


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"


@cli.command()
@click.argument("file", type=click.Path(path_type=Path), default=None, required=False)
@_templates_option
@click.option("--plugins-dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--strict", is_flag=True, help="Warnings fail too (exit 1): for CI.")
def validate(
    file: Path | None, templates: Path | None, plugins_dir: Path | None, strict: bool
) -> None:
    """Check a rules file (default: rules.yaml) and its templates; exit 1 on any error.

    Every error is printed as file:line:col: path.to.key: message. Warnings (an event
    name one slip from a Canvas event, a channel no rule notifies, a plugin that did
    not load) do not fail the check unless --strict is given.
    """
    settings = settings_from_options(rules=file, templates=templates, plugins_dir=plugins_dir)
    plugins = load_plugins(plugins_dir=settings.plugins_dir, blocked=settings.plugins_block)
    _print_plugin_problems(plugins)
    try:
        router = build_router(settings, plugins)
    except ConfigErrors as exc:
        # The report is one stream, as a linter's: every error, the warnings, then the
        # count on a line of its own, in that order however the output is captured.
        for error in exc.errors:
            click.echo(_one_line(str(error)))
        for warning in exc.warnings:
            click.echo(f"warning: {_one_line(str(warning))}")
        warned = len(exc.warnings) + len(plugins.problems)
        click.echo(f"{len(exc.errors)} error(s)" + (f", {warned} warning(s)" if warned else ""))
        sys.exit(1)
    rules = router.rules
    _print_rule_warnings(rules)
    warnings = len(rules.warnings) + len(plugins.problems)
    if strict and warnings:
        click.echo(f"{warnings} warning(s), and --strict", err=True)
        sys.exit(1)
    sources = f", {len(rules.sources)} sources" if rules.sources else ""
    click.echo(
        f"{settings.rules}: OK ({len(rules.rules)} rules, {len(rules.channels)} channels{sources})"
    )


@cli.command("test")
@click.argument("rules_file", type=click.Path(path_type=Path))
@click.argument("events", type=click.Path(path_type=Path), nargs=-1)
@_templates_option
@click.option("--plugins-dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--explain", is_flag=True, help="Say why each other rule did not fire.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--db", help="Instead of EVENTS: the events stored here (SQLite path or PostgreSQL URL)."
)
@click.option("--since", default="1d", show_default=True, help="With --db: how far back.")
@click.option(
    "--show", type=click.IntRange(0, 10_000), default=0, help="With --db: show N messages."
)
@click.option(
    "--diff",
    "current",
    type=click.Path(path_type=Path),
    help="With --db: compare with these rules (those in force), per rule and channel.",
)
def test_rules(
    rules_file: Path,
    events: tuple[Path, ...],
    templates: Path | None,
    plugins_dir: Path | None,
    explain: bool,
    as_json: bool,
    db: str | None,
    since: str,
    show: int,
    current: Path | None,
) -> None:
    """Dry run: which rules fire for each event in EVENTS and the rendered message per
    channel. Nothing is sent. EVENTS are JSON files (one event or an array) or NDJSON.
    Each event is routed at its own time (metadata.event_time): quiet hours show.

    Stored state is not consulted: throttles never suppress and `changed` only sees
    what the event itself carries (syllabus_updated's old_syllabus_body).

    With --db instead of EVENTS: what the rules would have sent for the events stored
    since --since, counted per rule and channel (read only; works while `router serve`
    runs on the same store).
    """
    if db is None and not events:
        raise click.UsageError("give EVENTS files, or --db to try the rules on stored events")
    if db is not None and events:
        raise click.UsageError("give EVENTS files or --db, not both")
    settings = settings_from_options(rules=rules_file, templates=templates, plugins_dir=plugins_dir)
    loaded = load_plugins(plugins_dir=settings.plugins_dir, blocked=settings.plugins_block)
    _print_plugin_problems(loaded)
    try:
        router = build_router(settings, loaded)
        _print_rule_warnings(router.rules)
        if db is not None:
            in_force = None
            if current is not None:
                in_force = build_router(
                    settings_from_options(
                        rules=current, templates=templates, plugins_dir=plugins_dir
                    ),
                    loaded,
                )
            _test_on_history(router, in_force, db, since, show, as_json)
            return
        reports = dry_run(router, list(events))
    except ConfigErrors as exc:
        for error in exc.errors:
            click.echo(_one_line(str(error)), err=True)
        for warning in exc.warnings:
            click.echo(f"warning: {_one_line(str(warning))}", err=True)
        sys.exit(1)
    except DryRunError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(orjson.dumps([r.as_dict() for r in reports], option=orjson.OPT_INDENT_2))
        return
    for report in reports:
        _print_report(report, explain)


def _test_on_history(
    router: Router, in_force: Router | None, db: str, since: str, show: int, as_json: bool
) -> None:
    """``router test --db``: the preview of ``router`` (and its diff with ``in_force``)."""
    try:
        start = parse_since(since, now=time.time())
    except BadQuery as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    events, truncated = _with_store(db, lambda store: read_history(store, since=start))
    result = preview(router, events, since=start, show=show)
    result.truncated = truncated
    before = preview(in_force, events, since=start) if in_force is not None else None
    if as_json:
        data = result.as_dict()
        if before is not None:
            data["diff"] = diff(result, before)
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        return
    click.echo(
        f"{result.events} event(s) stored since {datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M}"
        " UTC" + (" (the oldest were not read: too many)" if truncated else "")
    )
    if before is not None:
        rows = [
            (d["rule"], d["channel"], d["current"], d["new"], f"{d['change']:+d}")
            for d in diff(result, before)
        ]
        click.echo(
            table(("RULE", "CHANNEL", "IN FORCE", "NEW", "CHANGE"), rows, frozenset({2, 3, 4}))
        )
    else:
        rows = [
            (rule, channel, count, result.throttled[(rule, channel)], result.muted[(rule, channel)])
            for (rule, channel), count in sorted(result.sent.items())
        ]
        if rows:
            headers = ("RULE", "CHANNEL", "WOULD SEND", "THROTTLED", "MUTED")
            click.echo(table(headers, rows, frozenset({2, 3, 4})))
        else:
            click.echo("nothing would have been sent")
    for (rule, channel), count in sorted(result.errors.items()):
        click.echo(f"error: {rule} -> {channel}: {count} message(s) would fail to render")
    for message in result.messages:
        when = datetime.fromtimestamp(message["received_at"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"\n{when} {message['event_name']} {message['rule']} -> {message['channel']}")
        if is_raw_event(message):
            click.echo("  sends the raw event (no template)")
            continue
        click.echo(f"  title: {message.get('title', '')}")
        for line in str(message.get("text", "")).splitlines():
            click.echo(f"  | {line}")


def _print_report(report: EventReport, explain: bool) -> None:
    click.echo(f"{report.file}[{report.index}] {report.event_name} (id {report.event_id})")
    if not report.fired:
        click.echo("  no rule fired")
    for message in report.messages:
        click.echo(f"  + {message['rule']} -> {message['channel']}")
        if "error" in message:
            click.echo(f"      error: {message['error']}")
            continue
        muted = message.get("muted")
        if muted and muted["during_mute"] == "hold":
            until = datetime.fromtimestamp(muted["until"], UTC).isoformat(timespec="minutes")
            click.echo(f"      muted at the event's time: held until {until} (quiet hours)")
        elif muted:
            click.echo("      muted at the event's time: dropped (quiet hours, during_mute: drop)")
        if is_raw_event(message):
            click.echo("      sends the raw event (no template)")
            continue
        click.echo(f"      title: {message['title']}")
        for line in message["text"].splitlines() or [""]:
            click.echo(f"      | {line}")
        extra = sorted(set(message.get("blocks", {})) - {"title", "text"})
        if extra:
            click.echo(f"      blocks: {', '.join(extra)}")
    for digest in report.digests:
        click.echo(f"  + {digest['rule']}: joins digest group {digest['group']}")
    if explain:
        for rule, reason in report.skipped.items():
            click.echo(f"  - {rule}: {reason}")


@cli.command()
@click.option("--plugins-dir", type=click.Path(path_type=Path, file_okay=False))
def plugins(plugins_dir: Path | None) -> None:
    """List loaded plugins with their versions, hooks, channel and source types."""
    settings = settings_from_options(plugins_dir=plugins_dir)
    loaded = load_plugins(plugins_dir=settings.plugins_dir, blocked=settings.plugins_block)
    for info in loaded.infos:
        channels = [t.name for t in loaded.channel_types.values() if t.plugin == info.name]
        sources = [t.name for t in loaded.source_types.values() if t.plugin == info.name]
        click.echo(f"{info.name} {info.version or '-'}  ({info.source})")
        click.echo(f"    hooks: {', '.join(info.hooks) or 'none'}")
        if channels:
            click.echo(f"    channel types: {', '.join(channels)}")
        if sources:
            click.echo(f"    source types: {', '.join(sources)}")
    for problem in loaded.problems:
        click.echo(f"FAILED {problem}")
    if loaded.problems:
        sys.exit(1)


cli.add_command(deliveries)
cli.add_command(dlq)
cli.add_command(silence)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
