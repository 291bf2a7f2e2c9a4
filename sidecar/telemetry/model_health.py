"""Live model health, computed in the sink's writer thread (off the caller's path).

Pairs a request's primary and shadow outputs as their call records pass by, and keeps a
rolling window per (route, primary, shadow) of agreement and absolute score difference, and
per (route, backend, role) of latencies.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ModelHealth", "PairWindow"]


@dataclass(slots=True)
class _Seen:
    backend: str
    role: str
    score: float | None
    label: str | None


class PairWindow:
    """The last ``size`` pairs of one primary/shadow couple."""

    def __init__(self, size: int) -> None:
        self.agree: deque[float] = deque(maxlen=size)
        self.abs_diff: deque[float] = deque(maxlen=size)
        self.pairs = 0

    def add(self, primary: _Seen, shadow: _Seen) -> None:
        self.pairs += 1
        if primary.label is not None and shadow.label is not None:
            self.agree.append(1.0 if primary.label == shadow.label else 0.0)
        if primary.score is not None and shadow.score is not None:
            self.abs_diff.append(abs(shadow.score - primary.score))

    def summary(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "window": max(len(self.agree), len(self.abs_diff)),
            "agreement": float(np.mean(self.agree)) if self.agree else None,
            "mean_abs_diff": float(np.mean(self.abs_diff)) if self.abs_diff else None,
        }


class ModelHealth:
    """Rolling windows fed by the writer thread, read by metrics and the dashboard."""

    def __init__(self, window: int, max_pending: int = 20_000) -> None:
        self._window = window
        self._max_pending = max_pending
        self._pending: OrderedDict[str, list[_Seen]] = OrderedDict()
        self._pairs: dict[tuple[str, str, str], PairWindow] = {}
        self._latency: dict[tuple[str, str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def observe(
        self,
        request_id: str,
        route: str,
        backend: str,
        role: str,
        status: str,
        latency_ms: float | None,
        score: float | None,
        label: str | None,
    ) -> None:
        """One call record (called by the writer thread)."""
        with self._lock:
            if latency_ms is not None and status == "OK":
                key = (route, backend, role)
                window = self._latency.get(key)
                if window is None:
                    window = self._latency[key] = deque(maxlen=self._window)
                window.append(latency_ms)
            if status != "OK" or (score is None and label is None):
                return
            seen = _Seen(backend, role, score, label)
            others = self._pending.get(request_id)
            if others is None:
                self._pending[request_id] = [seen]
                while len(self._pending) > self._max_pending:
                    self._pending.popitem(last=False)
                return
            for other in others:
                if role == "shadow" and other.role != "shadow":
                    self._pair(route, other, seen)
                elif other.role == "shadow" and role != "shadow":
                    self._pair(route, seen, other)
            others.append(seen)

    def _pair(self, route: str, primary: _Seen, shadow: _Seen) -> None:
        key = (route, primary.backend, shadow.backend)
        window = self._pairs.get(key)
        if window is None:
            window = self._pairs[key] = PairWindow(self._window)
        window.add(primary, shadow)

    def pairs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"route": r, "primary": p, "shadow": s, **w.summary()}
                for (r, p, s), w in self._pairs.items()
            ]

    def latencies(self) -> list[dict[str, Any]]:
        with self._lock:
            items = [(k, np.asarray(v)) for k, v in self._latency.items() if v]
        out = []
        for (route, backend, role), values in items:
            p50, p99 = np.quantile(values, [0.5, 0.99])
            out.append(
                {"route": route, "backend": backend, "role": role, "window": len(values),
                 "p50_ms": float(p50), "p99_ms": float(p99)}
            )
        return out
