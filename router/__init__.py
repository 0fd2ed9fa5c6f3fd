"""router: a plugin-based notification router for Canvas LMS Live Events and other JSON events.

Plugin authors import everything they need from here::

    from router import hookimpl, Channel, Message, PermanentError, RetryableError
"""

from router.channels import Channel, DeliveryError, Message, PermanentError, RetryableError
from router.hookspecs import hookimpl
from router.sandbox import BoundedSandbox, LimitExceeded, RenderLimits, bounded

__version__ = "0.1.0"

__all__ = [
    "BoundedSandbox",
    "Channel",
    "DeliveryError",
    "LimitExceeded",
    "Message",
    "PermanentError",
    "RenderLimits",
    "RetryableError",
    "__version__",
    "bounded",
    "hookimpl",
]
