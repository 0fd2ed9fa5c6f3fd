"""Whether the store takes writes: what ``/readyz`` says besides "it answers reads".

A full disk leaves the store readable while every write fails, so a read alone would
call the service ready while each ``POST /events`` gets a 503. The writers report
each outcome here; ``/readyz`` is unready while the latest write failed, for
``RECENT`` seconds (then ready again, so that a load balancer sends the request
that finds out whether the store has recovered).
"""

import time
from dataclasses import dataclass

__all__ = ["StoreHealth"]

RECENT = 30.0


@dataclass
class StoreHealth:
    """The latest write's outcome: when writes started failing, and with what error type."""

    failing_since: float | None = None
    last_failure: float | None = None
    error: str | None = None

    def failed(self, exc: BaseException) -> None:
        """A write failed (only the exception's type is kept: messages may hold data)."""
        now = time.time()
        if self.failing_since is None:
            self.failing_since = now
        self.last_failure, self.error = now, type(exc).__name__

    def succeeded(self) -> None:
        """A write went through: the store is healthy again."""
        if self.failing_since is not None:
            self.failing_since = self.last_failure = self.error = None

    def problem(self, now: float | None = None) -> str | None:
        """Why the store is not ready, or None."""
        if self.last_failure is None:
            return None
        now = time.time() if now is None else now
        if now - self.last_failure > RECENT:
            return None
        return f"store writes failing since {self.failing_since:.0f} ({self.error})"
