"""The plugin contract: every hook a plugin may implement, and nothing else.

A plugin is a module (or object) with functions decorated by ``router.hookimpl``
whose names match the specs below. Register it through the ``router`` entry-point
group, or drop a ``.py`` file into ``--plugins-dir``.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from router.channels import Channel, DeliveryOutcome

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("router")
hookimpl = pluggy.HookimplMarker("router")


@hookspec
def register_channels(register: "Callable[[type[Channel]], None]") -> None:
    """Register channel types: call ``register(ChannelClass)`` once per type provided.

    Called once when plugins load. The class must subclass ``router.Channel`` and
    set ``type`` (the name used as ``type:`` in rules.yaml) and ``Config`` (a pydantic
    model that validates the channel's settings when the rules file loads). The host
    rejects duplicate type names and classes that are not channels, naming the plugin.

    :param register: host-owned callback taking one ``Channel`` subclass.

    Example::

        @hookimpl
        def register_channels(register):
            register(TeamsChannel)
    """


@hookspec
def register_template_filters(register: "Callable[[str, Callable[..., Any]], None]") -> None:
    """Register Jinja2 filters for message templates: call ``register(name, function)``.

    Called once when plugins load; filters are available in every template. A name
    already taken by a built-in or another plugin is an error naming the plugin.

    :param register: host-owned callback taking the filter name and a plain function.

    Example::

        @hookimpl
        def register_template_filters(register):
            register("shout", lambda text: str(text).upper() + "!")
    """


@hookspec
def delivery_finished(outcome: "DeliveryOutcome") -> None:
    """Observe a delivery attempt once it has finished (delivered, retried, dead-lettered).

    Called after the outcome is durable, for every attempt and for every delivery born
    dead. Observers must be quick and must not raise; an exception is logged with the
    plugin's name and otherwise ignored.

    :param outcome: what happened: the delivery's key, channel, rule, attempt number,
        status (``delivered``, ``logged``, ``retry``, ``dead``) and error text if any.
        Attempts count from 1; attempt 0 (status ``dead``) is a delivery born dead: its
        message could not be made (a template error, or the plugin's
        ``renders_message`` raised), so nothing was attempted.

    Example::

        @hookimpl
        def delivery_finished(outcome):
            if outcome.status == "dead":
                print("gave up on", outcome.key, outcome.error)
    """
