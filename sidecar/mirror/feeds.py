"""A shadow's copy of a client or bidi stream: the caller's messages, fed as they pass.

The caller's messages go upstream to the primary with flow control; each sampled shadow
gets them too, through a :class:`Feed` of its own, without ever holding the caller back:
a shadow that falls :data:`MAX_BEHIND` messages (or bytes) behind is ended at once and
recorded with :data:`BEHIND_DETAILS`, its breaker taking no verdict (the caller's pace, not
the backend, decided it). The caller's stream ending normally ends the shadow's request
stream (half-close) and the shadow answers in its own time; ending early cuts the shadow's
copy like a server stream's, unless the route sets ``full_shadow_streams``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc

from sidecar.backends import Backend, CallOutcome, Metadata, StreamKind
from sidecar.mirror.streams import CUT_DETAILS, StreamRead, ended_with, our_cancel

__all__ = ["BEHIND_DETAILS", "Feed", "Feeds", "read_fed_stream"]

#: The recorded error of a shadow stream ended because it fell behind its caller.
BEHIND_DETAILS = "the shadow fell behind the caller's stream: its copy was ended"
#: A shadow's backlog of the caller's messages at most (count, bytes).
MAX_BEHIND = (1024, 8 << 20)

_END = object()


class Feed:
    """One shadow's queue of the caller's messages (unbounded queue, bounded by us)."""

    def __init__(self, limits: tuple[int, int] | None = None) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._limits = limits or MAX_BEHIND
        self._bytes = 0
        self.closed = False
        #: Set when the shadow fell behind; the shadow's call is cancelled through it.
        self.behind = False
        self.on_behind: Callable[[], object] | None = None

    def send(self, message: bytes) -> None:
        if self.closed or self.behind:
            return
        if self._queue.qsize() >= self._limits[0] or self._bytes + len(message) > self._limits[1]:
            self.behind = True
            if self.on_behind is not None:
                self.on_behind()
            return
        self._bytes += len(message)
        self._queue.put_nowait(message)

    def close(self) -> None:
        """The caller's stream ended: the shadow's request stream ends after what is queued."""
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(_END)

    async def messages(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            assert isinstance(item, bytes)
            self._bytes -= len(item)
            yield item


class Feeds:
    """Every sampled shadow's feed of one stream; what the caller's side calls."""

    def __init__(self) -> None:
        self.feeds: list[Feed] = []

    def send(self, message: bytes) -> None:
        for feed in self.feeds:
            feed.send(message)

    def close(self) -> None:
        for feed in self.feeds:
            feed.close()


async def read_fed_stream(
    backend: Backend, kind: StreamKind, method: str, feed: Feed, *, timeout: float,
    metadata: Metadata, cut: asyncio.Event | None, bounds: tuple[int, int],
) -> tuple[CallOutcome, list[tuple[float, bytes]]]:
    """Call client- or bidi-streaming ``method`` with the messages ``feed`` hands over and
    read the answer(s) (:class:`StreamRead` says what is kept); ended early when the shadow
    falls behind or ``cut`` is set. Never raises for gRPC errors; a cancellation of the
    task itself still propagates."""
    read = StreamRead(bounds)
    call = backend.stream(kind, method)(feed.messages(), timeout=timeout, metadata=metadata)
    feed.on_behind = call.cancel
    code, details = grpc.StatusCode.OK, None
    try:
        async with ended_with(cut, call):
            if feed.behind:  # fell behind before the call existed to be cancelled
                call.cancel()
            if kind == "client":
                read.add(bytes(await call))
            else:
                async for message in call:
                    read.add(message)
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code(), exc.details()
    except asyncio.CancelledError:
        if not our_cancel(cut, feed.behind):
            raise  # shutdown, not the caller's end nor our cap
        code = grpc.StatusCode.CANCELLED
    if code is grpc.StatusCode.CANCELLED:
        if feed.behind:
            details = BEHIND_DETAILS
        elif cut is not None and cut.is_set():
            details = CUT_DETAILS
    return read.outcome(code, details), read.kept
