"""Metrics: OpenTelemetry instruments over the sidecar's own counters.

Hot-path counts are plain integers the sidecar already keeps; observable instruments read
them at collection time, so collecting costs the caller nothing. Latency histograms are fed
by the writer thread. Exposed as Prometheus text and optionally pushed over OTLP.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, get_args

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from sidecar.canary.controller import State
from sidecar.config import TelemetryConfig
from sidecar.resilience.breaker import BreakerState
from sidecar.telemetry import prometheus
from sidecar.telemetry.latency import LatencyHistograms, WithHistograms, with_histograms
from sidecar.telemetry.live_view import breaker_state

if TYPE_CHECKING:
    from sidecar.telemetry.live_state import LiveState

__all__ = ["LATENCY_BUCKETS_MS", "Metrics"]

#: Every canary state, one 0/1 series each in ``shadowcar.canary.state``.
CANARY_STATES: tuple[str, ...] = get_args(State)
#: Every breaker state, one 0/1 series each in ``shadowcar.breaker.state``.
BREAKER_STATES: tuple[str, ...] = (*get_args(BreakerState), "disabled")

LATENCY_BUCKETS_MS = (
    0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 40, 60, 100, 150, 250, 400, 600, 1000, 2500, 5000,
    10000,
)

Callback = Callable[[CallbackOptions], Iterable[Observation]]


class Metrics:
    """The sidecar's meter provider and instruments; ``render()`` gives Prometheus text."""

    def __init__(self, settings: TelemetryConfig, state: LiveState) -> None:
        self._sidecar = state
        self._reader = InMemoryMetricReader()
        #: Counted by the writer thread outside the SDK (telemetry/latency.py says why);
        #: both exporters receive it with the SDK's metrics.
        self.call_latency = LatencyHistograms(
            "shadowcar.call.latency_ms", "backend call latency by route, backend and role",
            "ms", LATENCY_BUCKETS_MS,
        )
        service = os.environ.get("OTEL_SERVICE_NAME") or settings.service_name
        self._resource = Resource.create({"service.name": service})
        readers: list[MetricReader] = [self._reader]
        if settings.metrics.otlp:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(
                PeriodicExportingMetricReader(
                    WithHistograms(OTLPMetricExporter(timeout=5), self.call_latency,
                                   self._resource),
                    export_interval_millis=settings.metrics.export_interval_s * 1000,
                )
            )
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=self._resource,
            views=[
                View(
                    instrument_name="shadowcar.sink.flush_duration",
                    aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_MS),
                ),
            ],
        )
        meter = self.provider.get_meter("shadowcar")
        self.flush_duration = meter.create_histogram(
            "shadowcar.sink.flush_duration", unit="ms", description="time one sink flush took"
        )
        observables: list[tuple[str, str, Callback]] = [
            ("shadowcar.calls", "backend calls by route, backend, role and status",
             self._calls),
            ("shadowcar.requests", "requests received by route", self._requests),
            # One vocabulary (docs/counters.md): sampled = sent + dropped;
            # sent = answered + errored + in flight.
            ("shadowcar.mirror.sampled", "requests sampled for a shadow (sent + dropped)",
             self._lane("sampled")),
            ("shadowcar.mirror.sent", "shadow copies sent to the shadow", self._lane("sent")),
            ("shadowcar.mirror.dropped",
             "sampled copies never sent (max_in_flight, open breaker, shutdown)",
             self._lane("dropped")),
            ("shadowcar.mirror.errored",
             "sent copies without an OK answer (error status, timeout, cancelled)",
             self._lane("errored")),
            ("shadowcar.mirror.answered", "sent copies the shadow answered OK",
             self._lane("answered")),
            ("shadowcar.backend.errors", "failed calls by backend (not dropped or cancelled)",
             self._backend_errors("errors")),
            ("shadowcar.sink.rows_written", "rows written by table", self._sink("written")),
            ("shadowcar.sink.rows_dropped", "rows dropped by table", self._sink("dropped")),
            ("shadowcar.sink.rows_dropped_by_reason",
             "rows dropped by why (buffer_full, closing: never queued; rejected, unwritable: "
             "accepted, then lost)", self._drop_reasons),
            ("shadowcar.sink.recoveries",
             "fresh database connections after a fatal DuckDB error", self._recoveries),
        ]
        for which in ("accepted", "rejected", "duplicates", "dropped"):
            observables.append((
                f"shadowcar.outcomes.{which}", f"outcome events {which}",
                self._outcomes(which),
            ))
        observables.append(("shadowcar.assignments",
                            "exposed requests by route, experiment and variant",
                            self._assignments))
        for name, desc, callback in observables:
            meter.create_observable_counter(name, callbacks=[callback], description=desc)
        gauges: list[tuple[str, str, Callback]] = [
            ("shadowcar.canary.share",
             "fraction of units the canary candidate serves",
             self._canary_share),
            ("shadowcar.canary.state",
             "1 for the canary's current state (label state), 0 otherwise",
             self._canary_state),
            ("shadowcar.canary.step",
             "the canary's current step, 1-based (label steps: how many)",
             self._canary_step),
            ("shadowcar.breaker.state",
             "1 for the backend breaker's current state (label state), 0 otherwise",
             self._breaker_state),
            ("shadowcar.backend.error_rate",
             "share of a backend's recent calls that failed (rolling window)",
             self._backend_errors("error_rate")),
            ("shadowcar.trigger.fired",
             "1 when a retraining trigger fired at its last evaluation",
             self._triggers),
            ("shadowcar.mirror.in_flight", "shadow calls in flight", self._lane("in_flight")),
            ("shadowcar.sink.queue_depth", "records waiting to be written", self._queue_depth),
            ("shadowcar.pair.agreement",
             "share of recent pairs whose class agrees (rolling window)",
             self._pair("agreement")),
            ("shadowcar.pair.mean_abs_diff",
             "mean |shadow - primary| score over recent pairs (rolling window)",
             self._pair("mean_abs_diff")),
        ]
        for name, desc, callback in gauges:
            meter.create_observable_gauge(name, callbacks=[callback], description=desc)

    # -- callbacks (run at collection time, never on the hot path) -----------------------
    def _calls(self, options: CallbackOptions) -> Iterable[Observation]:
        for (route, backend, role, status), n in list(self._sidecar.live.calls.items()):
            yield Observation(
                n, {"route": route, "backend": backend, "role": role, "status": status}
            )

    def _requests(self, options: CallbackOptions) -> Iterable[Observation]:
        live = self._sidecar.live
        for plan in self._sidecar.route_plans():
            yield Observation(live.route(plan.match).requests, {"route": plan.match})

    def _outcomes(self, which: str) -> Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(getattr(self._sidecar.outcomes, f"{which}_total"))

        return callback

    def _triggers(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, (kind, fired) in list(self._sidecar.trigger_state.items()):
            yield Observation(int(fired), {"trigger": name, "kind": kind})

    def _assignments(self, options: CallbackOptions) -> Iterable[Observation]:
        for (route, experiment, variant), n in list(self._sidecar.live.assignments.items()):
            yield Observation(n, {"route": route, "experiment": experiment, "variant": variant})

    def _canary_share(self, options: CallbackOptions) -> Iterable[Observation]:
        for route, canary in list(self._sidecar.canaries.items()):
            yield Observation(canary.share / 100, {"route": route,
                                                   "candidate": canary.config.candidate})

    def _canary_state(self, options: CallbackOptions) -> Iterable[Observation]:
        for route, canary in list(self._sidecar.canaries.items()):
            for state in CANARY_STATES:
                yield Observation(int(canary.state.state == state),
                                  {"route": route, "state": state})

    def _canary_step(self, options: CallbackOptions) -> Iterable[Observation]:
        for route, canary in list(self._sidecar.canaries.items()):
            yield Observation(canary.state.step_index + 1,
                              {"route": route, "steps": str(len(canary.config.steps))})

    def _breaker_state(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, backend in list(self._sidecar.backends.items()):
            current = breaker_state(backend)
            for state in BREAKER_STATES:
                yield Observation(int(current == state), {"backend": name, "state": state})

    def _backend_errors(self, field: str) -> Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            seen = self._sidecar.backend_errors.snapshot(self._sidecar.backends)
            for name, figures in seen.items():
                if figures[field] is not None:
                    yield Observation(figures[field], {"backend": name})

        return callback

    def _lane(self, counter: str) -> Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            live = self._sidecar.live
            for plan in self._sidecar.route_plans():
                for lane in plan.shadows:
                    yield Observation(
                        getattr(live.lane(plan.match, lane.backend.name), counter),
                        {"route": plan.match, "shadow": lane.backend.name},
                    )

        return callback

    def _sink(self, which: str) -> Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            counts: dict[str, int] = getattr(self._sidecar.sink.stats, which)
            for table, n in counts.items():
                yield Observation(n, {"table": table})

        return callback

    def _drop_reasons(self, options: CallbackOptions) -> Iterable[Observation]:
        for reason, n in self._sidecar.sink.stats.reasons.items():
            yield Observation(n, {"reason": reason})

    def _recoveries(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._sidecar.sink.stats.recoveries)

    def _queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._sidecar.sink.queue_depth)

    def _pair(self, field: str) -> Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            for pair in self._sidecar.health.pairs():
                value = pair[field]
                if value is not None:
                    yield Observation(
                        value,
                        {"route": pair["route"], "primary": pair["primary"],
                         "shadow": pair["shadow"]},
                    )

        return callback

    # -- exposition --------------------------------------------------------------------
    def render(self) -> str:
        return prometheus.render(with_histograms(
            self._reader.get_metrics_data(), self.call_latency, self._resource))

    def observe_call(self, route: str, backend: str, role: str, latency_ms: float) -> None:
        """Called by the writer thread for each recorded call."""
        self.call_latency.observe(route, backend, role, latency_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()
