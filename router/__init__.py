"""router: a plugin-based notification router for Canvas LMS Live Events and other JSON events.

Plugin authors import everything they need from here::

    from router import hookimpl, Channel, Message, PermanentError, RetryableError
    from router import Source, SourceConfig, SourceHost, IngestUnavailable
"""

from router.channels import Channel, DeliveryError, Message, PermanentError, RetryableError
from router.hookspecs import hookimpl
from router.sources import (
    BadRequest,
    IngestUnavailable,
    InvalidEvents,
    ParsedEvent,
    Source,
    SourceConfig,
    SourceHost,
    Submitted,
)

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "Channel",
    "DeliveryError",
    "IngestUnavailable",
    "InvalidEvents",
    "Message",
    "ParsedEvent",
    "PermanentError",
    "RetryableError",
    "Source",
    "SourceConfig",
    "SourceHost",
    "Submitted",
    "__version__",
    "hookimpl",
]
