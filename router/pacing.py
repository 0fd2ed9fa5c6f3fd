"""Ingest first: during a burst, routing and delivery give way to ``POST /events``.

An event answered 202 is already durable, so the router can take Canvas' burst at
full speed and catch up on routing and delivery afterwards. While many ingest
requests have been in flight for a while (the sign that the CPU is the limit),
background work gets at most ``share`` of the time; with spare CPU it runs flat out.
A pause during which ingest alone kept up ends the burst: then the pile-up came from
the background work itself (routing and delivery needing the whole CPU at a steady
offered rate), and holding that work back would only let the backlog grow.

The background work is measured in wall-clock time, store round trips included. Under
a flood that time also holds the ingest requests served while the work awaited the
store, so it overstates the work, and background work gets less than ``share``, not
more.
"""

import asyncio
import time
from collections.abc import Callable

__all__ = ["IngestPressure"]

CROWDED = 16  # ingest requests in flight at once that mean "the CPU is the limit"...
CROWDED_FOR = 0.05  # ...when it lasts: moments of crowding this close, this long
PAUSE_SLICE = 0.1  # a pause looks this often whether the burst is over
LONGEST_PAUSE = 1.0  # bounds the wait for a notification while a flood lasts


class IngestPressure:
    """Counts ingest requests in flight and paces background work against them."""

    def __init__(self, share: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self.clock = clock
        self.in_flight = 0
        self._episode_start = 0.0  # the first and the latest moment of the current
        self._episode_last = -1.0  # run of crowded moments (none yet: last < start)
        self._area = 0.0  # requests in flight integrated over time, up to _counted_at
        self._counted_at = clock()

    def _count(self) -> float:
        now = self.clock()
        self._area += self.in_flight * (now - self._counted_at)
        self._counted_at = now
        return now

    def enter(self) -> None:
        """An ingest request starts."""
        now = self._count()
        self.in_flight += 1
        if self.in_flight >= CROWDED:
            if now - self._episode_last > CROWDED_FOR:
                self._episode_start = now
            self._episode_last = now

    def leave(self) -> None:
        """An ingest request is answered."""
        self._count()
        self.in_flight -= 1

    @property
    def crowded(self) -> bool:
        """Whether ingest is saturating the CPU: ``CROWDED`` requests in flight again
        and again, no further apart than ``CROWDED_FOR``, for at least that long.
        (Group commit answers requests in bunches, so the count dips between
        moments of crowding.) A short stall, such as a checkpoint or a garbage
        collection, piles requests up too, but they clear at once: pacing then would
        only delay notifications."""
        if self.share >= 1.0:
            return False
        last = self._episode_last
        return self.clock() - last <= CROWDED_FOR and last - self._episode_start >= CROWDED_FOR

    async def give_way(self, worked: float) -> None:
        """After ``worked`` seconds of background work, pause so that it gets at
        most ``share`` of the time while ingest is crowded."""
        if self.crowded:
            await self.pause(min(LONGEST_PAUSE, worked * (1 - self.share) / self.share))

    async def pause(self, seconds: float) -> None:
        """Let ingest have the CPU for ``seconds``, in slices of ``PAUSE_SLICE``. If
        ingest kept up during a slice (on average fewer than ``CROWDED / 2`` requests
        in flight), ingest alone does not saturate the CPU: the burst is over, and so
        is the pause. (Not the count at the end of a slice: group commit answers
        requests in bunches, so under a flood it drops to a few now and then; at a
        steady rate ingest alone keeps up, and the average stays low.)

        The pause is not cut to a slice: a batch of background work can take longer
        than a slice, and pausing a slice after it would give it most of the time."""
        remaining = seconds
        while remaining > 0:
            started = self._count()
            area = self._area
            step = min(PAUSE_SLICE, remaining)
            await asyncio.sleep(step)
            remaining -= step
            ended = self._count()
            if ended > started and (self._area - area) / (ended - started) < CROWDED / 2:
                self._episode_last = -1.0
                return
