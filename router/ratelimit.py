"""Per-channel rate limits (``rate_limit: 1/s``), enforced by the dispatcher for every
channel type: a token bucket whose waiters reserve their slot, so concurrent sends
are spaced out in arrival order."""

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

__all__ = ["RateLimiter", "parse_rate"]

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour)")
_SECONDS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
}


def parse_rate(text: str) -> float:
    """``1/s``, ``20/min``, ``100/h``, ``5/10s`` -> sends per second."""
    match = _RATE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError("expects a rate such as 1/s, 20/min or 100/h")
    count, every, unit = float(match[1]), float(match[2] or 1), _SECONDS[match[3]]
    if count <= 0 or every <= 0:
        raise ValueError("a rate must be positive")
    return count / (every * unit)


class RateLimiter:
    """At most ``rate`` acquisitions per second on average, ``burst`` at once."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()

    async def acquire(self) -> float:
        """Wait for a slot; return how long this caller waited."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= 1  # reserve now, so later callers queue behind this one
        if self._tokens >= 0:
            return 0.0
        wait = -self._tokens / self.rate
        await self.sleep(wait)
        return wait
