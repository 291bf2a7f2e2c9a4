"""Streaming pass-through: server-, client- and bidirectional-streaming methods, raw bytes.

Flow control stays end to end: a message is read from one side only when the other side
has taken the previous one. A stream is one :class:`Call` like a unary call; every kind is
mirrored through the same :class:`Mirror` (same sampling, caps, DROPPED rows and spans),
each shadow's stream read in the background, never awaited by the caller; a client or bidi
shadow gets the caller's messages as they pass (sidecar/mirror/feeds.py).
Both streams are recorded: messages seen, time to first message, the first bytes
concatenated, and each message within the storage bounds (``stream_messages``,
docs/streams.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc

from sidecar.backends import CallOutcome, Metadata, StreamKind
from sidecar.backends.channel import MAX_RECORDED
from sidecar.mirror.feeds import Feeds
from sidecar.mirror.streams import call_messages
from sidecar.routing import RoutePlan
from sidecar.server.call import Call
from sidecar.server.forwarding import Dispatch, reply_metadata, request_id_metadata
from sidecar.sink.streams import Direction, StreamMessageRecord

__all__ = ["StreamForwarder"]

Context: TypeAlias = grpc.aio.ServicerContext[bytes, bytes]


class _Tally:
    """Counts a stream's messages, keeps its first bytes for the call's record and, within
    the storage bounds, each message with its offset for ``stream_messages``."""

    def __init__(self, t0: float, bounds: tuple[int, int] = (0, 0)) -> None:
        self.t0 = t0
        self.messages = 0
        self.first_ms: float | None = None
        self.size = 0
        self.parts: list[bytes] = []
        self.max_kept, self.max_kept_bytes = bounds
        self.kept: list[tuple[float, bytes]] = []
        self.kept_size = 0

    def add(self, message: bytes) -> None:
        self.messages += 1
        now = time.perf_counter()
        if self.first_ms is None:
            self.first_ms = (now - self.t0) * 1000
        if self.size < MAX_RECORDED:
            self.parts.append(message)
        self.size += len(message)
        if (len(self.kept) < self.max_kept
                and self.kept_size + len(message) <= self.max_kept_bytes):
            self.kept.append(((now - self.t0) * 1000, message))
            self.kept_size += len(message)

    def records(self, call: Call, backend: str | None, role: str,
                direction: Direction) -> list[StreamMessageRecord]:
        """The kept messages as ``stream_messages`` records of ``call``."""
        return call_messages(call, self.kept, backend, role, direction)

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


async def _counted(requests: AsyncIterator[bytes], tally: _Tally,
                   feeds: Feeds | None = None) -> AsyncIterator[bytes]:
    """The caller's messages on their way upstream, counted for the record and handed to
    the shadows' copies (``feeds``), whose request streams end with the caller's."""
    try:
        async for message in requests:
            tally.add(message)
            if feeds is not None:
                feeds.send(message)
            yield message
    finally:
        if feeds is not None:
            feeds.close()


def _initial(call: Call, backend_md: Any) -> Metadata | None:
    """The initial metadata to send the caller (None: none to send)."""
    md = reply_metadata(tuple(backend_md or ()))
    if call.plan.reply == "headers":
        return (*md, *request_id_metadata(call))
    return md or None


def _trailing(call: Call, backend_md: Any) -> Metadata:
    md = reply_metadata(tuple(backend_md or ()))
    if call.plan.reply == "trailers":
        return (*md, *request_id_metadata(call))
    return md


class StreamForwarder:
    """Stream behaviours over one :class:`Dispatch` (its sink, mirror, version)."""

    def __init__(self, dispatch: Dispatch) -> None:
        self._d = dispatch

    def _open(self, plan: RoutePlan, method: str, request: bytes, context: Context) -> Call:
        # Streams make no spans: the caller's trace context travels on untouched.
        call = self._d.open(plan, method, request, context.invocation_metadata() or (),
                            context.time_remaining(), traced=False)
        timeout = plan.timeout_s
        if call.time_remaining is not None:
            timeout = max(min(timeout, call.time_remaining - plan.margin_s), 0.0005)
        call.timeout = timeout
        return call

    def _tally(self, call: Call) -> _Tally:
        return _Tally(call.t0, self._d.sink.stream_bounds)

    def _record(self, call: Call, tally: _Tally, status: str, details: str | None,
                sent: bytes, caller: _Tally | None = None) -> None:
        d = self._d
        call.request = sent
        request = call.request_record(status)
        records = tally.records(call, call.plan.primary.name, "primary", "response")
        if caller is not None:  # a client or bidi stream: the caller's messages too
            request = request._replace(messages=caller.messages)
            records = caller.records(call, None, "caller", "request") + records
        d.sink.record_request(request)
        if records:
            d.sink.record_messages(records)
        outcome = CallOutcome(grpc.StatusCode[status], details, tally.data, (), (),
                              call.arrived, (time.perf_counter() - call.t0) * 1000,
                              tally.messages, tally.first_ms)
        d.sink.record_call(call.call_record(call.backend, "primary", outcome, served=True,
                                            error=details))
        d.live.count_call(call.plan.config.match, call.plan.primary.name, "primary", status)

    async def _relay(self, stream: Any, context: Context, call: Call,
                     tally: _Tally) -> AsyncIterator[bytes]:
        initial = _initial(call, await stream.initial_metadata())
        if initial is not None:
            await context.send_initial_metadata(initial)
        async for message in stream:
            tally.add(message)
            yield message
        trailing = _trailing(call, await stream.trailing_metadata())
        if trailing:
            context.set_trailing_metadata(trailing)

    async def _answer_stream(
        self, call: Call, stream: Any, context: Context, request_bytes: Callable[[], bytes],
        caller: _Tally | None = None,
    ) -> AsyncIterator[bytes]:
        """Relay the backend's stream to the caller (its status too), then record both
        sides; ``request_bytes`` is read at the end, once a client stream is complete."""
        tally = self._tally(call)
        status, details = "CANCELLED", None
        try:
            async for message in self._relay(stream, context, call, tally):
                yield message
            status = "OK"
        except grpc.aio.AioRpcError as err:
            status, details = err.code().name, err.details()
            await context.abort(err.code(), err.details() or "",
                                _trailing(call, err.trailing_metadata()))
        finally:
            stream.cancel()
            if status != "OK" and call.cut is not None:
                call.cut.set()  # shadow streams end with the caller's (issue 20.5)
            self._record(call, tally, status, details, request_bytes(), caller)

    async def server_stream(
        self, plan: RoutePlan, method: str, request: bytes, context: Context
    ) -> AsyncIterator[bytes]:
        call = self._open(plan, method, request, context)
        if plan.shadows:
            call.cut = asyncio.Event()
            self._d.mirror.start(call, stream=True, recorder=self._d.sink)
        stream = plan.primary.stream("server", method)(
            request, timeout=call.timeout, metadata=call.metadata
        )
        async for message in self._answer_stream(call, stream, context, lambda: request):
            yield message

    def _mirrored(self, call: Call, kind: StreamKind) -> Feeds | None:
        """Shadow copies of a client or bidi stream: the feeds of the caller's messages."""
        if not call.plan.shadows:
            return None
        call.cut = asyncio.Event()
        return self._d.mirror.start(call, stream=True, recorder=self._d.sink, kind=kind)

    async def client_stream(
        self, plan: RoutePlan, method: str, requests: AsyncIterator[bytes], context: Context
    ) -> bytes:
        call = self._open(plan, method, b"", context)
        sent = self._tally(call)
        feeds = self._mirrored(call, "client")
        stream = plan.primary.stream("client", method)(
            _counted(requests, sent, feeds), timeout=call.timeout, metadata=call.metadata
        )
        status, details, response = "CANCELLED", None, b""
        try:
            response = await stream
            status = "OK"
            initial = _initial(call, await stream.initial_metadata())
            if initial is not None:
                await context.send_initial_metadata(initial)
            trailing = _trailing(call, await stream.trailing_metadata())
            if trailing:
                context.set_trailing_metadata(trailing)
            return bytes(response)
        except grpc.aio.AioRpcError as err:
            status, details = err.code().name, err.details()
            await context.abort(err.code(), err.details() or "",
                                _trailing(call, err.trailing_metadata()))
            raise
        finally:
            stream.cancel()
            if status != "OK" and call.cut is not None:
                call.cut.set()  # shadow streams end with the caller's
            tally = self._tally(call)
            if response:
                tally.add(bytes(response))
            self._record(call, tally, status, details, sent.data, sent)

    async def bidi_stream(
        self, plan: RoutePlan, method: str, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        call = self._open(plan, method, b"", context)
        sent = self._tally(call)
        feeds = self._mirrored(call, "bidi")
        stream = plan.primary.stream("bidi", method)(
            _counted(requests, sent, feeds), timeout=call.timeout, metadata=call.metadata
        )
        async for message in self._answer_stream(call, stream, context, lambda: sent.data,
                                                 sent):
            yield message
