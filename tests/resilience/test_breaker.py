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


def test_a_probe_that_never_reports_frees_its_slot_when_its_lease_runs_out() -> None:
    """Issue 14.1: a probe slot is leased, not owned: one that never reports (its call
    lost on a path that forgot to hand it back) is freed after ``probe_lease_s``."""
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(consecutive_failures=1, cooldown_s=1, probe_lease_s=10),
                       clock)
    call(b, True)
    clock.now = 1.0
    lost = b.admit()
    assert lost is not None and lost.probe
    clock.now = 10.9
    assert b.admit() is None  # still leased
    clock.now = 11.0
    probe = b.admit()
    assert probe is not None and b.lapsed == 1
    b.report(lost, "OK")  # the lapsed probe has no say any more
    assert b.state == "half_open"
    b.report(probe, "OK")
    assert b.state == "closed"


def test_release_and_no_verdict_statuses_give_the_slot_back() -> None:
    """Issues 14.1 and 14.2: a probe released (cancelled, an exception), or ending with a
    status of the caller's making or a deadline the caller's own deadline set, neither
    closes nor reopens the breaker; the slot is free for the next call."""
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(consecutive_failures=1, cooldown_s=1), clock)
    call(b, True)
    clock.now = 1.0
    endings = [
        lambda t: b.release(t),
        lambda t: b.report(t, "RESOURCE_EXHAUSTED", "metadata too large"),
        lambda t: b.report(t, "CANCELLED"),
        lambda t: b.report(t, "DEADLINE_EXCEEDED", timeout_bound=False),
    ]
    for end in endings:
        probe = b.admit()
        assert probe is not None
        end(probe)
        assert b.state == "half_open" and b.opened == 1
    probe = b.admit()
    assert probe is not None
    b.report(probe, "DEADLINE_EXCEEDED", timeout_bound=True)  # the route's timeout: a fault
    assert b.state == "open" and b.opened == 2


def test_caller_statuses_never_count_while_closed() -> None:
    """Issue 14.2: however many, statuses of the caller's making leave the breaker closed,
    even when the route lists them as failure codes."""
    b = CircuitBreaker(BreakerConfig(consecutive_failures=2, min_calls=2), Clock())
    codes = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"})
    for status in ["RESOURCE_EXHAUSTED", "CANCELLED", "INVALID_ARGUMENT", "NOT_FOUND"] * 5:
        ticket = b.admit()
        assert ticket is not None
        b.report(ticket, status, None, codes)
        ticket = b.admit()
        assert ticket is not None
        b.report(ticket, "DEADLINE_EXCEEDED", None, codes, timeout_bound=False)
    assert b.state == "closed"
    for _ in range(2):
        ticket = b.admit()
        assert ticket is not None
        b.report(ticket, "UNAVAILABLE", "down", codes)
    assert b.state == "open"


def test_state_changes_are_logged_rate_limited(caplog) -> None:
    """Issue 15.8: a backend that keeps failing its probes logs its opening once per
    ``log_interval_s`` (the next line counts what was left out); the close that follows a
    logged opening is always logged."""
    import logging

    clock = Clock()
    b = CircuitBreaker(BreakerConfig(consecutive_failures=1, cooldown_s=1, log_interval_s=30),
                       clock, name="model-a")
    with caplog.at_level(logging.DEBUG, logger="sidecar.resilience.breaker"):
        call(b, True)
        for second in range(1, 40):  # a probe every second, each failing
            clock.now = float(second)
            assert call(b, True)
        clock.now = 41.0
        assert call(b, False)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    assert [level for level, _ in lines] == ["WARNING", "WARNING", "INFO"]
    assert "breaker model-a opened (was closed): 1 failures in a row" in lines[0][1]
    assert "the probe failed" in lines[1][1] and "(29 changes not logged before)" in lines[1][1]
    assert "breaker model-a closed (was half_open)" in lines[2][1]
    assert b.opened == 40


def test_snapshot_for_metrics_and_the_dashboard() -> None:
    clock = Clock()
    b = CircuitBreaker(BreakerConfig(consecutive_failures=1, cooldown_s=5), clock, name="m")
    assert b.snapshot()["state"] == "closed" and b.snapshot()["last_error"] is None
    ticket = b.admit()
    assert ticket is not None
    b.report(ticket, "UNAVAILABLE", "connection refused")
    snap = b.snapshot()
    assert snap["state"] == "open" and snap["retry_in_s"] == 5.0 and snap["opened"] == 1
    assert snap["last_error"]["status"] == "UNAVAILABLE"
    assert snap["last_error"]["message"] == "connection refused"
    clock.now = 5.0
    assert b.snapshot()["state"] == "half_open"  # the next call probes
    assert b.state == "open"  # reading changes nothing
    disabled = CircuitBreaker(BreakerConfig(enabled=False), clock)
    assert disabled.snapshot()["state"] == "disabled"
