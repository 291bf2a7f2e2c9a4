"""A call's spans through context managers that cost nothing when tracing is off.

``spans.server(call)`` wraps a whole call (the server span; it sets the call's trace ids and
the context its client spans hang from); ``spans.client(parent, ...)`` wraps one backend call
and gives the metadata that carries the span to the backend. :data:`NO_SPANS` answers both
with shared do-nothing objects: the hot path allocates nothing for tracing that is off.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc
from opentelemetry.context import Context
from opentelemetry.trace import Span

from sidecar.telemetry.tracing import Tracing, call_attributes, rpc_attributes

__all__ = ["NO_SPANS", "CallSpans", "ClientSpan", "SpanTarget", "Spans"]

Metadata = tuple[tuple[str, str | bytes], ...]

_CANCELLED = grpc.StatusCode.CANCELLED


class SpanTarget(Protocol):
    """What a server span reads from and writes to: the call (``sidecar.server.call``)."""

    method: str
    request_id: str
    carrier: dict[str, str] | None
    trace_id: str | None
    span_id: str | None
    trace_ctx: Context | None

    def span_status(self) -> tuple[grpc.StatusCode, str | None]: ...


class ClientSpan:
    """One backend call's span; ``end`` it with the outcome (an exception ends it
    CANCELLED)."""

    __slots__ = ("_injected", "_span")

    def __init__(self, span: Span | None, injected: Metadata) -> None:
        self._span = span
        self._injected = injected

    def metadata(self, md: Metadata) -> Metadata:
        """``md`` plus the trace context that carries this span to the backend."""
        return (*md, *self._injected) if self._injected else md

    def set(self, key: str, value: Any) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def end(self, code: grpc.StatusCode, details: str | None = None) -> None:
        span, self._span = self._span, None
        if span is not None:
            Tracing.end(span, code, details)

    def __enter__(self) -> ClientSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end(_CANCELLED)


_NO_CLIENT = ClientSpan(None, ())


class _NoServer:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SERVER = _NoServer()


class Spans(Protocol):
    def server(self, call: SpanTarget) -> Any: ...

    def client(self, parent: Context | None, name: str, method: str, target: str,
               role: str) -> ClientSpan: ...


class _NoSpans:
    """Tracing off: nothing is made; the caller's trace context travels untouched."""

    def server(self, call: SpanTarget) -> _NoServer:
        return _NO_SERVER

    def client(self, parent: Context | None, name: str, method: str, target: str,
               role: str) -> ClientSpan:
        return _NO_CLIENT


NO_SPANS: Spans = _NoSpans()


class _ServerSpan:
    __slots__ = ("_call", "_span", "_spans")

    def __init__(self, spans: CallSpans, call: SpanTarget) -> None:
        self._spans = spans
        self._call = call
        self._span: Span | None = None

    def __enter__(self) -> None:
        call, tracing = self._call, self._spans.tracing
        span, ctx = tracing.start_server(
            call.method[1:], tracing.extract(call.carrier),
            self._spans.server_attributes(call.method),
        )
        span.set_attribute("shadowcar.request_id", call.request_id)
        call.trace_id, call.span_id = tracing.ids(span)
        call.trace_ctx = ctx
        self._span = span

    def __exit__(self, *exc: object) -> None:
        if self._span is not None:
            code, details = self._call.span_status()
            Tracing.end(self._span, code, details)


class CallSpans:
    """Tracing on: a server span per call, a client span per backend call."""

    def __init__(self, tracing: Tracing, listen: tuple[str, int]) -> None:
        self.tracing = tracing
        self._listen = listen
        self._server_attrs: dict[str, dict[str, Any]] = {}

    def server_attributes(self, method: str) -> dict[str, Any]:
        cached = self._server_attrs.get(method)
        if cached is None:
            host, port = self._listen
            cached = {**rpc_attributes(method), "server.address": host, "server.port": port}
            if len(self._server_attrs) < 10_000:  # method names come from callers
                self._server_attrs[method] = cached
        return cached

    def server(self, call: SpanTarget) -> _ServerSpan:
        return _ServerSpan(self, call)

    def client(self, parent: Context | None, name: str, method: str, target: str,
               role: str) -> ClientSpan:
        if parent is None:
            return _NO_CLIENT
        span, injected = self.tracing.start_client(
            f"{name} {method[1:]}", parent, call_attributes(method, target, role)
        )
        return ClientSpan(span, injected)


def spans_for(tracing: Tracing | None, listen: tuple[str, int] = ("", 0)) -> Spans:
    """The hot path's spans: real ones only when some exporter would receive them."""
    return CallSpans(tracing, listen) if tracing is not None else NO_SPANS
