"""A channel's circuit breaker: while its receiver is down, hold its deliveries.

Without one, every delivery to a receiver that is down retries on its own schedule
and uses up its attempts: with the default backoff, a ten-minute outage would send
more than half of the deliveries made during it to the dead letters. After
``threshold`` retryable failures in a row the circuit opens: the dispatcher sends one
delivery at a time as a probe, the first ``PROBE_FIRST`` after opening and each later
one twice as long after the last (up to ``PROBE_CAP``, or the retry policy's longest
backoff if that is shorter; never sooner than the receiver's ``Retry-After``), and puts
the other deliveries back in the store untried, due at the next probe, their attempts
untouched. The first success closes the circuit, and the channel's retries waiting out
their backoff are made due at once.

The state lives in the dispatcher's memory only: after a restart, or on another
replica, the first failures open the circuit again.
"""

__all__ = ["PROBE_CAP", "PROBE_FIRST", "CircuitBreaker"]

PROBE_FIRST = 1.0  # seconds from opening to the first probe
PROBE_CAP = 60.0  # the longest wait between probes


class CircuitBreaker:
    """One channel's failures in a row, and whether its deliveries are held.

    Times are the dispatcher's clock (wall-clock seconds, as the store's are)."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold  # 0: the circuit never opens
        self.failures = 0  # retryable failures since the last success
        self.open = False
        self.probe_at = 0.0  # while open: when the next probe may be claimed
        self.probe_id: int | None = None  # while open: the delivery sent as the probe
        self._wait = PROBE_FIRST

    def holds(self, delivery_id: int) -> bool:
        """Whether a delivery must go back to the store untried: the circuit is open
        and it is not the probe."""
        return self.open and delivery_id != self.probe_id

    def wants_probe(self, now: float) -> bool:
        """Whether the circuit is open, no probe is out, and the next one is due."""
        return self.probe_in(now) == 0.0

    def probe_in(self, now: float) -> float | None:
        """Seconds until the next probe is due (0 once it is), while the circuit is open
        and no probe is out; else None."""
        if not self.open or self.probe_id is not None:
            return None
        return max(0.0, self.probe_at - now)

    def failed(
        self,
        delivery_id: int,
        now: float,
        *,
        longest_wait: float = PROBE_CAP,
        retry_after: float | None = None,
    ) -> bool:
        """A send failed in a way worth retrying; True when this opened the circuit.
        ``longest_wait`` caps the time between probes (the retry policy's cap: a probe
        should not wait longer than a retry would); a receiver's ``retry_after`` holds
        the next probe back at least that long, as it would a retry."""
        self.failures += 1
        if self.open:
            if delivery_id == self.probe_id:
                self._next_probe(now, longest_wait, retry_after)
            return False
        if self.threshold and self.failures >= self.threshold:
            self.open = True
            self._wait = PROBE_FIRST
            self._next_probe(now, longest_wait, retry_after)
            return True
        return False

    def succeeded(self) -> bool:
        """A send went through; True when this closed the circuit."""
        was_open = self.open
        self.failures = 0
        self.open = False
        self.probe_id = None
        return was_open

    def finished(self, delivery_id: int) -> None:
        """A send ended in a permanent error: that says nothing of the receiver being
        up or down, so a probe that ends so is replaced by another one at once."""
        if self.open and delivery_id == self.probe_id:
            self.probe_id = None

    def _next_probe(self, now: float, longest_wait: float, retry_after: float | None) -> None:
        self.probe_id = None
        self.probe_at = now + max(min(self._wait, longest_wait), retry_after or 0.0)
        self._wait = min(PROBE_CAP, self._wait * 2)
