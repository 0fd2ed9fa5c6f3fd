"""router: a plugin-based notification router for Canvas LMS Live Events and other JSON events.

Plugin authors import everything they need from here::

    from router import (
        Channel, ChannelConfig, DeliveryOutcome, Message, PermanentError, RetryableError,
        hookimpl, retry_after_seconds,
    )
    from router import IngestUnavailable, Source, SourceConfig, SourceHost, Submitted
"""

from router.channels import (
    Channel,
    ChannelConfig,
    DeliveryError,
    DeliveryOutcome,
    Message,
    PermanentError,
    RetryableError,
    retry_after_seconds,
)
from router.hookspecs import hookimpl
from router.sandbox import BoundedSandbox, LimitExceeded, RenderLimits, bounded
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
    "BoundedSandbox",
    "Channel",
    "ChannelConfig",
    "DeliveryError",
    "DeliveryOutcome",
    "IngestUnavailable",
    "InvalidEvents",
    "LimitExceeded",
    "Message",
    "ParsedEvent",
    "PermanentError",
    "RenderLimits",
    "RetryableError",
    "Source",
    "SourceConfig",
    "SourceHost",
    "Submitted",
    "__version__",
    "bounded",
    "hookimpl",
    "retry_after_seconds",
]
