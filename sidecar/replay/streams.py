"""Sending one recorded call again as the route's kind of call: unary, or a stream read and
written message by message (a caller stream's messages at their recorded pace when asked).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import grpc

from sidecar.backends import Backend, CallOutcome, Metadata
from sidecar.backends.channel import MAX_RECORDED
from sidecar.replay.source import Message, RecordedRequest, Streaming

__all__ = ["Answer", "send"]


@dataclass(slots=True)
class Answer:
    """The candidate's answer: the call's outcome and, for streams, its messages in order."""

    outcome: CallOutcome
    messages: list[Message] = field(default_factory=list)


class _Reader:
    """Collects a stream's messages with their times since the call started."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.messages: list[Message] = []
        self.size = 0

    def add(self, message: bytes) -> None:
        self.messages.append(((time.perf_counter() - self.t0) * 1000, message))
        self.size += len(message)

    def joined(self) -> bytes:
        """The first MAX_RECORDED bytes of the stream, as the sidecar records a stream."""
        kept: list[bytes] = []
        size = 0
        for _, body in self.messages:
            if size >= MAX_RECORDED:
                break
            kept.append(body)
            size += len(body)
        return b"".join(kept)


async def _paced(messages: Sequence[Message], t0: float, pace: bool) -> AsyncIterator[bytes]:
    """The caller's recorded messages in order; ``pace``: each at its recorded offset."""
    for offset_ms, body in messages:
        if pace:
            wait = t0 + offset_ms / 1000 - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
        yield body


async def send(
    backend: Backend, kind: Streaming, request: RecordedRequest, *, timeout: float,
    metadata: Metadata, pace: bool = False,
) -> Answer:
    """Send ``request`` as a ``kind`` call; never raises for gRPC errors (they are the
    outcome). A client or bidi ``request`` must carry its ``messages``."""
    if kind == "unary":
        return Answer(await backend.call(request.method, request.body, timeout=timeout,
                                         metadata=metadata))
    started, t0 = time.time(), time.perf_counter()
    reader = _Reader(t0)
    code, details = grpc.StatusCode.OK, None
    if kind == "server":
        call = backend.stream("server", request.method)(request.body, timeout=timeout,
                                                        metadata=metadata)
    else:
        sent = _paced(request.messages or (), t0, pace)
        call = backend.stream(kind, request.method)(sent, timeout=timeout, metadata=metadata)
    try:
        if kind == "client":
            reader.add(bytes(await call))
        else:
            async for message in call:
                reader.add(bytes(message))
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details()
    finally:
        call.cancel()
    first = reader.messages[0][0] if reader.messages else None
    outcome = CallOutcome(code, details, reader.joined(), (), (), started,
                          (time.perf_counter() - t0) * 1000, len(reader.messages), first)
    return Answer(outcome, reader.messages)
