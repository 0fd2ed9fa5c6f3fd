"""router: a plugin-based notification router for Canvas LMS Live Events and other JSON events.

Plugin authors import everything they need from here::

    from router import (
        Channel, ChannelConfig, DeliveryOutcome, Message, PermanentError, RetryableError,
        hookimpl, retry_after_seconds,
    )
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

__version__ = "0.1.0"

__all__ = [
    "BoundedSandbox",
    "Channel",
    "ChannelConfig",
    "DeliveryError",
    "DeliveryOutcome",
    "LimitExceeded",
    "Message",
    "PermanentError",
    "RenderLimits",
    "RetryableError",
    "__version__",
    "bounded",
    "hookimpl",
    "retry_after_seconds",
]
