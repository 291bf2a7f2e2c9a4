"""A shadow's copy of a server stream: read message by message, ended with the caller's.

When the caller's stream ends early (the caller cancelled, or the primary failed), the shadow
has nothing left to be compared with: its stream is cancelled too and recorded CANCELLED
with the messages it sent until then, unless the route sets ``full_shadow_streams``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc

from sidecar.backends import Backend, CallOutcome, Metadata
from sidecar.backends.channel import MAX_RECORDED
from sidecar.sink.streams import Direction, StreamMessageRecord, message_records

if TYPE_CHECKING:
    from sidecar.server.call import Call

__all__ = ["CUT_DETAILS", "call_messages", "read_stream"]

#: The recorded error of a shadow stream ended with its caller's.
CUT_DETAILS = "the caller's stream ended early: the shadow's stream was ended with it"


async def read_stream(
    backend: Backend, method: str, request: bytes, *, timeout: float, metadata: Metadata,
    cut: asyncio.Event | None = None, bounds: tuple[int, int] = (0, 0),
) -> tuple[CallOutcome, list[tuple[float, bytes]]]:
    """Call server-streaming ``method`` and read its stream to the end, or until ``cut`` is
    set: the first ``MAX_RECORDED`` bytes kept, every message counted, and the first
    messages within ``bounds`` (count, bytes) returned with their offsets. Never raises for
    gRPC errors; a cancellation of the task itself still propagates."""
    started = time.time()
    t0 = time.perf_counter()
    call = backend.stream("server", method)(request, timeout=timeout, metadata=metadata)
    parts: list[bytes] = []
    kept: list[tuple[float, bytes]] = []
    size = messages = kept_size = 0
    first: float | None = None
    code, details = grpc.StatusCode.OK, None
    watcher: asyncio.Task[None] | None = None
    if cut is not None:
        async def end_with_caller() -> None:
            await cut.wait()
            call.cancel()

        watcher = asyncio.get_running_loop().create_task(end_with_caller())
    try:
        async for message in call:
            messages += 1
            offset = (time.perf_counter() - t0) * 1000
            if first is None:
                first = offset
            if len(kept) < bounds[0] and kept_size + len(message) <= bounds[1]:
                kept.append((offset, message))
                kept_size += len(message)
            if size < MAX_RECORDED:
                parts.append(message)
            size += len(message)
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if cut is None or not cut.is_set() or (task is not None and task.cancelling()):
            raise  # shutdown, not the caller's end
        code, details = grpc.StatusCode.CANCELLED, CUT_DETAILS
    finally:
        call.cancel()
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    if code is grpc.StatusCode.CANCELLED and cut is not None and cut.is_set():
        details = CUT_DETAILS  # cancelled by the cut, whichever way grpc reported it
    return CallOutcome(code, details, b"".join(parts), (), (), started,
                       (time.perf_counter() - t0) * 1000, messages, first), kept


def call_messages(call: Call, kept: list[tuple[float, bytes]], backend: str | None,
                  role: str, direction: Direction) -> list[StreamMessageRecord]:
    """Kept (offset ms, bytes) messages of one side of ``call`` as ``stream_messages``
    records (decoded later, in the writer)."""
    route = call.plan.config
    return message_records(call.request_id, call.arrived, route.match, call.method,
                           call.plan.decoding, route.stream_key, kept, backend, role,
                           direction)
