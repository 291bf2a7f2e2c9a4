"""What the writer thread tells telemetry about each written call: latency histograms, the
live model-health windows and each backend's error window (which logs what goes wrong)."""

from __future__ import annotations

from sidecar.sink import CallRecord
from sidecar.telemetry.backend_errors import BackendErrors
from sidecar.telemetry.metrics import Metrics
from sidecar.telemetry.model_health import ModelHealth

__all__ = ["CallObserver"]


class CallObserver:
    """Called by the sink's writer thread once per written call row."""

    def __init__(self, metrics: Metrics, errors: BackendErrors, health: ModelHealth) -> None:
        self._metrics = metrics
        self._errors = errors
        self._health = health

    def __call__(self, row: CallRecord, score: float | None, label: str | None) -> None:
        if row.latency_ms is not None:
            self._metrics.observe_call(row.route, row.backend, row.role, row.latency_ms)
        red = row.decoding.redactor  # a backend may quote redacted input in its message
        self._errors.observe(row.backend, row.route, row.role, row.status,
                             row.error if red is None else red.error(row.error), row.ts)
        self._health.observe(
            row.request_id, row.route, row.backend, row.role, row.status, row.latency_ms,
            score, label,
        )
