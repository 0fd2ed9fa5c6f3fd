"""The circuit breaker's states, apart from the dispatcher (which tests/test_delivery.py
drives against a real receiver)."""

from router.breaker import PROBE_CAP, PROBE_FIRST, CircuitBreaker


def test_opens_after_the_threshold_of_failures_in_a_row() -> None:
    breaker = CircuitBreaker(3)
    assert not breaker.failed(1, now=100.0)
    assert not breaker.failed(2, now=100.0)
    assert not breaker.open and not breaker.holds(3)
    assert breaker.failed(3, now=100.0)  # the third in a row opens it
    assert breaker.open
    assert breaker.holds(4) and breaker.holds(1)
    assert breaker.probe_at == 100.0 + PROBE_FIRST
    assert breaker.probe_in(100.0) == PROBE_FIRST
    assert not breaker.wants_probe(100.0 + PROBE_FIRST - 0.01)
    assert breaker.wants_probe(100.0 + PROBE_FIRST)
    assert breaker.probe_in(100.0 + 2 * PROBE_FIRST) == 0.0
    breaker.probe_id = 9
    assert breaker.probe_in(200.0) is None  # a probe is out


def test_a_success_between_failures_starts_the_count_again() -> None:
    breaker = CircuitBreaker(3)
    breaker.failed(1, now=0.0)
    breaker.failed(2, now=0.0)
    assert not breaker.succeeded()  # it was not open
    breaker.failed(3, now=0.0)
    breaker.failed(4, now=0.0)
    assert not breaker.open
    assert breaker.failed(5, now=0.0)


def test_one_probe_at_a_time_waiting_twice_as_long_after_each_failed_probe() -> None:
    breaker = CircuitBreaker(1)
    breaker.failed(1, now=0.0)
    now, waits = PROBE_FIRST, []
    for probe in range(10, 20):
        assert breaker.wants_probe(now)
        breaker.probe_id = probe  # as the dispatcher marks the delivery it claimed
        assert not breaker.wants_probe(now)  # one at a time
        assert not breaker.holds(probe) and breaker.holds(probe + 100)
        assert not breaker.failed(probe + 100, now=now)  # a send already under way
        assert breaker.probe_id == probe  # ...is not the probe
        assert not breaker.failed(probe, now=now)  # the probe failed: still open
        waits.append(breaker.probe_at - now)
        now = breaker.probe_at
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0] + [PROBE_CAP] * 5


def test_a_success_closes_it_and_the_next_opening_starts_with_short_waits() -> None:
    breaker = CircuitBreaker(2)
    breaker.failed(1, now=0.0)
    breaker.failed(2, now=0.0)
    breaker.probe_id = 3
    breaker.failed(3, now=1.0)  # next probe 2 s later
    breaker.probe_id = 4
    assert breaker.succeeded()
    assert not breaker.open and breaker.failures == 0 and not breaker.holds(5)
    breaker.failed(6, now=50.0)
    breaker.failed(7, now=50.0)
    assert breaker.probe_at == 50.0 + PROBE_FIRST


def test_a_probe_ending_in_a_permanent_error_is_replaced_at_once() -> None:
    breaker = CircuitBreaker(1)
    breaker.failed(1, now=0.0)
    breaker.probe_id = 2
    breaker.finished(2)  # e.g. HTTP 404: says nothing of the receiver being up
    assert breaker.open and breaker.probe_id is None
    assert breaker.wants_probe(breaker.probe_at)


def test_threshold_zero_never_opens() -> None:
    breaker = CircuitBreaker(0)
    for delivery in range(1000):
        assert not breaker.failed(delivery, now=0.0)
    assert not breaker.open and not breaker.holds(1)


def test_probes_never_wait_longer_than_the_longest_retry_backoff() -> None:
    breaker = CircuitBreaker(1)
    breaker.failed(1, now=0.0, longest_wait=2.0)
    waits, now = [breaker.probe_at], breaker.probe_at
    for probe in range(2, 6):
        breaker.probe_id = probe
        breaker.failed(probe, now=now, longest_wait=2.0)
        waits.append(breaker.probe_at - now)
        now = breaker.probe_at
    assert waits == [PROBE_FIRST, 2.0, 2.0, 2.0, 2.0]


def test_a_receivers_retry_after_holds_the_next_probe_back() -> None:
    breaker = CircuitBreaker(1)
    breaker.failed(1, now=0.0, retry_after=30.0)  # e.g. 503 with Retry-After: 30
    assert breaker.probe_at == 30.0
    breaker.probe_id = 2
    breaker.failed(2, now=30.0, retry_after=0.5)  # shorter than the doubling wait
    assert breaker.probe_at == 30.0 + 2.0
