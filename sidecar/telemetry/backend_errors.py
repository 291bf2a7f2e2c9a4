"""What is wrong with each backend, said at once: its last error and a rate-limited log line.

Fed by the sink's writer thread with every recorded call (off the caller's path). A
backend's first error is logged at once with its status and the backend's own message;
after that a line comes when its error rate over the recent calls reaches the configured
threshold, at most once per ``interval_s`` while it stays there, and once when it recovers.
The dashboard and ``/v1/stats`` read the last error of each backend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.models import BackendErrorLogConfig

__all__ = ["NOT_ANSWERS", "BackendErrors", "LastError"]

log = logging.getLogger(__name__)

#: Statuses that are no answer of the backend: a copy never sent, a call the caller or the
#: shutdown cancelled. They count neither as calls nor as errors of the backend.
NOT_ANSWERS = frozenset({"DROPPED", "CANCELLED"})

#: Longest backend message kept and logged (a backend's details can be a whole traceback).
MESSAGE_CHARS = 500


@dataclass(frozen=True, slots=True)
class LastError:
    """A backend's most recent failed call."""

    status: str
    message: str
    ts: float
    route: str
    role: str

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message, "ts": self.ts,
                "route": self.route, "role": self.role}


@dataclass(slots=True)
class _Backend:
    recent: deque[bool]
    calls: int = 0
    errors: int = 0
    failures_in_window: int = 0
    last: LastError | None = None
    above: bool = False
    logged_at: float = float("-inf")
    #: Errors since the last line about this backend (said in the next one).
    unsaid: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


class BackendErrors:
    """Per-backend error windows; thread-safe (the writer thread writes, the loop reads)."""

    def __init__(
        self, settings: BackendErrorLogConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._backends: dict[str, _Backend] = {}
        self._lock = threading.Lock()

    def observe(
        self, backend: str, route: str, role: str, status: str, message: str | None, ts: float
    ) -> None:
        """One recorded call of ``backend``."""
        if status in NOT_ANSWERS:
            return
        failed = status != "OK"
        cfg = self._settings
        with self._lock:
            state = self._backends.get(backend)
            if state is None:
                state = self._backends[backend] = _Backend(deque(maxlen=cfg.window))
            if len(state.recent) == state.recent.maxlen and state.recent[0]:
                state.failures_in_window -= 1
            state.recent.append(failed)
            state.calls += 1
            if not failed:
                if state.above and not self._rate_reached(state):
                    state.above = False
                    log.info("backend %s recovered: error rate %.0f%% over the last %d calls",
                             backend, 100 * self._rate(state), len(state.recent))
                return
            state.failures_in_window += 1
            state.errors += 1
            state.unsaid += 1
            state.statuses[status] = state.statuses.get(status, 0) + 1
            text = (message or "").strip()[:MESSAGE_CHARS]
            state.last = LastError(status, text, ts, route, role)
            now = self._clock()
            if state.errors == 1:
                self._say(backend, state, now, "first error")
            elif self._rate_reached(state):
                crossing = not state.above
                state.above = True
                if crossing or now - state.logged_at >= cfg.interval_s:
                    self._say(backend, state, now,
                              f"error rate {100 * self._rate(state):.0f}% over the last "
                              f"{len(state.recent)} calls (threshold "
                              f"{100 * cfg.error_rate:.0f}%)")

    def _rate(self, state: _Backend) -> float:
        return state.failures_in_window / len(state.recent) if state.recent else 0.0

    def _rate_reached(self, state: _Backend) -> bool:
        return (len(state.recent) >= self._settings.min_calls
                and self._rate(state) >= self._settings.error_rate)

    def _say(self, backend: str, state: _Backend, now: float, why: str) -> None:
        last = state.last
        assert last is not None
        counts = ""
        if state.errors > 1:
            statuses = ", ".join(f"{s} {n}" for s, n in sorted(state.statuses.items()))
            counts = f"; {state.unsaid} errors since the last report ({statuses})"
        log.warning("backend %s (%s on %s): %s%s; last: %s: %s", backend, last.role,
                    last.route, why, counts, last.status, last.message or "(no message)")
        state.logged_at = now
        state.unsaid = 0
        state.statuses.clear()

    def snapshot(self, backends: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
        """backend -> calls, errors, the error rate over the recent window and the last
        error (``None`` when it never failed); only ``backends`` when given."""
        with self._lock:
            return {
                name: {
                    "calls": s.calls,
                    "errors": s.errors,
                    "error_rate": self._rate(s) if s.recent else None,
                    "window": len(s.recent),
                    "last_error": s.last.to_dict() if s.last is not None else None,
                }
                for name, s in self._backends.items()
                if backends is None or name in backends
            }
