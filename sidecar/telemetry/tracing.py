"""Tracing: one server span per call, a client span per backend call, W3C propagation.

Configured by the config's ``telemetry.traces`` and the standard ``OTEL_*`` variables (which
win); with no exporter named, an OTLP endpoint alone turns OTLP export on, as in the SDKs.
Export failures are said once in the log; the span queue is bounded, so a missing
collector costs neither memory nor the caller's latency.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.config import TelemetryConfig
from sidecar.config.security import mask_url

__all__ = ["TRACE_KEYS", "Tracing", "exporter_kind"]

log = logging.getLogger(__name__)

#: Metadata keys that carry trace context; replaced by the sidecar's own on the way out.
TRACE_KEYS = frozenset({"traceparent", "tracestate", "baggage"})

_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


class _SayOnceExporter(SpanExporter):
    """Wraps an exporter so that an unreachable collector is logged once, not per batch."""

    def __init__(self, inner: SpanExporter, endpoint: str) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self._failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # an exporter must never take the worker thread down
            result = SpanExportResult.FAILURE
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "export failed"
        if result is SpanExportResult.FAILURE:
            if not self._failing:
                self._failing = True
                log.warning(
                    "trace export to %s is failing (%s); spans are dropped until it recovers",
                    self._endpoint, reason,
                )
        elif self._failing:
            self._failing = False
            log.info("trace export to %s recovered", self._endpoint)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _otlp_exporter(endpoint: str | None) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    # Quiet the exporter's own per-retry warnings; _SayOnceExporter reports instead.
    logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter").setLevel(logging.ERROR)
    if endpoint is None:
        return OTLPSpanExporter(timeout=5)
    return OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://")
                            or "://" not in endpoint, timeout=5)


class Tracing:
    """The sidecar's tracer, propagator and span helpers (no global state is touched)."""

    def __init__(
        self, settings: TelemetryConfig, *, exporter: SpanExporter | None = None
    ) -> None:
        env = os.environ
        service = env.get("OTEL_SERVICE_NAME") or settings.service_name
        resource = Resource.create({"service.name": service})
        kwargs: dict[str, Any] = {"resource": resource}
        if not env.get("OTEL_TRACES_SAMPLER"):
            # Without the variable, the config's ratio; with it, the SDK reads it itself.
            kwargs["sampler"] = ParentBased(TraceIdRatioBased(settings.traces.sample_ratio))
        self.provider = TracerProvider(**kwargs)
        self.export_target = "none"
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
            self.export_target = "in-process"
        else:
            endpoint = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or settings.traces.endpoint
            )
            kind = exporter_kind(env.get("OTEL_TRACES_EXPORTER"), settings.traces.exporter,
                                 endpoint)
            chosen: SpanExporter | None = None
            shown = endpoint  # what logs say: never an endpoint's credentials
            if endpoint and ("@" in endpoint or "?" in endpoint):
                shown = mask_url(endpoint)
            if kind == "otlp":
                chosen = _SayOnceExporter(_otlp_exporter(endpoint), shown or "default")
            elif kind == "console":
                chosen = ConsoleSpanExporter()
            if chosen is not None:
                self.provider.add_span_processor(
                    BatchSpanProcessor(
                        chosen,
                        max_queue_size=settings.traces.max_queue_size,
                        max_export_batch_size=min(512, settings.traces.max_queue_size),
                    )
                )
                self.export_target = kind if kind != "otlp" else f"otlp {shown or 'default'}"
        if self.export_target == "none" and not env.get("OTEL_TRACES_SAMPLER"):
            # Nothing would export the spans: record none. Non-recording spans still carry
            # trace ids, so propagation and the recorded trace_id keep working.
            from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

            self.provider.sampler = ParentBased(ALWAYS_OFF, remote_parent_sampled=ALWAYS_OFF)
        self.tracer = self.provider.get_tracer("shadowcar")

    @property
    def exporting(self) -> bool:
        """Spans go somewhere. Without an exporter the hot path makes none at all: the
        caller's trace context is forwarded as it came, and its trace id recorded."""
        return self.export_target != "none" or bool(os.environ.get("OTEL_TRACES_SAMPLER"))

    # -- per call --------------------------------------------------------------------
    def extract(self, carrier: dict[str, str] | None) -> Context | None:
        return _PROPAGATOR.extract(carrier) if carrier else None

    def start_server(
        self, name: str, parent: Context | None, attributes: dict[str, Any]
    ) -> tuple[Span, Context]:
        span = self.tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        return span, trace.set_span_in_context(span, parent)

    def start_client(
        self, name: str, parent: Context, attributes: dict[str, Any]
    ) -> tuple[Span, tuple[tuple[str, str], ...]]:
        """A client span and the metadata that carries it to the backend."""
        span = self.tracer.start_span(
            name, context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, parent))
        return span, tuple(carrier.items())

    @staticmethod
    def end(span: Span, code: grpc.StatusCode, details: str | None = None) -> None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, details or code.name))
        span.end()

    @staticmethod
    def ids(span: Span) -> tuple[str | None, str | None]:
        ctx = span.get_span_context()
        if not ctx.is_valid:
            return None, None
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")

    def shutdown(self) -> None:
        self.provider.shutdown()


def exporter_kind(env_value: str | None, configured: str | None, endpoint: str | None) -> str:
    """The span exporter to build, by the OpenTelemetry SDKs' own rules.

    ``OTEL_TRACES_EXPORTER`` wins (a list such as ``otlp,console`` names its first known
    exporter; ``none`` anywhere in it means none). Else the config's ``exporter``. Left
    unset, the SDKs default to ``otlp``; the sidecar follows them once an endpoint says
    where to send (env or config), and otherwise makes no spans rather than retrying
    localhost:4317 forever.
    """
    if env_value and env_value.strip():
        names = [n.strip().lower() for n in env_value.split(",") if n.strip()]
        if "none" in names:
            return "none"
        known = [n for n in names if n in ("otlp", "console")]
        if known:
            return known[0]
        log.warning("OTEL_TRACES_EXPORTER=%s names no exporter the sidecar has (otlp, "
                    "console); the config's exporter applies", env_value)
    if configured is not None:
        return configured
    return "otlp" if endpoint else "none"


def rpc_attributes(method: str) -> dict[str, str]:
    """``rpc.system``, ``rpc.service`` and ``rpc.method`` of a full method name."""
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


@functools.lru_cache(maxsize=4096)
def call_attributes(method: str, target: str, role: str) -> dict[str, Any]:
    """Client-span attributes of a ``role`` call of ``method`` to ``target``, built once per
    triple and shared: callers must not change the dict (spans copy their attributes)."""
    host, port = host_port(target)
    # typed wider than rpc_attributes' str values: ports are ints, the shadow flag a bool
    attrs: dict[str, Any] = rpc_attributes(method)
    attrs.update({"server.address": host, "server.port": port, "shadowcar.role": role,
                  "shadowcar.shadow": role == "shadow"})
    return attrs
