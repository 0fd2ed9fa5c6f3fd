"""The settings of one ``router`` command: its options over ``ROUTER_*`` environment
variables over the defaults. Shared by every command (``cli.py`` and ``cli_ops.py``)."""

import sys
from typing import Any

import click
from pydantic import ValidationError

from router.settings import Settings

__all__ = ["settings_from_options"]


def settings_from_options(**options: Any) -> Settings:
    """CLI options override ``ROUTER_*`` environment variables, which override defaults.
    An option that is None was not given. Invalid settings are printed, exit 2."""
    given = {key: value for key, value in options.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            name = ".".join(str(part) for part in error["loc"])
            click.echo(f"error: setting {name}: {error['msg']}", err=True)
        sys.exit(2)
