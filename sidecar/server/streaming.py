"""Streaming pass-through: server-, client- and bidirectional-streaming methods, raw bytes.

Flow control stays end to end: a message is read from one side only when the other side
has taken the previous one. Server-streaming calls can be mirrored: the shadow gets the
same request and its whole stream is consumed in the background, never awaited by the
caller. Both streams are recorded (messages, time to first message, concatenated bytes).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc

from sidecar.backends import Backend, Metadata
from sidecar.mirror.mirror import SHADOW_METADATA
from sidecar.resilience import Ticket
from sidecar.routing import RoutePlan, ShadowLane, sampled_lanes
from sidecar.server.forwarding import REQUEST_ID, Dispatch, forward_metadata, reply_metadata
from sidecar.sink import CallRecord, RequestRecord
from sidecar.sink.redaction import shown_error

__all__ = ["StreamForwarder"]

Context: TypeAlias = grpc.aio.ServicerContext[bytes, bytes]
MAX_RECORDED = 1 << 20  # bytes of a stream kept for recording


class _Tally:
    """Counts a stream's messages and keeps its first bytes for the record."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.messages = 0
        self.first_ms: float | None = None
        self.size = 0
        self.parts: list[bytes] = []

    def add(self, message: bytes) -> None:
        self.messages += 1
        if self.first_ms is None:
            self.first_ms = (time.perf_counter() - self.t0) * 1000
        if self.size < MAX_RECORDED:
            self.parts.append(message)
        self.size += len(message)

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


async def _counted(requests: AsyncIterator[bytes], tally: _Tally) -> AsyncIterator[bytes]:
    """The caller's messages on their way upstream, counted for the record."""
    async for message in requests:
        tally.add(message)
        yield message


class StreamForwarder:
    """Stream behaviours over one :class:`Dispatch` (its sink, mirror, version)."""

    def __init__(self, dispatch: Dispatch) -> None:
        self._d = dispatch

    def _timeout(self, plan: RoutePlan, context: Context) -> float:
        remaining = context.time_remaining()
        timeout = plan.timeout_s
        if remaining is not None:
            timeout = max(min(timeout, remaining - plan.margin_s), 0.0005)
        return timeout

    def _record(
        self, plan: RoutePlan, method: str, backend: Backend, role: str, served: bool,
        rid: str, started: float, t0: float, request: bytes, tally: _Tally, status: str,
        details: str | None,
    ) -> None:
        d = self._d
        d.sink.record_call(
            CallRecord(
                rid, started, plan.match, method, backend.name, backend.version, role, served,
                status, (time.perf_counter() - t0) * 1000, len(request), tally.data, details,
                d.version, plan.decoding, tally.messages, tally.first_ms,
            )
        )
        key = (plan.match, backend.name, role, status)
        d.counts[key] = d.counts.get(key, 0) + 1

    def _record_request(
        self, plan: RoutePlan, method: str, rid: str, arrived: float, t0: float,
        request: bytes, status: str,
    ) -> None:
        d = self._d
        d.sink.record_request(
            RequestRecord(
                rid, arrived, plan.match, method, None, None, None, False, d.version, None,
                None, status, (time.perf_counter() - t0) * 1000, request, plan.decoding,
            )
        )

    async def _relay(
        self, call: Any, context: Context, rid: str, tally: _Tally
    ) -> AsyncIterator[bytes]:
        initial = await call.initial_metadata()
        await context.send_initial_metadata(
            (*reply_metadata(tuple(initial or ())), (REQUEST_ID, rid))
        )
        async for message in call:
            tally.add(message)
            yield message
        trailing = reply_metadata(tuple(await call.trailing_metadata() or ()))
        if trailing:
            context.set_trailing_metadata(trailing)

    async def _answer_stream(
        self, plan: RoutePlan, method: str, backend: Backend, call: Any, context: Context,
        rid: str, arrived: float, t0: float, request_bytes: Callable[[], bytes],
    ) -> AsyncIterator[bytes]:
        """Relay the backend's stream to the caller (its status too), then record both
        sides; ``request_bytes`` is read at the end, once a client stream is complete."""
        tally = _Tally(t0)
        status, details = "CANCELLED", None
        try:
            async for message in self._relay(call, context, rid, tally):
                yield message
            status = "OK"
        except grpc.aio.AioRpcError as err:
            status, details = err.code().name, err.details()
            await context.abort(err.code(), err.details() or "",
                                reply_metadata(tuple(err.trailing_metadata() or ())))
        finally:
            call.cancel()
            sent = request_bytes()
            self._record_request(plan, method, rid, arrived, t0, sent, status)
            self._record(plan, method, backend, "primary", True, rid, arrived, t0, sent,
                         tally, status, details)

    async def server_stream(
        self, plan: RoutePlan, method: str, request: bytes, context: Context
    ) -> AsyncIterator[bytes]:
        arrived, t0 = time.time(), time.perf_counter()
        plan.requests += 1
        metadata, rid = forward_metadata(context.invocation_metadata() or ())
        backend = plan.primary
        self._mirror(plan, method, request, metadata, rid, backend)
        call = backend.stream("server", method)(
            request, timeout=self._timeout(plan, context), metadata=metadata
        )
        async for message in self._answer_stream(
            plan, method, backend, call, context, rid, arrived, t0, lambda: request
        ):
            yield message

    async def client_stream(
        self, plan: RoutePlan, method: str, requests: AsyncIterator[bytes], context: Context
    ) -> bytes:
        arrived, t0 = time.time(), time.perf_counter()
        plan.requests += 1
        metadata, rid = forward_metadata(context.invocation_metadata() or ())
        backend = plan.primary
        sent = _Tally(t0)
        call = backend.stream("client", method)(
            _counted(requests, sent), timeout=self._timeout(plan, context), metadata=metadata
        )
        status, details, response = "CANCELLED", None, b""
        try:
            response = await call
            status = "OK"
            await context.send_initial_metadata(
                (*reply_metadata(tuple(await call.initial_metadata() or ())), (REQUEST_ID, rid))
            )
            trailing = reply_metadata(tuple(await call.trailing_metadata() or ()))
            if trailing:
                context.set_trailing_metadata(trailing)
            return bytes(response)
        except grpc.aio.AioRpcError as err:
            status, details = err.code().name, err.details()
            await context.abort(err.code(), err.details() or "",
                                reply_metadata(tuple(err.trailing_metadata() or ())))
            raise
        finally:
            call.cancel()
            tally = _Tally(t0)
            if response:
                tally.add(bytes(response))
            self._record_request(plan, method, rid, arrived, t0, sent.data, status)
            self._record(plan, method, backend, "primary", True, rid, arrived, t0, sent.data,
                         tally, status, details)

    async def bidi_stream(
        self, plan: RoutePlan, method: str, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        arrived, t0 = time.time(), time.perf_counter()
        plan.requests += 1
        metadata, rid = forward_metadata(context.invocation_metadata() or ())
        backend = plan.primary
        sent = _Tally(t0)
        call = backend.stream("bidi", method)(
            _counted(requests, sent), timeout=self._timeout(plan, context), metadata=metadata
        )
        async for message in self._answer_stream(
            plan, method, backend, call, context, rid, arrived, t0, lambda: sent.data
        ):
            yield message

    # -- mirroring of server streams -------------------------------------------------
    def _mirror(
        self, plan: RoutePlan, method: str, request: bytes, metadata: Metadata, rid: str,
        serving: Backend,
    ) -> None:
        mirror = self._d.mirror
        for lane in sampled_lanes(plan, rid, serving):
            ticket = mirror.admit(lane)
            if isinstance(ticket, str):
                continue
            lane.in_flight += 1
            lane.sent += 1
            mirror.own(self._shadow(plan, lane, method, request,
                                    (*metadata, SHADOW_METADATA), rid, ticket))

    async def _shadow(
        self, plan: RoutePlan, lane: ShadowLane, method: str, request: bytes,
        metadata: Metadata, rid: str, ticket: Ticket,
    ) -> None:
        started, t0 = time.time(), time.perf_counter()
        tally = _Tally(t0)
        status, details = "CANCELLED", None
        call = None
        try:
            call = lane.backend.stream("server", method)(
                request, timeout=lane.timeout_s, metadata=metadata
            )
            async for message in call:
                tally.add(message)
            status = "OK"
        except grpc.aio.AioRpcError as err:
            status, details = err.code().name, err.details()
        finally:
            if call is not None:
                call.cancel()
            if status != "OK":  # errors and cancellations alike: sent, not answered
                lane.errored += 1
            lane.in_flight -= 1
            # The one rule (a CANCELLED cut, like a caller's fault, only frees a probe slot).
            lane.backend.breaker.report(ticket, status,
                                        shown_error(plan.decoding.redactor, details),
                                        plan.failure_codes)
            self._record(plan, method, lane.backend, "shadow", False, rid, started, t0,
                         request, tally, status, details)
