"""A shadow's copy of a server stream: read message by message, ended with the caller's.

When the caller's stream ends early (the caller cancelled, or the primary failed), the shadow
has nothing left to be compared with: its stream is cancelled too and recorded CANCELLED
with the messages it sent until then, unless the route sets ``full_shadow_streams``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from sidecar.backends import Backend, CallOutcome, Metadata
from sidecar.backends.channel import MAX_RECORDED
from sidecar.sink.streams import Direction, StreamMessageRecord, message_records

if TYPE_CHECKING:
    from sidecar.server.call import Call

__all__ = ["CUT_DETAILS", "StreamRead", "call_messages", "ended_with", "our_cancel",
           "read_stream"]

#: The recorded error of a shadow stream ended with its caller's.
CUT_DETAILS = "the caller's stream ended early: the shadow's stream was ended with it"


class StreamRead:
    """What a shadow's answers leave: every message counted, the first ``MAX_RECORDED``
    bytes kept for the call's row, the first messages within ``bounds`` (count, bytes) with
    their offsets for ``stream_messages``, and the time to the first message."""

    def __init__(self, bounds: tuple[int, int]) -> None:
        self.started = time.time()
        self.t0 = time.perf_counter()
        self.bounds = bounds
        self.parts: list[bytes] = []
        self.kept: list[tuple[float, bytes]] = []
        self.size = self.messages = self.kept_size = 0
        self.first: float | None = None

    def add(self, message: bytes) -> None:
        self.messages += 1
        offset = (time.perf_counter() - self.t0) * 1000
        if self.first is None:
            self.first = offset
        if len(self.kept) < self.bounds[0] and self.kept_size + len(message) <= self.bounds[1]:
            self.kept.append((offset, message))
            self.kept_size += len(message)
        if self.size < MAX_RECORDED:
            self.parts.append(message)
        self.size += len(message)

    def outcome(self, code: grpc.StatusCode, details: str | None) -> CallOutcome:
        return CallOutcome(code, details, b"".join(self.parts), (), (), self.started,
                           (time.perf_counter() - self.t0) * 1000, self.messages, self.first)


@contextlib.asynccontextmanager
async def ended_with(cut: asyncio.Event | None, call: Any) -> AsyncIterator[None]:
    """While inside, ``call`` is cancelled as soon as ``cut`` is set (the caller's end);
    the call is cancelled on the way out in any case."""
    watcher: asyncio.Task[None] | None = None
    if cut is not None:
        async def end_with_caller() -> None:
            await cut.wait()
            call.cancel()

        watcher = asyncio.get_running_loop().create_task(end_with_caller())
    try:
        yield
    finally:
        call.cancel()
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


def our_cancel(cut: asyncio.Event | None, ours: bool = False) -> bool:
    """A cancellation that ended a shadow's stream because the caller's ended (``cut``) or
    for a reason of ours, not the task's own (shutdown), which must propagate."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return False
    return ours or (cut is not None and cut.is_set())


async def read_stream(
    backend: Backend, method: str, request: bytes, *, timeout: float, metadata: Metadata,
    cut: asyncio.Event | None = None, bounds: tuple[int, int] = (0, 0),
) -> tuple[CallOutcome, list[tuple[float, bytes]]]:
    """Call server-streaming ``method`` and read its stream to the end, or until ``cut`` is
    set (:class:`StreamRead` says what is kept). Never raises for gRPC errors; a
    cancellation of the task itself still propagates."""
    read = StreamRead(bounds)
    call = backend.stream("server", method)(request, timeout=timeout, metadata=metadata)
    code, details = grpc.StatusCode.OK, None
    try:
        async with ended_with(cut, call):
            async for message in call:
                read.add(message)
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details()
    except asyncio.CancelledError:
        if not our_cancel(cut):
            raise  # shutdown, not the caller's end
        code, details = grpc.StatusCode.CANCELLED, CUT_DETAILS
    if code is grpc.StatusCode.CANCELLED and cut is not None and cut.is_set():
        details = CUT_DETAILS  # cancelled by the cut, whichever way grpc reported it
    return read.outcome(code, details), read.kept


def call_messages(call: Call, kept: list[tuple[float, bytes]], backend: str | None,
                  role: str, direction: Direction) -> list[StreamMessageRecord]:
    """Kept (offset ms, bytes) messages of one side of ``call`` as ``stream_messages``
    records (decoded later, in the writer)."""
    route = call.plan.config
    return message_records(call.request_id, call.arrived, route.match, call.method,
                           call.plan.decoding, route.stream_key, kept, backend, role,
                           direction)
