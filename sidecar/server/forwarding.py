"""The forwarding core: one unary call through the sidecar, transport-free.

Bytes in, bytes out: the request is never parsed. The serving backend's answer, status and
metadata come back unchanged; shadows start beside the primary and are never awaited.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.context import Context

from sidecar.assignment import Decision
from sidecar.backends import CallOutcome, Metadata
from sidecar.mirror import Mirror
from sidecar.resilience import CALLER_DEADLINE
from sidecar.routing import CallCounts, RoutePlan, RouteTable
from sidecar.sink import CallRecord, DuckDBSink, RequestRecord
from sidecar.sink.redaction import shown_error
from sidecar.telemetry.logs import current_request
from sidecar.telemetry.tracing import TRACE_KEYS, Tracing, call_attributes, rpc_attributes

__all__ = [
    "HOP_BY_HOP",
    "REQUEST_ID",
    "Answer",
    "Dispatch",
    "forward_metadata",
    "new_request_id",
]

#: Metadata that belongs to one HTTP/2 hop (or to gRPC itself) and is never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
        "te", "host", "content-type", "content-length", "user-agent", "grpc-timeout",
        "grpc-encoding", "grpc-accept-encoding", "grpc-status", "grpc-message",
        "grpc-status-details-bin", "grpc-previous-rpc-attempts", "grpc-retry-pushback-ms",
    }
)
REQUEST_ID = "x-request-id"
_DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED


def new_request_id() -> str:
    return os.urandom(16).hex()


def forward_metadata(
    incoming: Metadata, carrier: dict[str, str] | None = None
) -> tuple[Metadata, str]:
    """Metadata to forward (hop-by-hop and trace keys removed) and the request id (honoured
    or new). Trace keys go to ``carrier`` when one is given, to be replaced by the sidecar's."""
    out: list[tuple[str, str | bytes]] = []
    request_id = None
    for key, value in incoming:
        if key in HOP_BY_HOP or key[0] == ":":
            continue
        if key in TRACE_KEYS and carrier is not None:
            if isinstance(value, str):
                carrier[key] = value
            continue
        if key == REQUEST_ID and isinstance(value, str) and value:
            if request_id is not None:
                continue
            request_id = value[:128]
        out.append((key, value))
    if request_id is None:
        request_id = new_request_id()
        out.append((REQUEST_ID, request_id))
    return tuple(out), request_id


def reply_metadata(md: Metadata) -> Metadata:
    """A backend's metadata as it may be sent on to the caller."""
    return tuple(
        (k, v) for k, v in md if k not in HOP_BY_HOP and k != REQUEST_ID and k[0] != ":"
    )


@dataclass(slots=True)
class Answer:
    """What the caller gets: the serving backend's outcome, the request id, and the
    assignment to tell the caller about (when the request was exposed)."""

    outcome: CallOutcome
    request_id: str
    decision: Decision | None = None


class Dispatch:
    """The sidecar's behaviour for one config version: routes plus where records go."""

    def __init__(
        self,
        routes: RouteTable,
        version: str,
        sink: DuckDBSink,
        mirror: Mirror,
        *,
        counts: CallCounts,
        tracing: Tracing | None = None,
        listen: tuple[str, int] = ("", 0),
        assignments: dict[tuple[str, str, str], int] | None = None,
    ) -> None:
        self.routes = routes
        self.version = version
        self.sink = sink
        self.mirror = mirror
        self.counts = counts
        self._tracing = tracing
        self._listen = listen
        self._server_attrs: dict[str, dict[str, Any]] = {}
        #: (route, experiment, variant) -> exposed requests; read by metrics.
        self.assignments: dict[tuple[str, str, str], int] = (
            assignments if assignments is not None else {}
        )

    def span_attributes(self, method: str, backend_target: str | None, role: str) -> dict[str, Any]:
        """Span attributes, prebuilt: of the server span (no target), else of a client call."""
        if backend_target is not None:
            return call_attributes(method, backend_target, role)
        cached = self._server_attrs.get(method)
        if cached is None:
            host, port = self._listen
            cached = {**rpc_attributes(method), "server.address": host, "server.port": port}
            if len(self._server_attrs) < 10_000:  # method names come from callers
                self._server_attrs[method] = cached
        return cached

    async def forward(
        self,
        plan: RoutePlan,
        method: str,
        request: bytes,
        incoming: Metadata,
        time_remaining: float | None,
    ) -> Answer:
        """Serve one unary call (primary, variant or canary; fallback when it fails) and
        mirror it. Sheds load at the route's concurrency cap."""
        arrived = time.time()
        t0 = time.perf_counter()
        tracing = self._tracing
        carrier: dict[str, str] | None = {} if tracing is not None else None
        metadata, request_id = forward_metadata(incoming, carrier)
        plan.requests += 1
        limit = plan.config.max_concurrent
        if limit is not None and plan.in_flight >= limit:
            return self._shed(plan, method, request, request_id, arrived, t0, limit)
        violations = imputed = None
        if plan.enforce is not None:
            request, violations, imputed = _enforce(plan.enforce, request)
            if violations:
                return self._refuse(plan, method, request, request_id, arrived, t0,
                                    violations, imputed)
        plan.in_flight += 1
        try:
            return await self._serve(
                plan, method, request, metadata, request_id, carrier, time_remaining,
                arrived, t0, imputed,
            )
        finally:
            plan.in_flight -= 1

    def _refuse(
        self, plan: RoutePlan, method: str, request: bytes, request_id: str, arrived: float,
        t0: float, violations: tuple[Any, ...], imputed: tuple[str, ...] | None,
    ) -> Answer:
        """Enforce mode: a request that breaks the contract never reaches the model."""
        plan.contract_refused += 1
        status = "INVALID_ARGUMENT"
        contract = plan.enforce
        if plan.decoding.redactor is not None:  # the answer's text quotes no redacted value
            violations = tuple(plan.decoding.redactor.violations(violations) or ())
        shown = "; ".join(f"{v.field}: {v.rule}: {v.detail}" for v in violations[:5])
        more = f" (+{len(violations) - 5} more)" if len(violations) > 5 else ""
        details = f"contract {contract.name}@{contract.version}: {shown}{more}"
        self.sink.record_request(
            RequestRecord(
                request_id, arrived, plan.match, method, None, None, None, False, self.version,
                None, None, status, (time.perf_counter() - t0) * 1000, request, plan.decoding,
                violations, imputed,
            )
        )
        key = (plan.match, "", "contract", status)
        self.counts[key] = self.counts.get(key, 0) + 1
        outcome = CallOutcome(grpc.StatusCode.INVALID_ARGUMENT, details, None, (), (),
                              arrived, 0.0)
        return Answer(outcome, request_id, None)

    def _shed(
        self, plan: RoutePlan, method: str, request: bytes, request_id: str, arrived: float,
        t0: float, limit: int,
    ) -> Answer:
        plan.shed += 1
        status = "RESOURCE_EXHAUSTED"
        details = f"route {plan.match} is at its limit of {limit} concurrent calls"
        self.sink.record_request(
            RequestRecord(
                request_id, arrived, plan.match, method, None, None, None, False, self.version,
                None, None, status, (time.perf_counter() - t0) * 1000, request, plan.decoding,
            )
        )
        key = (plan.match, "", "shed", status)
        self.counts[key] = self.counts.get(key, 0) + 1
        outcome = CallOutcome(grpc.StatusCode.RESOURCE_EXHAUSTED, details, None, (), (),
                              arrived, 0.0)
        return Answer(outcome, request_id, None)

    async def _serve(
        self,
        plan: RoutePlan,
        method: str,
        request: bytes,
        metadata: Metadata,
        request_id: str,
        carrier: dict[str, str] | None,
        time_remaining: float | None,
        arrived: float,
        t0: float,
        imputed: tuple[str, ...] | None = None,
    ) -> Answer:
        tracing = self._tracing
        deadline = None if time_remaining is None else t0 + time_remaining
        timeout = plan.timeout_s
        if time_remaining is not None:
            reserve = 0.0
            if plan.fallback_backend is not None:
                reserve = min(plan.fallback_timeout_s, 0.5 * time_remaining)
            budget = time_remaining - plan.margin_s - reserve
            timeout = max(min(timeout, budget), 0.0005)
        primary = plan.primary
        role = "primary"
        decision: Decision | None = None
        if plan.assigner is not None:
            decision = plan.assigner.decide(metadata, request, request_id)
        elif plan.canary is not None:
            decision = plan.canary.decide(metadata, request, request_id)
        if decision is not None:
            primary = plan.backends[decision.backend]
            role = decision.role
            if decision.exposed:
                akey = (plan.match, decision.experiment or "", decision.variant or "")
                self.assignments[akey] = self.assignments.get(akey, 0) + 1
        server_ctx: Context | None = None
        trace_id = span_id = None
        primary_md = metadata
        if tracing is not None:
            server_span, server_ctx = tracing.start_server(
                method[1:], tracing.extract(carrier), self.span_attributes(method, None, "")
            )
            server_span.set_attribute("shadowcar.request_id", request_id)
            trace_id, span_id = tracing.ids(server_span)
            client_span, injected = tracing.start_client(
                f"{primary.name} {method[1:]}", server_ctx,
                self.span_attributes(method, primary.target, role),
            )
            client_span.set_attribute("shadowcar.backend", primary.name)
            client_span.set_attribute("shadowcar.backend.version", primary.version)
            primary_md = (*metadata, *injected)
        elif carrier is None:
            # Not tracing: the caller's traceparent travels on untouched; record its ids.
            for key, value in metadata:
                if key == "traceparent" and isinstance(value, str) and len(value) >= 55:
                    trace_id, span_id = value[3:35], value[36:52]
                    break
        current_request.set((request_id, trace_id))
        if plan.shadows:
            self.mirror.start(
                plan, method, request, metadata, request_id, self.version, server_ctx, primary
            )
        status = "CANCELLED"
        outcome: CallOutcome | None = None
        served: CallOutcome | None = None
        try:
            breaker = primary.breaker
            ticket = breaker.admit()
            if ticket is not None:
                try:
                    outcome = await primary.call(method, request, timeout=timeout,
                                                 metadata=primary_md)
                except BaseException:
                    breaker.release(ticket)  # cancelled by the caller: no verdict
                    raise
                # A deadline counts against the backend only when the route's own
                # timeout, not the caller's shorter deadline, was the limit.
                breaker.report(ticket, outcome.code.name,
                               shown_error(plan.decoding.redactor, outcome.details),
                               plan.failure_codes, timeout == plan.timeout_s)
            else:
                outcome = CallOutcome(
                    grpc.StatusCode.UNAVAILABLE, f"circuit open for backend {primary.name}",
                    None, (), (), time.time(), 0.0,
                )
            if tracing is not None:
                tracing.end(client_span, outcome.code,
                            shown_error(plan.decoding.redactor, outcome.details))
            served = outcome
            if (plan.enforce is not None and outcome.ok and plan.fallback_codes
                    and _output_broken(plan.enforce, outcome.response)):
                plan.errors["CONTRACT"] = plan.errors.get("CONTRACT", 0) + 1
                broken = CallOutcome(grpc.StatusCode.UNAVAILABLE, "output breaks the contract",
                                     None, (), (), outcome.started, outcome.latency_ms)
                served = await self._fallback(
                    plan, method, request, metadata, request_id, broken, deadline, server_ctx
                )
                if served is broken:
                    served = outcome  # no fallback answer: the model's own answer stands
            elif not outcome.ok and outcome.code.name in plan.fallback_codes:
                served = await self._fallback(
                    plan, method, request, metadata, request_id, outcome, deadline, server_ctx
                )
            status = served.code.name
        finally:
            # Recorded even when the caller goes away mid-call (status CANCELLED).
            if tracing is not None:
                code = served.code if served is not None else grpc.StatusCode.CANCELLED
                details = (shown_error(plan.decoding.redactor, served.details)
                           if served is not None else None)
                if outcome is None:
                    tracing.end(client_span, code, details)
                tracing.end(server_span, code, details)
            d = decision
            self.sink.record_request(
                RequestRecord(
                    request_id, arrived, plan.match, method,
                    d.unit_id if d else None, d.experiment if d else None,
                    d.variant if d else None, d.exposed if d else False,
                    self.version, trace_id, span_id, status, (time.perf_counter() - t0) * 1000,
                    request, plan.decoding, None, imputed,
                )
            )
            first = outcome.code.name if outcome is not None else status
            count_key = (plan.match, primary.name, role, first)
            counts = self.counts
            counts[count_key] = counts.get(count_key, 0) + 1
            if outcome is None:  # the caller went away first: its call row says so
                outcome = CallOutcome(grpc.StatusCode.CANCELLED, _why_cut(sys.exc_info()[1]),
                                      None, (), (), arrived, (time.perf_counter() - t0) * 1000)
            error = outcome.details
            if outcome.code is _DEADLINE and timeout != plan.timeout_s:
                error = CALLER_DEADLINE  # no verdict on the backend (the guardrails read it)
            self.sink.record_call(
                CallRecord(
                    request_id, outcome.started, plan.match, method, primary.name,
                    primary.version, role, served is outcome, outcome.code.name,
                    outcome.latency_ms, len(request), outcome.response, error,
                    self.version, plan.decoding,
                )
            )
        if not served.ok:
            plan.errors[status] = plan.errors.get(status, 0) + 1
        return Answer(served, request_id, decision if decision and decision.exposed else None)

    async def _fallback(
        self,
        plan: RoutePlan,
        method: str,
        request: bytes,
        metadata: Metadata,
        request_id: str,
        failed: CallOutcome,
        deadline: float | None,
        server_ctx: Context | None,
    ) -> CallOutcome:
        """The route's fallback answer after ``failed``; the failure itself when none fits."""
        reason = f"fallback after {failed.code.name}: {failed.details or ''}".strip()
        static = plan.fallback_static
        if static is not None:
            answer = CallOutcome(grpc.StatusCode.OK, None, static, (), (), time.time(), 0.0)
            name, version = "static", "static"
        else:
            backend = plan.fallback_backend
            assert backend is not None
            timeout = plan.fallback_timeout_s
            route_bound = True  # the fallback's own timeout, not the caller's, is the limit
            if deadline is not None:
                left = deadline - time.perf_counter() - plan.margin_s
                if left < timeout:
                    timeout, route_bound = left, False
            breaker = backend.breaker
            ticket = breaker.admit() if timeout > 0 else None
            if ticket is None:
                plan.fallback_failed += 1
                return failed
            md = metadata
            span = None
            if self._tracing is not None and server_ctx is not None:
                span, injected = self._tracing.start_client(
                    f"{backend.name} {method[1:]}", server_ctx,
                    self.span_attributes(method, backend.target, "fallback"),
                )
                md = (*metadata, *injected)
            try:
                answer = await backend.call(method, request, timeout=timeout, metadata=md)
            except BaseException:
                breaker.release(ticket)
                raise
            breaker.report(ticket, answer.code.name,
                           shown_error(plan.decoding.redactor, answer.details), plan.failure_codes,
                           route_bound)
            if span is not None:
                Tracing.end(span, answer.code, shown_error(plan.decoding.redactor, answer.details))
            name, version = backend.name, backend.version
        plan.fallbacks += 1
        key = (plan.match, name, "fallback", answer.code.name)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.sink.record_call(
            CallRecord(
                request_id, answer.started, plan.match, method, name, version, "fallback",
                answer.ok, answer.code.name, answer.latency_ms, len(request), answer.response,
                reason if answer.ok else f"{reason}; then {answer.details}", self.version,
                plan.decoding,
            )
        )
        if not answer.ok:
            plan.fallback_failed += 1
            return failed if answer.code is grpc.StatusCode.DEADLINE_EXCEEDED else answer
        return answer


def _why_cut(exc: BaseException | None) -> str:
    """The error text of a serving call that ended with no outcome."""
    if exc is None or isinstance(exc, asyncio.CancelledError):
        return "cancelled by the caller"
    return f"{type(exc).__name__}: {exc}"


def _enforce(
    contract: Any, request: bytes
) -> tuple[bytes, tuple[Any, ...], tuple[str, ...] | None]:
    """Impute declared defaults, then check the inputs: (request, violations, imputed)."""
    from sidecar.codecs import CodecError
    from sidecar.codecs.oip import decode_infer_request
    from sidecar.contracts import Violation, check_inputs, impute

    imputed = None
    try:
        fixed = impute(contract, request)
        if fixed is not None:
            request, fields = fixed
            imputed = tuple(fields)
        found = tuple(check_inputs(contract, decode_infer_request(request)))
    except CodecError as exc:
        found = (Violation("request", "datatype", f"not a ModelInferRequest: {exc}"),)
    return request, found, imputed


def _output_broken(contract: Any, response: bytes | None) -> bool:
    """Enforce mode: does the primary's answer break the contract's output rules?"""
    if not contract.outputs or response is None:
        return False
    from sidecar.codecs import CodecError
    from sidecar.codecs.oip import decode_infer_response
    from sidecar.contracts import check_outputs

    try:
        return bool(check_outputs(contract, decode_infer_response(response)))
    except CodecError:
        return True
