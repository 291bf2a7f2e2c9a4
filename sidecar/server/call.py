"""The one value a call is: made in ``Dispatch.forward`` (or a stream's start), carried
through admit, decide, serve, mirror, answer and record; its records are built from it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
from opentelemetry.context import Context

from sidecar.assignment import Decision
from sidecar.backends import Backend, CallOutcome, Metadata
from sidecar.routing import RoutePlan
from sidecar.sink import CallRecord, RequestRecord
from sidecar.sink.redaction import shown_error

__all__ = ["Call"]

_CANCELLED = grpc.StatusCode.CANCELLED


@dataclass(slots=True, eq=False)
class Call:
    """One call through the sidecar: what came in, what was decided, what came back."""

    plan: RoutePlan
    method: str
    request: bytes
    #: The caller's metadata as forwarded (hop-by-hop and, when tracing, trace keys gone).
    metadata: Metadata
    request_id: str
    version: str
    #: Wall-clock arrival (recorded) and the perf-counter start (latencies).
    arrived: float
    t0: float
    time_remaining: float | None = None
    #: The caller's trace keys, when the sidecar makes its own spans.
    carrier: dict[str, str] | None = None
    #: The serving backend and its role (primary, variant, stable, canary).
    backend: Backend | None = None
    role: str = "primary"
    decision: Decision | None = None
    #: The serving call's timeout, and whether the route's own timeout set it.
    timeout: float = 0.0
    route_bound: bool = True
    trace_id: str | None = None
    span_id: str | None = None
    trace_ctx: Context | None = None
    violations: tuple[object, ...] | None = None
    imputed: tuple[str, ...] | None = None
    #: The serving backend's own outcome, and what the caller gets (a fallback's, maybe).
    outcome: CallOutcome | None = None
    served: CallOutcome | None = None
    #: A stream's end as the caller saw it (set when it ends early: cancelled or failed);
    #: shadow streams end with it unless the route asks for full shadow streams.
    cut: asyncio.Event | None = None

    @property
    def status(self) -> str:
        return self.served.code.name if self.served is not None else "CANCELLED"

    @property
    def exposed(self) -> Decision | None:
        """The assignment to tell the caller about (the unit was exposed), else None."""
        d = self.decision
        return d if d is not None and d.exposed else None

    def shown(self, details: str | None) -> str | None:
        """``details`` as spans and logs may show them (a redacted route's, hashed)."""
        return shown_error(self.plan.decoding.redactor, details)

    def span_status(self) -> tuple[grpc.StatusCode, str | None]:
        served = self.served
        if served is None:
            return _CANCELLED, None
        return served.code, self.shown(served.details)

    def request_record(self, status: str | None = None) -> RequestRecord:
        d = self.decision
        return RequestRecord(
            request_id=self.request_id, ts=self.arrived, route=self.plan.config.match,
            method=self.method,
            unit_id=d.unit_id if d else None,
            experiment=d.experiment if d else None,
            variant=d.variant if d else None,
            exposed=d.exposed if d else False,
            config_version=self.version, trace_id=self.trace_id, span_id=self.span_id,
            status=status or self.status, latency_ms=(time.perf_counter() - self.t0) * 1000,
            request=self.request, decoding=self.plan.decoding,
            violations=self.violations, imputed=self.imputed,
        )

    def call_record(
        self, backend: Backend | None, role: str, outcome: CallOutcome, *, served: bool,
        error: str | None = None, name: str | None = None, request_size: int | None = None,
    ) -> CallRecord:
        """The row of one backend call of this request (``name``: a static fallback's)."""
        return CallRecord(
            request_id=self.request_id, ts=outcome.started, route=self.plan.config.match,
            method=self.method,
            backend=name or (backend.name if backend is not None else ""),
            backend_version=name or (backend.version if backend is not None else ""),
            role=role, served=served, status=outcome.code.name,
            latency_ms=outcome.latency_ms,
            request_size=len(self.request) if request_size is None else request_size,
            response=outcome.response, error=error, config_version=self.version,
            decoding=self.plan.decoding, messages=outcome.messages,
            first_message_ms=outcome.first_message_ms,
        )
