"""Hot reload of the rules file and templates: the new files are validated first and
swapped in whole; a bad file leaves the running rules in place and its errors in the
``ReloadStatus`` (which ``/readyz`` shows).

What triggers a reload (SIGHUP, a changed file, ``POST /-/reload``) is the HTTP edge's
business (``router/http/reload.py``); what a reload does is here, and works without a
server: ``swap`` puts new rules and channels in place, ``reload_rules`` builds them
first and records the outcome.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from router.config_source import ConfigError, ConfigErrors
from router.dispatch import ChannelRuntime, Dispatcher, close_channels, open_channels
from router.logs import update_redactor
from router.routing import Router
from router.rules import UNKNOWN_CHANNEL_TYPE
from router.source_manager import SourceManager

log = logging.getLogger(__name__)

__all__ = ["Live", "ReloadStatus", "reload_rules", "swap"]


@dataclass
class Live:
    """What a reload swaps in: the router (rules and templates). The app's state is
    fixed once it starts, so the swap happens inside this holder."""

    router: Router


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
    #: Replaced channels still closing (held here: the loop keeps only weak references).
    retiring: set["asyncio.Task[None]"] = field(default_factory=set, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "at": self.at,
            "trigger": self.trigger,
            "errors": self.errors,
            "warnings": self.warnings,
        }


async def swap(live: Live, dispatcher: Dispatcher, router: Router) -> "asyncio.Task[None]":
    """Put ``router`` and its channels in place of the running ones.

    A channel whose definition did not change keeps running as it is (its in-flight
    sends, circuit breaker and rate limit carry on); a new or changed channel is opened
    (a broken one is opened again). The replaced channels are closed once their
    in-flight sends are over, by the returned task.
    """
    old = dispatcher.channels
    kept = {
        name: runtime
        for name, runtime in old.items()
        if router.rules.channels.get(name) == runtime.definition and not runtime.broken
    }
    fresh = await open_channels({n: d for n, d in router.rules.channels.items() if n not in kept})
    dispatcher.channels = {**kept, **fresh}
    live.router = router
    update_redactor(router.rules.redactor())
    retired = {n: r for n, r in old.items() if n not in kept}
    return asyncio.get_running_loop().create_task(_retire(retired))


async def reload_rules(
    live: Live,
    dispatcher: Dispatcher,
    status: ReloadStatus,
    build: Callable[[], Router],
    trigger: str,
    sources: SourceManager | None = None,
    give_up_after: float | None = None,
) -> ReloadStatus:
    """Validate the rules file and templates again (``build``, run in a thread) and, if
    they are good, ``swap`` them in. Records the outcome in ``status`` and returns it.
    A ``build`` that runs past ``give_up_after`` seconds is abandoned (its thread finishes
    on its own: every step of it is bounded) and the running rules stay."""
    async with status.lock:
        try:
            router = await asyncio.wait_for(asyncio.to_thread(build), give_up_after)
        except (ConfigErrors, TimeoutError) as exc:
            if isinstance(exc, ConfigErrors):
                errors = [_reload_error(e) for e in exc.errors]
            else:
                errors = [
                    f"reload abandoned: validating the files took longer than"
                    f" reload_timeout ({give_up_after:g}s)"
                ]
            status.at, status.trigger = time.time(), trigger
            status.ok, status.errors = False, errors
            status.failed += 1
            for error in status.errors:
                log.error("rules reload rejected: %s", error, extra={"trigger": trigger})
            return status
        retiring = await swap(live, dispatcher, router)
        status.retiring.add(retiring)
        retiring.add_done_callback(status.retiring.discard)
        status.at, status.trigger = time.time(), trigger
        status.ok, status.errors = True, []
        status.warnings = [str(warning) for warning in router.rules.warnings]
        status.succeeded += 1
        if sources is not None:  # only the sources whose definition changed restart
            await sources.apply(router.rules.sources)
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


def _reload_error(error: ConfigError) -> str:
    """An error as a reload reports it: a channel type no loaded plugin registers may
    come from a plugin installed since the start, which only a restart loads."""
    text = str(error)
    if error.message.startswith(UNKNOWN_CHANNEL_TYPE):
        text += (
            "; plugins are loaded when the router starts: if you installed the plugin"
            " since, restart the router (a reload does not load plugins)"
        )
    return text


async def _retire(runtimes: dict[str, ChannelRuntime]) -> None:
    """Close replaced channels once their in-flight sends are over."""
    tasks = [task for runtime in runtimes.values() for task in runtime.tasks]
    if tasks:
        await asyncio.wait(tasks)
    await close_channels(runtimes)
