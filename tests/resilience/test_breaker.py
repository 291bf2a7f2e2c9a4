"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

from sidecar.resilience import BreakerConfig, CircuitBreaker, Ticket


def call(b: CircuitBreaker, failed: bool) -> Ticket | None:
    """One call through the breaker: admitted, then reported (UNAVAILABLE or OK)."""
    ticket = b.admit()
    if ticket is not None:
        b.report(ticket, "UNAVAILABLE" if failed else "OK")
    return ticket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_streak_opens_cooldown_half_open_probe_closes() -> None:
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(consecutive_failures=3, cooldown_s=10), clock)
    for _ in range(2):
        assert call(b, True)
    assert b.state == "closed"
    assert call(b, True)
    assert b.state == "open" and b.opened == 1
    assert b.admit() is None and b.refused == 1
    clock.now = 9.9
    assert b.admit() is None
    clock.now = 10.0
    probe = b.admit()  # the one probe
    assert probe is not None and probe.probe
    assert b.state == "half_open"
    assert b.admit() is None  # no second probe while the first is out
    b.report(probe, "OK")
    assert b.state == "closed"
    assert b.admit() is not None


def test_failed_probe_reopens() -> None:
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(consecutive_failures=1, cooldown_s=1), clock)
    call(b, True)
    clock.now = 1.5
    assert call(b, True)
    assert b.state == "open" and b.opened == 2
    clock.now = 2.0
    assert b.admit() is None  # a fresh cooldown from the failed probe


def test_error_rate_over_window_opens() -> None:
    b = CircuitBreaker(BreakerConfig(consecutive_failures=100, error_rate=0.5, window=10,
                                     min_calls=10), Clock())
    pattern = [True, False] * 4 + [True]
    for failed in pattern:
        call(b, failed)
    assert b.state == "closed"  # 5 of 9: too few calls yet
    call(b, False)
    assert b.state == "open"  # 5 of 10 = 50%


def test_successes_slide_failures_out_of_the_window() -> None:
    b = CircuitBreaker(BreakerConfig(consecutive_failures=100, error_rate=0.5, window=4,
                                     min_calls=4), Clock())
    for failed in [True, False, False, False, True, False, False]:
        call(b, failed)
    assert b.state == "closed"


def test_disabled_breaker_never_refuses() -> None:
    b = CircuitBreaker(BreakerConfig(enabled=False, consecutive_failures=1), Clock())
    for _ in range(10):
        assert call(b, True)
    assert b.state == "closed"
