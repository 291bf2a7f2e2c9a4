"""Live counters: one owner per process, moved by the hot path, read by metrics and admin.

Route plans are frozen per config version; what changes per call lives here, keyed by the
route's match and a shadow's backend name, so it carries across reloads (counters only grow,
as Prometheus expects) and a copy still in flight after a reload counts on the same lane.
Plain ints bumped on the event loop: no locks, nothing allocated on a hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CallCounts", "LaneCounters", "LiveCounters", "RouteCounters"]

#: (route, backend, role, status) -> calls; plain ints bumped on the hot path.
CallCounts = dict[tuple[str, str, str, str], int]


@dataclass(slots=True, eq=False)
class RouteCounters:
    """One route's requests and what became of them."""

    requests: int = 0
    in_flight: int = 0
    shed: int = 0
    fallbacks: int = 0
    fallback_failed: int = 0
    contract_refused: int = 0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class LaneCounters:
    """One shadow of one route (docs/counters.md): sampled = sent + dropped; sent =
    answered + errored + in flight (errored includes copies cancelled at shutdown)."""

    sampled: int = 0
    sent: int = 0
    dropped: int = 0
    errored: int = 0
    breaker_skipped: int = 0
    in_flight: int = 0

    @property
    def answered(self) -> int:
        return self.sent - self.errored - self.in_flight

    def as_dict(self) -> dict[str, int]:
        return {
            "sampled": self.sampled,
            "sent": self.sent,
            "dropped": self.dropped,
            "errored": self.errored,
            "answered": self.answered,
            "breaker_skipped": self.breaker_skipped,
            "in_flight": self.in_flight,
        }


class LiveCounters:
    """Every live counter of the process; injected into dispatch and mirror."""

    def __init__(self) -> None:
        self.calls: CallCounts = {}
        #: (route, experiment, variant) -> exposed requests.
        self.assignments: dict[tuple[str, str, str], int] = {}
        self._routes: dict[str, RouteCounters] = {}
        self._lanes: dict[tuple[str, str], LaneCounters] = {}

    def route(self, match: str) -> RouteCounters:
        counters = self._routes.get(match)
        if counters is None:
            counters = self._routes[match] = RouteCounters()
        return counters

    def lane(self, match: str, backend: str) -> LaneCounters:
        key = (match, backend)
        counters = self._lanes.get(key)
        if counters is None:
            counters = self._lanes[key] = LaneCounters()
        return counters

    def count_call(self, route: str, backend: str, role: str, status: str) -> None:
        key = (route, backend, role, status)
        calls = self.calls
        calls[key] = calls.get(key, 0) + 1
