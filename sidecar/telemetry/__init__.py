"""Telemetry: OpenTelemetry traces and metrics, live model health, structured logs."""

from sidecar.telemetry.metrics import LATENCY_BUCKETS_MS, Metrics
from sidecar.telemetry.model_health import ModelHealth
from sidecar.telemetry.tracing import TRACE_KEYS, Tracing

__all__ = ["LATENCY_BUCKETS_MS", "TRACE_KEYS", "Metrics", "ModelHealth", "Tracing"]
