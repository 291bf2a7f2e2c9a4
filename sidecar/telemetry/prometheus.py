"""Prometheus text exposition (format 0.0.4) of OpenTelemetry metrics data.

Reads what an in-memory OpenTelemetry reader collected: monotonic sums become counters
(``_total``), other sums and gauges become gauges, histograms become ``_bucket``/``_sum``/
``_count`` families.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import Gauge, Histogram, Metric, MetricsData, Sum

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_BAD = re.compile(r"[^a-zA-Z0-9_:]")


def _name(name: str) -> str:
    out = _BAD.sub("_", name)
    return out if not out[:1].isdigit() else "_" + out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(attrs: Mapping[str, Any] | None, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = [(_name(str(k)), str(v)) for k, v in (attrs or {}).items()] + list(extra)
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _metric_lines(metric: Metric) -> Iterable[str]:
    data = metric.data
    name = _name(metric.name)
    help_text = _escape(metric.description or metric.name)
    if isinstance(data, Sum) and data.is_monotonic:
        base = name.removesuffix("_total")
        yield f"# HELP {base}_total {help_text}"
        yield f"# TYPE {base}_total counter"
        for point in data.data_points:
            yield f"{base}_total{_labels(point.attributes)} {_num(point.value)}"
    elif isinstance(data, (Sum, Gauge)):
        yield f"# HELP {name} {help_text}"
        yield f"# TYPE {name} gauge"
        for point in data.data_points:
            yield f"{name}{_labels(point.attributes)} {_num(point.value)}"
    elif isinstance(data, Histogram):
        yield f"# HELP {name} {help_text}"
        yield f"# TYPE {name} histogram"
        for hist in data.data_points:
            cumulative = 0
            for bound, count in zip(hist.explicit_bounds, hist.bucket_counts, strict=False):
                cumulative += count
                le = (("le", _num(float(bound))),)
                yield f"{name}_bucket{_labels(hist.attributes, le)} {cumulative}"
            yield f"{name}_bucket{_labels(hist.attributes, (('le', '+Inf'),))} {hist.count}"
            yield f"{name}_sum{_labels(hist.attributes)} {_num(hist.sum)}"
            yield f"{name}_count{_labels(hist.attributes)} {hist.count}"


def render(data: MetricsData | None) -> str:
    """The whole exposition; metrics with the same name are merged in first-seen order."""
    seen: dict[str, list[str]] = {}
    for resource_metrics in (data.resource_metrics if data else ()):
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                lines = list(_metric_lines(metric))
                if not lines:
                    continue
                key = lines[1]  # the TYPE line names the family
                if key in seen:
                    seen[key].extend(line for line in lines[2:])
                else:
                    seen[key] = lines
    return "".join(line + "\n" for lines in seen.values() for line in lines)
