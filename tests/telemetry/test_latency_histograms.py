"""Issue 18: call latency histograms counted outside the OpenTelemetry SDK give the SDK's
own figures, to both exporters (Prometheus text and the OTLP push)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from sidecar.telemetry import prometheus
from sidecar.telemetry.latency import LatencyHistograms, WithHistograms, with_histograms
from sidecar.telemetry.metrics import LATENCY_BUCKETS_MS

NAME = "shadowcar.call.latency_ms"
DESCRIPTION = "backend call latency by route, backend and role"


def _values(seed: int) -> list[tuple[tuple[str, str, str], float]]:
    rng = np.random.default_rng(seed)
    keys = [("/a.B/C", "primary", "primary"), ("/a.B/C", "shadow", "shadow"),
            ("*", "fallback", "fallback")]
    out = []
    for _ in range(5000):
        key = keys[int(rng.integers(len(keys)))]
        out.append((key, float(rng.lognormal(1.0, 2.0))))
    # Every bound itself and its neighbours, zero and beyond the last bound.
    for bound in LATENCY_BUCKETS_MS:
        for v in (bound, np.nextafter(bound, 0), np.nextafter(bound, np.inf)):
            out.append((keys[0], float(v)))
    out += [(keys[1], 0.0), (keys[1], 1e9)]
    return out


def _sdk(values: list[tuple[tuple[str, str, str], float]]) -> MetricsData:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({}), views=[
        View(instrument_name=NAME,
             aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS_MS))])
    hist = provider.get_meter("shadowcar").create_histogram(NAME, unit="ms",
                                                           description=DESCRIPTION)
    for (route, backend, role), v in values:
        hist.record(v, {"route": route, "backend": backend, "role": role})
    data = reader.get_metrics_data()
    assert data is not None
    return data


def _ours(values: list[tuple[tuple[str, str, str], float]]) -> LatencyHistograms:
    ours = LatencyHistograms(NAME, DESCRIPTION, "ms", LATENCY_BUCKETS_MS)
    for (route, backend, role), v in values:
        ours.observe(route, backend, role, v)
    return ours


def _points(data: MetricsData) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    out = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != NAME:
                    continue
                assert isinstance(metric.data, Histogram)
                assert metric.data.aggregation_temporality is AggregationTemporality.CUMULATIVE
                for p in metric.data.data_points:
                    key = tuple(sorted(p.attributes.items()))  # type: ignore[union-attr]
                    out[key] = (p.count, tuple(p.bucket_counts), tuple(p.explicit_bounds),
                                p.min, p.max, round(p.sum, 6))
    return out


def test_the_same_buckets_counts_sums_and_extremes_as_the_sdk() -> None:
    values = _values(7)
    expected = _points(_sdk(values))
    got = _points(with_histograms(None, _ours(values), Resource.create({})))  # type: ignore[arg-type]
    assert len(expected) == 3 and got == expected


def test_the_prometheus_family_is_the_one_the_sdk_histogram_gave() -> None:
    values = _values(11)
    sdk_text = prometheus.render(_sdk(values))
    our_text = prometheus.render(with_histograms(None, _ours(values), Resource.create({})))

    def family(text: str) -> list[str]:
        lines = [line for line in text.splitlines() if "call_latency_ms" in line]
        # sums are printed with repr(): compare them rounded, every other line exactly
        return sorted(line if "_sum" not in line else line.rsplit(" ", 1)[0] for line in lines)

    assert family(our_text) == family(sdk_text)
    assert any(line.startswith("shadowcar_call_latency_ms_bucket{") for line in family(our_text))


class _Captured(MetricExporter):
    """An SDK exporter that keeps what it is given (stands in for the OTLP exporter)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def test_the_otlp_push_carries_the_histograms_with_the_sdks_metrics() -> None:
    values = _values(3)
    ours = _ours(values)
    captured = _Captured()
    resource = Resource.create({"service.name": "shadowcar-test"})
    reader = PeriodicExportingMetricReader(WithHistograms(captured, ours, resource),
                                           export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader], resource=resource)
    counter = provider.get_meter("shadowcar").create_counter("shadowcar.requests")
    counter.add(5)
    assert reader.force_flush()
    provider.shutdown()
    assert captured.batches
    names = {m.name for rm in captured.batches[0].resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}
    assert names == {"shadowcar.requests", NAME}
    assert _points(captured.batches[0]) == _points(_sdk(values))


def test_a_value_costs_a_fraction_of_an_sdk_record() -> None:
    """Why the histograms live outside the SDK: counted, not timed against a limit (the
    ratio is printed; bench/README.md has the measured figures)."""
    ours = LatencyHistograms(NAME, DESCRIPTION, "ms", LATENCY_BUCKETS_MS)
    t0 = time.perf_counter()
    for i in range(20_000):
        ours.observe("/a.B/C", "primary", "primary", (i % 97) * 0.37)
    per_value_us = (time.perf_counter() - t0) / 20_000 * 1e6
    print(f"LatencyHistograms.observe: {per_value_us:.2f} us per value")
    snapshot = ours.metric()
    assert snapshot is not None
    point = snapshot.data.data_points[0]  # type: ignore[union-attr]
    assert point.count == 20_000 == sum(point.bucket_counts)
