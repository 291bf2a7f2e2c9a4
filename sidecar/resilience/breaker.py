"""Circuit breakers: stop calling a backend that keeps failing, probe it, close when healed.

Closed: calls flow; a failure streak of ``consecutive_failures``, or an error rate of at
least ``error_rate`` over the last ``window`` calls (once ``min_calls`` were seen), opens it.
Open: calls are refused for ``cooldown_s``. Half-open: up to ``half_open_probes`` calls go
through; a success closes the breaker, a failure opens it again. Failures are the status
codes the route treats as the backend's fault (UNAVAILABLE, DEADLINE_EXCEEDED, ...), never
caller errors.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


class BreakerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="refuse calls to a failing backend for a while")
    consecutive_failures: int = Field(5, ge=1, description="failure streak that opens it")
    error_rate: float = Field(0.5, gt=0, le=1, description="failure share that opens it")
    window: int = Field(20, ge=1, le=10_000, description="recent calls the rate looks at")
    min_calls: int = Field(10, ge=1, description="calls in the window before the rate counts")
    cooldown_s: float = Field(5.0, gt=0, le=3600, description="time it stays open")
    half_open_probes: int = Field(1, ge=1, le=100, description="trial calls when half-open")


class CircuitBreaker:
    """One backend's breaker. Not thread-safe: used from the event loop only."""

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self.state: BreakerState = "closed"
        self._streak = 0
        self._recent: deque[bool] = deque(maxlen=config.window)
        self._failures_in_window = 0
        self._opened_at = 0.0
        self._probes = 0
        self.opened = 0  # times it opened (for metrics)
        self.refused = 0  # calls refused while open

    def allow(self) -> bool:
        """May a call go to the backend now? (A True in half-open takes a probe slot.)"""
        if not self.config.enabled or self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() - self._opened_at < self.config.cooldown_s:
                self.refused += 1
                return False
            self.state = "half_open"
            self._probes = 0
        if self._probes < self.config.half_open_probes:
            self._probes += 1
            return True
        self.refused += 1
        return False

    @property
    def is_open(self) -> bool:
        """Open and still cooling down (does not take a probe slot)."""
        return (
            self.config.enabled
            and self.state == "open"
            and self._clock() - self._opened_at < self.config.cooldown_s
        )

    def record(self, failed: bool) -> None:
        """The result of a call that :meth:`allow` let through."""
        if not self.config.enabled:
            return
        if self.state == "half_open":
            if failed:
                self._open()
            else:
                self._close()
            return
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._failures_in_window -= 1
        self._recent.append(failed)
        if failed:
            self._failures_in_window += 1
            self._streak += 1
        else:
            self._streak = 0
        cfg = self.config
        if self._streak >= cfg.consecutive_failures or (
            len(self._recent) >= cfg.min_calls
            and self._failures_in_window / len(self._recent) >= cfg.error_rate
        ):
            self._open()

    def _open(self) -> None:
        self.state = "open"
        self._opened_at = self._clock()
        self.opened += 1
        self._probes = 0

    def _close(self) -> None:
        self.state = "closed"
        self._streak = 0
        self._recent.clear()
        self._failures_in_window = 0
