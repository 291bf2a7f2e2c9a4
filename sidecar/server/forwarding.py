"""The forwarding core: one unary call through the sidecar, transport-free.

Bytes in, bytes out: the request is never parsed. ``Dispatch.forward`` makes one
:class:`Call` and carries it through a short pipeline: admit (shed, contract), decide
(experiment, canary), serve with fallback, mirror, record; the transport answers from it
(:func:`reply_metadata`, :func:`request_id_metadata`). Shadows are never awaited.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from typing import Any

import grpc

from sidecar.backends import Backend, CallOutcome, Metadata
from sidecar.mirror import Mirror
from sidecar.resilience import CALLER_DEADLINE, Ticket
from sidecar.routing import LiveCounters, RoutePlan, RouteTable
from sidecar.server.call import Call
from sidecar.sink import DuckDBSink
from sidecar.telemetry.logs import current_request
from sidecar.telemetry.spans import NO_SPANS, Spans
from sidecar.telemetry.tracing import TRACE_KEYS

__all__ = [
    "HOP_BY_HOP",
    "REQUEST_ID",
    "Call",
    "Dispatch",
    "forward_metadata",
    "new_request_id",
    "reply_metadata",
    "request_id_metadata",
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
_OK = grpc.StatusCode.OK


#: Request ids come from a generator seeded from the OS once (again in a forked child):
#: ``os.urandom`` per call lets go of the GIL around its syscall, and getting it back
#: costs the event loop a wait behind the writer thread on every call (measured in
#: bench/README.md). The ids need to be unique, not secret: callers may send their own.
_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)


def new_request_id() -> str:
    return _IDS.randbytes(16).hex()


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


def request_id_metadata(call: Call) -> Metadata:
    """What the sidecar adds to the caller's answer: the request id, and the assignment
    when the unit was exposed."""
    d = call.exposed
    if d is None:
        return ((REQUEST_ID, call.request_id),)
    return ((REQUEST_ID, call.request_id), ("x-experiment", d.experiment or ""),
            ("x-variant", d.variant or ""))


class Dispatch:
    """The sidecar's behaviour for one config version: routes plus where records go."""

    def __init__(
        self,
        routes: RouteTable,
        version: str,
        sink: DuckDBSink,
        mirror: Mirror,
        *,
        live: LiveCounters,
        spans: Spans = NO_SPANS,
    ) -> None:
        self.routes = routes
        self.version = version
        self.sink = sink
        self.mirror = mirror
        self.live = live
        self.spans = spans
        self._tracing = spans is not NO_SPANS

    def open(self, plan: RoutePlan, method: str, request: bytes, incoming: Metadata,
             time_remaining: float | None, *, traced: bool = True) -> Call:
        """A new call on ``plan``: request id honoured or made, metadata to forward, the
        caller's trace ids read (tracing off, or an untraced stream) or kept for the
        sidecar's spans (on)."""
        carrier: dict[str, str] | None = {} if traced and self._tracing else None
        metadata, request_id = forward_metadata(incoming, carrier)
        call = Call(plan, method, request, metadata, request_id, self.version, time.time(),
                    time.perf_counter(), time_remaining, carrier, plan.primary)
        if carrier is None:
            # Not tracing: the caller's traceparent travels on untouched; record its ids.
            for key, value in metadata:
                if key == "traceparent" and isinstance(value, str) and len(value) >= 55:
                    call.trace_id, call.span_id = value[3:35], value[36:52]
                    break
        self.live.route(plan.config.match).requests += 1
        return call

    async def forward(
        self,
        plan: RoutePlan,
        method: str,
        request: bytes,
        incoming: Metadata,
        time_remaining: float | None,
    ) -> Call:
        """Serve one unary call (primary, variant or canary; fallback when it fails) and
        mirror it. Sheds load at the route's concurrency cap. ``call.served`` is the
        caller's answer."""
        call = self.open(plan, method, request, incoming, time_remaining)
        counters = self.live.route(plan.config.match)
        if not self._admit(call, counters.in_flight):
            return call
        counters.in_flight += 1
        try:
            self._decide(call)
            with self.spans.server(call):
                current_request.set((call.request_id, call.trace_id))
                if plan.shadows:
                    self.mirror.start(call)
                try:
                    await self._serve(call)
                finally:  # recorded even when the caller goes away mid-call (CANCELLED)
                    self._record(call)
        finally:
            counters.in_flight -= 1
        served = call.served
        assert served is not None
        if not served.ok:
            errors = counters.errors
            errors[served.code.name] = errors.get(served.code.name, 0) + 1
        return call

    # -- admit -------------------------------------------------------------------------
    def _admit(self, call: Call, in_flight: int) -> bool:
        """Shed at the route's cap; enforce its contract. A refused call is answered and
        recorded here."""
        plan = call.plan
        limit = plan.config.max_concurrent
        if limit is not None and in_flight >= limit:
            self.live.route(plan.config.match).shed += 1
            self._refused(call, grpc.StatusCode.RESOURCE_EXHAUSTED, "shed",
                          f"route {plan.match} is at its limit of {limit} concurrent calls")
            return False
        if plan.enforce is None:
            return True
        call.request, violations, call.imputed = _enforce(plan.enforce, call.request)
        if not violations:
            return True
        # Enforce mode: a request that breaks the contract never reaches the model.
        self.live.route(plan.config.match).contract_refused += 1
        contract = plan.enforce
        if plan.decoding.redactor is not None:  # the answer's text quotes no redacted value
            violations = tuple(plan.decoding.redactor.violations(violations) or ())
        call.violations = violations
        shown = "; ".join(f"{v.field}: {v.rule}: {v.detail}" for v in violations[:5])
        more = f" (+{len(violations) - 5} more)" if len(violations) > 5 else ""
        self._refused(call, grpc.StatusCode.INVALID_ARGUMENT, "contract",
                      f"contract {contract.name}@{contract.version}: {shown}{more}")
        return False

    def _refused(self, call: Call, code: grpc.StatusCode, role: str, details: str) -> None:
        call.served = CallOutcome(code, details, None, (), (), call.arrived, 0.0)
        self.sink.record_request(call.request_record())
        self.live.count_call(call.plan.config.match, "", role, code.name)

    # -- decide ------------------------------------------------------------------------
    def _decide(self, call: Call) -> None:
        """Who serves (experiment variant, canary share, else the primary) and with which
        timeout: the smaller of the route's and the caller's remaining deadline, less the
        margin and the fallback's reserve."""
        plan = call.plan
        timeout = plan.timeout_s
        remaining = call.time_remaining
        if remaining is not None:
            reserve = 0.0
            if plan.fallback_backend is not None:
                reserve = min(plan.fallback_timeout_s, 0.5 * remaining)
            timeout = max(min(timeout, remaining - plan.margin_s - reserve), 0.0005)
            call.route_bound = timeout == plan.timeout_s
        call.timeout = timeout
        decider = plan.assigner if plan.assigner is not None else plan.canary
        if decider is None:
            return
        decision = decider.decide(call.metadata, call.request, call.request_id)
        call.decision = decision
        call.backend = plan.backends[decision.backend]
        call.role = decision.role
        if decision.exposed:
            key = (plan.match, decision.experiment or "", decision.variant or "")
            assignments = self.live.assignments
            assignments[key] = assignments.get(key, 0) + 1

    # -- serve -------------------------------------------------------------------------
    async def _serve(self, call: Call) -> None:
        """The serving backend's call behind its breaker, then the fallback if its status
        (or, in enforce mode, its output) asks for one."""
        plan = call.plan
        backend = call.backend
        assert backend is not None
        with self.spans.client(call.trace_ctx, backend.name, call.method, backend.target,
                               call.role) as span:
            span.set("shadowcar.backend", backend.name)
            span.set("shadowcar.backend.version", backend.version)
            ticket = backend.breaker.admit()
            if ticket is None:
                outcome = CallOutcome(grpc.StatusCode.UNAVAILABLE,
                                      f"circuit open for backend {backend.name}", None, (), (),
                                      time.time(), 0.0)
            else:
                outcome = await self._call(call, backend, ticket, call.timeout,
                                           call.route_bound, span.metadata(call.metadata))
            span.end(outcome.code, call.shown(outcome.details))
        call.outcome = call.served = outcome
        if outcome.ok:
            if (plan.enforce is not None and plan.fallback_codes
                    and _output_broken(plan.enforce, outcome.response)):
                errors = self.live.route(plan.config.match).errors
                errors["CONTRACT"] = errors.get("CONTRACT", 0) + 1
                broken = CallOutcome(grpc.StatusCode.UNAVAILABLE, "output breaks the contract",
                                     None, (), (), outcome.started, outcome.latency_ms)
                served = await self._fallback(call, broken)
                # no fallback answer: the model's own answer stands
                call.served = outcome if served is broken else served
        elif outcome.code.name in plan.fallback_codes:
            call.served = await self._fallback(call, outcome)

    async def _call(self, call: Call, backend: Backend, ticket: Ticket, timeout: float,
                    route_bound: bool, metadata: Metadata) -> CallOutcome:
        """One backend call on a breaker ``ticket``. A deadline counts against the backend
        only when the route's own timeout, not the caller's shorter deadline, was the
        limit; a caller's cancel gives no verdict."""
        breaker = backend.breaker
        try:
            outcome = await backend.call(call.method, call.request, timeout=timeout,
                                         metadata=metadata)
        except BaseException:
            breaker.release(ticket)  # cancelled by the caller: no verdict
            raise
        breaker.report(ticket, outcome.code.name, call.shown(outcome.details),
                       call.plan.failure_codes, route_bound)
        return outcome

    async def _fallback(self, call: Call, failed: CallOutcome) -> CallOutcome:
        """The route's fallback answer after ``failed``; the failure itself when none fits."""
        plan = call.plan
        counters = self.live.route(plan.config.match)
        reason = f"fallback after {failed.code.name}: {failed.details or ''}".strip()
        static = plan.fallback_static
        backend = None
        if static is not None:
            answer = CallOutcome(_OK, None, static, (), (), time.time(), 0.0)
        else:
            backend = plan.fallback_backend
            assert backend is not None
            timeout = plan.fallback_timeout_s
            route_bound = True  # the fallback's own timeout, not the caller's, is the limit
            if call.time_remaining is not None:
                left = call.t0 + call.time_remaining - time.perf_counter() - plan.margin_s
                if left < timeout:
                    timeout, route_bound = left, False
            ticket = backend.breaker.admit() if timeout > 0 else None
            if ticket is None:
                counters.fallback_failed += 1
                return failed
            with self.spans.client(call.trace_ctx, backend.name, call.method, backend.target,
                                   "fallback") as span:
                answer = await self._call(call, backend, ticket, timeout, route_bound,
                                          span.metadata(call.metadata))
                span.end(answer.code, call.shown(answer.details))
        counters.fallbacks += 1
        name = backend.name if backend is not None else "static"
        self.live.count_call(plan.config.match, name, "fallback", answer.code.name)
        self.sink.record_call(call.call_record(
            backend, "fallback", answer, served=answer.ok, name=None if backend else "static",
            error=reason if answer.ok else f"{reason}; then {answer.details}",
        ))
        if not answer.ok:
            counters.fallback_failed += 1
            return failed if answer.code is _DEADLINE else answer
        return answer

    # -- record ------------------------------------------------------------------------
    def _record(self, call: Call) -> None:
        """The request row and the serving call's row, from the call."""
        plan = call.plan
        self.sink.record_request(call.request_record())
        outcome = call.outcome
        backend = call.backend
        assert backend is not None
        self.live.count_call(plan.config.match, backend.name, call.role,
                             outcome.code.name if outcome is not None else call.status)
        if outcome is None:  # the caller went away first: its call row says so
            outcome = CallOutcome(grpc.StatusCode.CANCELLED, _why_cut(sys.exc_info()[1]),
                                  None, (), (), call.arrived,
                                  (time.perf_counter() - call.t0) * 1000)
        error = outcome.details
        if outcome.code is _DEADLINE and not call.route_bound:
            error = CALLER_DEADLINE  # no verdict on the backend (the guardrails read it)
        self.sink.record_call(call.call_record(backend, call.role, outcome,
                                               served=call.served is outcome, error=error))


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
