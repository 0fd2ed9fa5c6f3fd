"""Hot reload of the rules file and templates: on SIGHUP, when a file changes, or on
``POST /-/reload``. The new files are validated first and swapped in whole; a bad
file leaves the running rules in place and its errors on ``/readyz``."""

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from router.appkeys import DISPATCHER, LIVE, PLUGINS, RELOAD, SETTINGS
from router.config_source import ConfigErrors
from router.dispatch import ChannelRuntime, close_channels, open_channels
from router.logs import update_redactor

log = logging.getLogger(__name__)

__all__ = ["ReloadStatus", "reload_ctx", "reload_rules"]


@dataclass
class ReloadStatus:
    """The outcome of the latest reload, and counts of all of them."""

    ok: bool = True
    at: float | None = None
    trigger: str | None = None
    errors: list[str] = field(default_factory=list)
    #: Of the rules running now: likely mistakes that are not errors (rules.py).
    warnings: list[str] = field(default_factory=list)
    succeeded: int = 0
    failed: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "at": self.at,
            "trigger": self.trigger,
            "errors": self.errors,
            "warnings": self.warnings,
        }


async def reload_rules(app: web.Application, trigger: str) -> ReloadStatus:
    """Validate the rules file and templates again and, if they are good, swap them in."""
    from router.app import build_router  # the app module imports this one

    status = app[RELOAD]
    async with status.lock:
        settings = app[SETTINGS]
        try:
            # In a thread, off the event loop; a validation that runs past the timeout
            # is abandoned (its thread finishes on its own: every step is bounded).
            router = await asyncio.wait_for(
                asyncio.to_thread(build_router, settings, app[PLUGINS]),
                settings.reload_timeout,
            )
        except (ConfigErrors, TimeoutError) as exc:
            if isinstance(exc, ConfigErrors):
                errors = [str(e) for e in exc.errors]
            else:
                errors = [
                    f"{settings.rules}: reload abandoned: validating the files took longer"
                    f" than reload_timeout ({settings.reload_timeout:g}s)"
                ]
            status.at, status.trigger = time.time(), trigger
            status.ok, status.errors = False, errors
            status.failed += 1
            for error in status.errors:
                log.error("rules reload rejected: %s", error, extra={"trigger": trigger})
            return status
        dispatcher = app[DISPATCHER]
        old = dispatcher.channels
        kept = {
            name: runtime
            for name, runtime in old.items()
            if router.rules.channels.get(name) == runtime.definition and not runtime.broken
        }
        fresh = await open_channels(
            {n: d for n, d in router.rules.channels.items() if n not in kept}
        )
        dispatcher.channels = {**kept, **fresh}
        app[LIVE].router = router
        update_redactor(router.rules.redactor())
        status.at, status.trigger = time.time(), trigger
        status.ok, status.errors = True, []
        status.warnings = [str(warning) for warning in router.rules.warnings]
        status.succeeded += 1
        retired = {n: r for n, r in old.items() if n not in kept}
        asyncio.get_running_loop().create_task(_retire(retired))
        for warning in status.warnings:
            log.warning("rules file: %s", warning, extra={"trigger": trigger})
        log.info(
            "rules reloaded",
            extra={
                "trigger": trigger,
                "rules": len(router.rules.rules),
                "channels": len(router.rules.channels),
            },
        )
        return status


async def _retire(runtimes: dict[str, ChannelRuntime]) -> None:
    """Close replaced channels once their in-flight sends are over."""
    tasks = [task for runtime in runtimes.values() for task in runtime.tasks]
    if tasks:
        await asyncio.wait(tasks)
    await close_channels(runtimes)


def _fingerprint(rules: Path, templates: Path) -> tuple[tuple[str, float, int], ...]:
    paths = [rules, *sorted(templates.rglob("*"))] if templates.is_dir() else [rules]
    found = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((str(path), stat.st_mtime, stat.st_size))
    return tuple(found)


async def _watch(app: web.Application, every: float) -> None:
    settings = app[SETTINGS]
    seen = await asyncio.to_thread(_fingerprint, settings.rules, settings.templates)
    while True:
        await asyncio.sleep(every)
        now = await asyncio.to_thread(_fingerprint, settings.rules, settings.templates)
        if now != seen:
            seen = now
            await reload_rules(app, "file change")


async def reload_ctx(app: web.Application) -> AsyncIterator[None]:
    """SIGHUP and file-change triggers, for the life of the app."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[ReloadStatus]] = set()

    def on_sighup() -> None:
        task = loop.create_task(reload_rules(app, "SIGHUP"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        hooked = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        hooked = False
    every = app[SETTINGS].reload_poll
    watcher = loop.create_task(_watch(app, every)) if every > 0 else None
    yield
    if hooked:
        loop.remove_signal_handler(signal.SIGHUP)
    if watcher is not None:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def post_reload(request: web.Request) -> web.Response:
    """``POST /-/reload``: reload now; 200 with the result, 422 if the files are bad."""
    status = await reload_rules(request.app, "POST /-/reload")
    return web.json_response(status.as_dict(), status=200 if status.ok else 422)
