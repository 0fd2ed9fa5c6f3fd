"""What triggers a rules reload: SIGHUP, a changed rules or template file, and
``POST /-/reload``. The reload itself is ``router.reload.reload_rules``."""

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from router.http.keys import DISPATCHER, LIVE, PLUGINS, RELOAD, SETTINGS, SOURCES
from router.reload import ReloadStatus, reload_rules
from router.routing import build_router

__all__ = ["post_reload", "reload_ctx", "reload_now"]


async def reload_now(app: web.Application, trigger: str) -> ReloadStatus:
    """Reload the app's rules file and templates; the outcome is also in ``app[RELOAD]``."""
    settings, plugins = app[SETTINGS], app[PLUGINS]
    return await reload_rules(
        app[LIVE],
        app[DISPATCHER],
        app[RELOAD],
        lambda: build_router(settings, plugins),
        trigger,
        sources=app[SOURCES] if SOURCES in app else None,
        give_up_after=settings.reload_timeout,
    )


def _fingerprint(rules: Path, templates: Path) -> tuple[tuple[str, float, int, int], ...]:
    paths = [rules, *sorted(templates.rglob("*"))] if templates.is_dir() else [rules]
    found = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        # The inode too: a Kubernetes ConfigMap volume updates by pointing a symlink
        # at a new directory, and a copy that keeps mtimes (cp -p, rsync -a) can leave
        # size and mtime as they were.
        found.append((str(path), stat.st_mtime, stat.st_size, stat.st_ino))
    return tuple(found)


async def _watch(app: web.Application, every: float) -> None:
    settings = app[SETTINGS]
    seen = await asyncio.to_thread(_fingerprint, settings.rules, settings.templates)
    while True:
        await asyncio.sleep(every)
        now = await asyncio.to_thread(_fingerprint, settings.rules, settings.templates)
        if now != seen:
            seen = now
            await reload_now(app, "file change")


async def reload_ctx(app: web.Application) -> AsyncIterator[None]:
    """SIGHUP and file-change triggers, for the life of the app."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[ReloadStatus]] = set()

    def on_sighup() -> None:
        task = loop.create_task(reload_now(app, "SIGHUP"))
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
    status = await reload_now(request.app, "POST /-/reload")
    return web.json_response(status.as_dict(), status=200 if status.ok else 422)
