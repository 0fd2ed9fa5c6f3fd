"""Plugin loading and the typed facade the rest of the router uses to call hooks.

Plugins come from three places, loaded in this order by ``load_plugins``: the
``router`` entry-point group (built-in channels use it too), ``.py`` files in
``--plugins-dir``, and objects passed in by the caller (tests). A plugin that fails
to import or to register is reported by name and skipped; the others still load.
"""

import importlib.metadata
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from router import hookspecs
from router.channels import HOST_KEYS, Channel, ChannelConfig, DeliveryOutcome
from router.ratelimit import parse_rate
from router.sources import Source, SourceConfig

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "router"


@dataclass(frozen=True)
class PluginInfo:
    """What ``router plugins`` shows about one loaded plugin."""

    name: str
    source: str
    version: str | None
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class ChannelType:
    """A registered channel type and the plugin that provided it."""

    name: str
    cls: type[Channel]
    plugin: str


@dataclass(frozen=True)
class SourceType:
    """A registered source type and the plugin that provided it."""

    name: str
    cls: type[Source]
    plugin: str


@dataclass(frozen=True)
class PluginProblem:
    """A plugin that could not be loaded or registered, and why."""

    plugin: str
    message: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r}: {self.message}"


@dataclass
class Plugins:
    """The loaded plugins: registered channel types and filters, and the hook caller."""

    manager: pluggy.PluginManager
    infos: list[PluginInfo] = field(default_factory=list)
    channel_types: dict[str, ChannelType] = field(default_factory=dict)
    source_types: dict[str, SourceType] = field(default_factory=dict)
    filters: dict[str, Callable[..., Any]] = field(default_factory=dict)
    problems: list[PluginProblem] = field(default_factory=list)

    trace: bool = False

    def plugin_name(self, plugin: object) -> str:
        return self.manager.get_name(plugin) or getattr(plugin, "__name__", repr(plugin))

    def call(self, impl: pluggy.HookImpl, hook: str, **kwargs: Any) -> Any:
        """Call one plugin's hook implementation (each is called on its own, so one
        plugin's failure is attributed to it and stops no other)."""
        if self.trace:
            log.info("plugin hook call", extra={"plugin": impl.plugin_name, "hook": hook})
        return impl.function(**kwargs)

    def delivery_finished(self, outcome: DeliveryOutcome) -> list[str]:
        """Tell every observer about an outcome; a crashing observer is logged, not
        raised. Returns the names of the plugins that raised (for the metrics)."""
        failed = []
        for impl in self.manager.hook.delivery_finished.get_hookimpls():
            try:
                self.call(impl, "delivery_finished", outcome=outcome)
            except Exception:
                log.exception("plugin %r failed in delivery_finished", impl.plugin_name)
                failed.append(impl.plugin_name)
        return failed


def _load_file(path: Path) -> ModuleType:
    name = f"router_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_plugins(
    *,
    plugins_dir: Path | None = None,
    extra: Iterable[object] = (),
    entry_points: bool = True,
    blocked: Iterable[str] = (),
) -> Plugins:
    """Build a fresh plugin manager, load every plugin and collect what they register.

    ``blocked`` names entry points not to load (``ROUTER_PLUGINS_BLOCK``).
    """
    manager = pluggy.PluginManager("router")
    manager.add_hookspecs(hookspecs)
    plugins = Plugins(manager=manager, trace=bool(os.environ.get("ROUTER_TRACE_PLUGINS")))
    blocked = set(blocked)

    def add(plugin: object, name: str, source: str, version: str | None) -> None:
        try:
            manager.register(plugin, name=name)
        except Exception as exc:  # PluginValidationError, duplicate names
            plugins.problems.append(PluginProblem(name, f"cannot register: {exc}"))
            return
        hooks = tuple(sorted(caller.name for caller in manager.get_hookcallers(plugin) or []))
        plugins.infos.append(PluginInfo(name, source, version, hooks))

    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in blocked:
                continue
            version = ep.dist.version if ep.dist else None
            try:
                module = ep.load()
            except Exception as exc:
                plugins.problems.append(
                    PluginProblem(ep.name, f"failed to import {ep.value}: {exc!r}")
                )
                continue
            add(module, ep.name, f"entry point {ep.value}", version)
    if plugins_dir is not None:
        for path in sorted(Path(plugins_dir).glob("*.py")):
            try:
                module = _load_file(path)
            except Exception as exc:
                plugins.problems.append(
                    PluginProblem(path.stem, f"failed to import {path}: {exc!r}")
                )
                continue
            add(module, path.stem, str(path), None)
    for index, plugin in enumerate(extra):
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{index}"
        add(plugin, name, "registered in code", None)
    # A hook name that matches no spec (a typo) fails here, at start, not at 3 a.m.
    while True:
        try:
            manager.check_pending()
            break
        except pluggy.PluginValidationError as exc:
            name = manager.get_name(exc.plugin) or repr(exc.plugin)
            plugins.problems.append(PluginProblem(name, str(exc)))
            manager.unregister(exc.plugin)
            plugins.infos = [info for info in plugins.infos if info.name != name]

    _collect_channels(plugins)
    _collect_sources(plugins)
    _collect_filters(plugins)
    for problem in plugins.problems:
        log.error("%s", problem)
    return plugins


def _collect_channels(plugins: Plugins) -> None:
    for impl in plugins.manager.hook.register_channels.get_hookimpls():
        plugin = impl.plugin_name

        def register(cls: type[Channel], plugin: str = plugin) -> None:
            problem = _channel_problem(cls, plugins.channel_types)
            if problem:
                plugins.problems.append(PluginProblem(plugin, problem))
                return
            plugins.channel_types[cls.type] = ChannelType(cls.type, cls, plugin)

        try:
            plugins.call(impl, "register_channels", register=register)
        except Exception as exc:
            plugins.problems.append(PluginProblem(plugin, f"register_channels raised {exc!r}"))


def _channel_problem(cls: object, known: dict[str, ChannelType]) -> str | None:
    if not (inspect.isclass(cls) and issubclass(cls, Channel)):
        return f"registered {cls!r}, which is not a router.Channel subclass"
    name = getattr(cls, "type", None)
    if not isinstance(name, str) or not name:
        return f"channel class {cls.__name__} has no 'type' name"
    if name in known:
        return f"channel type {name!r} is already registered by plugin {known[name].plugin!r}"
    if not (inspect.isclass(cls.Config) and issubclass(cls.Config, ChannelConfig)):
        return f"{cls.__name__}.Config must subclass router.channels.ChannelConfig"
    if not inspect.iscoroutinefunction(cls.send) or cls.send is Channel.send:
        return f"{cls.__name__}.send must be an async method"
    shadowed = sorted(set(cls.Config.model_fields) & set(HOST_KEYS))
    if shadowed:
        return (
            f"{cls.__name__}.Config declares {', '.join(shadowed)}, which the router reads"
            " itself (use self.timeout for the time limit)"
        )
    if cls.default_rate_limit is not None:
        try:
            parse_rate(cls.default_rate_limit)
        except ValueError as exc:
            return f"{cls.__name__}.default_rate_limit {cls.default_rate_limit!r}: {exc}"
    return None


def _collect_sources(plugins: Plugins) -> None:
    for impl in plugins.manager.hook.register_sources.get_hookimpls():
        plugin = impl.plugin_name

        def register(cls: type[Source], plugin: str = plugin) -> None:
            problem = _source_problem(cls, plugins.source_types)
            if problem:
                plugins.problems.append(PluginProblem(plugin, problem))
                return
            plugins.source_types[cls.type] = SourceType(cls.type, cls, plugin)

        try:
            plugins.call(impl, "register_sources", register=register)
        except Exception as exc:
            plugins.problems.append(PluginProblem(plugin, f"register_sources raised {exc!r}"))


def _source_problem(cls: object, known: dict[str, SourceType]) -> str | None:
    if not (inspect.isclass(cls) and issubclass(cls, Source)):
        return f"registered {cls!r}, which is not a router.Source subclass"
    name = getattr(cls, "type", None)
    if not isinstance(name, str) or not name:
        return f"source class {cls.__name__} has no 'type' name"
    if name in known:
        return f"source type {name!r} is already registered by plugin {known[name].plugin!r}"
    if not (inspect.isclass(cls.Config) and issubclass(cls.Config, SourceConfig)):
        return f"{cls.__name__}.Config must subclass router.SourceConfig"
    if not inspect.iscoroutinefunction(cls.run) or cls.run is Source.run:
        return f"{cls.__name__}.run must be an async method"
    if "type" in cls.Config.model_fields:
        return f"{cls.__name__}.Config declares 'type', which the router reads itself"
    return None


def _collect_filters(plugins: Plugins) -> None:
    for impl in plugins.manager.hook.register_template_filters.get_hookimpls():
        plugin = impl.plugin_name

        def register(name: str, function: Callable[..., Any], plugin: str = plugin) -> None:
            if name in plugins.filters:
                plugins.problems.append(PluginProblem(plugin, f"filter {name!r} already exists"))
            elif not callable(function):
                plugins.problems.append(PluginProblem(plugin, f"filter {name!r} is not callable"))
            else:
                plugins.filters[name] = function

        try:
            plugins.call(impl, "register_template_filters", register=register)
        except Exception as exc:
            plugins.problems.append(
                PluginProblem(plugin, f"register_template_filters raised {exc!r}")
            )
