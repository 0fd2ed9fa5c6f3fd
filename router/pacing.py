"""Ingest first: during a burst, routing and delivery give way to ``POST /events``.

An event answered 202 is already durable, so the router can take Canvas' burst at
full speed and catch up on routing and delivery afterwards. While many ingest
requests are in flight at once (the sign that the CPU is the limit), background
work gets at most ``share`` of the time; with spare CPU it runs flat out.
"""

import asyncio

__all__ = ["IngestPressure"]

CROWDED = 8  # ingest requests in flight at once that mean "the CPU is the limit"
LONGEST_PAUSE = 0.1


class IngestPressure:
    """Counts ingest requests in flight and paces background work against them."""

    def __init__(self, share: float = 0.1) -> None:
        self.share = share
        self.in_flight = 0

    @property
    def crowded(self) -> bool:
        """Whether ingest is saturating the CPU right now."""
        return self.in_flight >= CROWDED and self.share < 1.0

    async def give_way(self, worked: float) -> None:
        """After ``worked`` seconds of background work, pause so that it gets at
        most ``share`` of the time while ingest is crowded."""
        if self.crowded:
            await asyncio.sleep(min(LONGEST_PAUSE, worked * (1 - self.share) / self.share))
