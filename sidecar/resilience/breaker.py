"""Circuit breakers: stop calling a backend that keeps failing, probe it, close when healed.

Closed: calls flow; a failure streak of ``consecutive_failures``, or an error rate of at
least ``error_rate`` over the last ``window`` calls (once ``min_calls`` were seen), opens it.
Open: calls are refused for ``cooldown_s``. Half-open: up to ``half_open_probes`` calls go
through, each holding a probe slot on a lease of ``probe_lease_s``; a success closes the
breaker, a failure opens it again, and a probe that ends with no verdict (cancelled, an
error of the caller's, an exception) or never reports gives its slot back.

Only backend faults count (:meth:`CircuitBreaker.report`): a status in the route's failure
codes, never one the backend returns because of the caller's request (:data:`CALLER_FAULTS`),
and a DEADLINE_EXCEEDED only when the route's own timeout, not the caller's shorter
deadline, was the binding limit. Each state change is logged (rate-limited, with the last
error); :meth:`CircuitBreaker.snapshot` gives the state to metrics and the dashboard.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CALLER_DEADLINE",
    "CALLER_FAULTS",
    "PASS",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "Ticket",
]

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]

#: Statuses a backend answers because of the caller's request (or the caller's own going):
#: never evidence against the backend, whatever the route's failure codes say.
CALLER_FAULTS = frozenset({
    "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE", "FAILED_PRECONDITION",
    "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED", "CANCELLED",
})
#: The error recorded for a DEADLINE_EXCEEDED that the caller's own, shorter deadline set
#: (not the route's timeout): read by the canary guardrails, which apply the same rule.
CALLER_DEADLINE = "deadline set by the caller"
_DEADLINE = "DEADLINE_EXCEEDED"
#: Failure codes when a caller gives none.
_DEFAULT_FAILURES = frozenset({"UNAVAILABLE", _DEADLINE})
#: A backend's message is kept (for logs and the dashboard) up to this many characters.
_DETAILS_KEPT = 300


class BreakerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="refuse calls to a failing backend for a while")
    consecutive_failures: int = Field(5, ge=1, description="failure streak that opens it")
    error_rate: float = Field(0.5, gt=0, le=1, description="failure share that opens it")
    window: int = Field(20, ge=1, le=10_000, description="recent calls the rate looks at")
    min_calls: int = Field(10, ge=1, description="calls in the window before the rate counts")
    cooldown_s: float = Field(5.0, gt=0, le=3600, description="time it stays open")
    half_open_probes: int = Field(1, ge=1, le=100, description="trial calls when half-open")
    probe_lease_s: float = Field(
        30.0, gt=0, le=3600, description="a probe that has not reported by then frees its slot"
    )
    log_interval_s: float = Field(
        60.0, ge=0, le=86_400, description="least time between two state-change log lines"
    )


class Ticket:
    """Leave to call the backend, from :meth:`CircuitBreaker.admit`; a probe's has a lease."""

    __slots__ = ("expires", "probe")

    def __init__(self, probe: bool, expires: float) -> None:
        self.probe = probe
        self.expires = expires


#: The ticket of every call while the breaker is closed (shared: no allocation per call).
PASS = Ticket(False, float("inf"))


class CircuitBreaker:
    """One backend's breaker. Not thread-safe: used from the event loop only (except
    :meth:`snapshot`, which only reads)."""

    def __init__(
        self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        self.config = config
        self.name = name
        self._clock = clock
        self.state: BreakerState = "closed"
        self._streak = 0
        self._recent: deque[bool] = deque(maxlen=config.window)
        self._failures_in_window = 0
        self._opened_at = 0.0
        self._probes: list[Ticket] = []
        self.opened = 0  # times it opened (for metrics)
        self.refused = 0  # calls refused while open
        self.lapsed = 0  # probes whose lease ran out before they reported
        self.changed_at = time.time()  # wall time of the last state change
        #: The last failure that counted: (status, backend's message, wall time).
        self.last_error: tuple[str, str, float] | None = None
        self._logged_at = -float("inf")
        self._logged_state: BreakerState = "closed"
        self._unlogged = 0

    # -- admission -------------------------------------------------------------------------
    def admit(self) -> Ticket | None:
        """A ticket when a call may go to the backend now, else None (refused). A ticket
        in half-open holds a probe slot: hand it back through :meth:`report` or
        :meth:`release` on every path, or its lease runs out."""
        if self.state == "closed" or not self.config.enabled:
            return PASS
        now = self._clock()
        if self.state == "open":
            if now - self._opened_at < self.config.cooldown_s:
                self.refused += 1
                return None
            self._change("half_open", f"cooldown of {self.config.cooldown_s:g}s over, probing")
        probes = self._probes
        if len(probes) >= self.config.half_open_probes:
            live = [p for p in probes if p.expires > now]
            if len(live) < len(probes):
                self.lapsed += len(probes) - len(live)
                log.warning(
                    "breaker %s: %d probe(s) did not report within %gs; their slots are free",
                    self.name, len(probes) - len(live), self.config.probe_lease_s,
                )
                self._probes = probes = live
            if len(probes) >= self.config.half_open_probes:
                self.refused += 1
                return None
        ticket = Ticket(True, now + self.config.probe_lease_s)
        probes.append(ticket)
        return ticket

    # -- verdicts --------------------------------------------------------------------------
    def report(
        self, ticket: Ticket, status: str, details: str | None = None,
        failure_codes: frozenset[str] | None = None, timeout_bound: bool = True,
    ) -> None:
        """The end of a call ``ticket`` let through, judged by the one rule: OK and other
        answers are health, a status in ``failure_codes`` is a fault, a caller's fault (or
        a deadline the caller's own, shorter deadline set: ``timeout_bound`` False) is no
        verdict and only gives a probe slot back."""
        if status == "OK":
            if ticket is PASS and self.state == "closed" and not self._failures_in_window:
                # The pass-through's common case, kept short: nothing to open or log.
                recent = self._recent
                recent.append(False)
                self._streak = 0
                return
            self._verdict(ticket, False, status, details)
        elif status in CALLER_FAULTS or (status == _DEADLINE and not timeout_bound):
            self.release(ticket)
        else:
            codes = failure_codes if failure_codes is not None else _DEFAULT_FAILURES
            self._verdict(ticket, status in codes, status, details)

    def release(self, ticket: Ticket) -> None:
        """A call ended with no verdict on the backend: give its probe slot back."""
        if ticket.probe:
            try:
                self._probes.remove(ticket)
            except ValueError:
                pass  # lapsed already, or from an earlier half-open round

    def _verdict(self, ticket: Ticket, failed: bool, status: str, details: str | None) -> None:
        if not self.config.enabled:
            return
        if failed:
            self.last_error = (status, (details or "")[:_DETAILS_KEPT], time.time())
        if ticket.probe:
            if ticket not in self._probes:
                return  # its lease ran out, or the breaker moved on: no longer its say
            self._probes.remove(ticket)
            if self.state != "half_open":
                return
            if failed:
                self._open("the probe failed")
            else:
                self._close()
            return
        if self.state != "closed":
            return  # admitted before it opened: the probes decide now
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._failures_in_window -= 1
        self._recent.append(failed)
        if failed:
            self._failures_in_window += 1
            self._streak += 1
        else:
            self._streak = 0
        cfg = self.config
        if self._streak >= cfg.consecutive_failures:
            self._open(f"{self._streak} failures in a row")
        elif (len(self._recent) >= cfg.min_calls
              and self._failures_in_window / len(self._recent) >= cfg.error_rate):
            self._open(f"{self._failures_in_window} of the last {len(self._recent)} calls "
                       f"failed")

    # -- transitions -----------------------------------------------------------------------
    def _open(self, why: str) -> None:
        self._opened_at = self._clock()
        self.opened += 1
        self._probes = []
        self._change("open", f"{why}; refusing calls for {self.config.cooldown_s:g}s")

    def _close(self) -> None:
        self._streak = 0
        self._recent.clear()
        self._failures_in_window = 0
        self._change("closed", "a probe succeeded")

    def _change(self, state: BreakerState, why: str) -> None:
        old, self.state = self.state, state
        self.changed_at = time.time()
        self._log(old, state, why)

    def _log(self, old: BreakerState, new: BreakerState, why: str) -> None:
        """One line per change, except that a breaker cycling open -> half-open -> open
        logs at most once per ``log_interval_s`` (the next line counts the ones left out).
        A close is logged whenever the last line said otherwise, so the log never leaves
        a healed backend looking broken."""
        now = self._clock()
        if new == "half_open":
            log.debug("breaker %s half-open: %s", self.name, why)
            return
        due = now - self._logged_at >= self.config.log_interval_s
        if not due and not (new == "closed" and self._logged_state != "closed"):
            self._unlogged += 1
            return
        skipped = f" ({self._unlogged} changes not logged before)" if self._unlogged else ""
        if new == "closed":
            log.info("breaker %s closed (was %s): %s%s", self.name, old, why, skipped)
        else:
            error = self.last_error
            last = f"{error[0]}: {error[1]!r}" if error else "none"
            log.warning("breaker %s opened (was %s): %s; last error %s%s",
                        self.name, old, why, last, skipped)
        self._logged_at, self._logged_state, self._unlogged = now, new, 0

    # -- reading ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The breaker as metrics and the dashboard show it (read-only, any thread):
        ``state`` is ``closed``, ``open``, ``half_open`` (also an open one whose cooldown
        is over: the next call probes) or ``disabled``."""
        state: str = self.state
        retry_in = 0.0
        if not self.config.enabled:
            state = "disabled"
        elif state == "open":
            retry_in = self.config.cooldown_s - (self._clock() - self._opened_at)
            if retry_in <= 0:
                state, retry_in = "half_open", 0.0
        error = self.last_error
        return {
            "state": state,
            "since": self.changed_at,
            "retry_in_s": retry_in,
            "probes_out": len(self._probes),
            "opened": self.opened,
            "refused": self.refused,
            "lapsed_probes": self.lapsed,
            "last_error": (
                {"status": error[0], "message": error[1], "at": error[2]} if error else None
            ),
        }

