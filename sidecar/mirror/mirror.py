"""Mirroring: copies of a request to shadow backends, unary and streaming alike.

One set of shadow rules for every kind of call: a copy is sampled by request id, capped per
shadow (dropped when full, the breaker open, or the sidecar closing: a DROPPED row, a count
and a span), never awaited by the caller. The mirror owns every task it starts, ends them on
close, and no exception but a cancellation leaves one (a broken copy is an INTERNAL row).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import grpc

from sidecar.backends import CallOutcome, StreamKind
from sidecar.mirror.feeds import BEHIND_DETAILS, Feed, Feeds, read_fed_stream
from sidecar.mirror.streams import CUT_DETAILS, call_messages, read_stream
from sidecar.resilience import Ticket
from sidecar.routing import LaneCounters, LiveCounters, ShadowLane, sampled_lanes
from sidecar.sink import CallRecord
from sidecar.telemetry.spans import NO_SPANS, ClientSpan, Spans

if TYPE_CHECKING:
    from sidecar.server.call import Call
    from sidecar.sink.streams import StreamRecorder

__all__ = ["SHADOW_METADATA", "Mirror"]

log = logging.getLogger(__name__)

SHADOW_METADATA = ("x-shadow", "true")
_DROPPED = grpc.StatusCode.UNAVAILABLE  # a dropped copy's span status (it never left)


class Mirror:
    """Starts shadow copies and owns their tasks until they end."""

    def __init__(
        self,
        record: Callable[[CallRecord], None],
        *,
        live: LiveCounters,
        spans: Spans = NO_SPANS,
    ) -> None:
        self._record = record
        self.live = live
        self.spans = spans
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """Every shadow task (unary and streaming) the mirror owns until it ends."""
        return self._tasks

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def start(self, call: Call, *, stream: bool = False,
              recorder: StreamRecorder | None = None, kind: StreamKind = "server") -> Feeds | None:
        """Start a copy of ``call`` for every shadow lane that samples it (never to the
        backend serving it); ``stream``: a streaming call of ``kind``, its answers read to
        their end (or the caller's) and handed to ``recorder`` within its bounds. For a
        client or bidi stream, the :class:`Feeds` the caller's messages are sent to (None
        when no copy was sent)."""
        shadow_md = None
        feeds = Feeds() if stream and kind in ("client", "bidi") else None
        for lane, counters in sampled_lanes(call.plan, call.request_id, call.backend,
                                            self.live):
            span = self.spans.client(call.trace_ctx, lane.backend.name, call.method,
                                     lane.backend.target, "shadow")
            ticket = self._admit(lane, counters)
            if isinstance(ticket, str):
                self._finish(call, lane, span, CallOutcome(
                    grpc.StatusCode.UNAVAILABLE, ticket, None, (), (), time.time(), 0.0),
                    status="DROPPED")
                continue
            if shadow_md is None:
                shadow_md = (*call.metadata, SHADOW_METADATA)
            counters.in_flight += 1
            counters.sent += 1
            feed = None
            if feeds is not None:
                feed = Feed()
                feeds.feeds.append(feed)
            self.own(self._shadow(call, lane, counters, span.metadata(shadow_md), span,
                                  ticket, stream, recorder, kind, feed))
        return feeds if feeds is not None and feeds.feeds else None

    def _admit(self, lane: ShadowLane, counters: LaneCounters) -> Ticket | str:
        """The breaker's ticket for a sampled copy (handed back when the copy ends), or
        why the copy is dropped (counted)."""
        why = None
        if self._closing:
            why = "closing"
        elif counters.in_flight >= lane.config.max_in_flight:
            why = "max_in_flight reached"
        else:
            ticket = lane.backend.breaker.admit()
            if ticket is not None:
                return ticket
            why = "circuit open"
            counters.breaker_skipped += 1
        counters.dropped += 1
        return why

    def own(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a shadow coroutine as a task the mirror keeps until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(
        self, call: Call, lane: ShadowLane, span: ClientSpan, outcome: CallOutcome,
        *, status: str | None = None,
    ) -> None:
        """Count, trace and record one copy's end (``status``: DROPPED for one never sent)."""
        backend = lane.backend
        row = call.call_record(backend, "shadow", outcome, served=False, error=outcome.details)
        if status is not None:
            row = row._replace(status=status, latency_ms=None)
        self.live.count_call(call.plan.config.match, backend.name, "shadow", row.status)
        span.set("shadowcar.backend", backend.name)
        span.set("shadowcar.backend.version", backend.version)
        span.end(_DROPPED if status is not None else outcome.code, call.shown(outcome.details))
        self._record(row)

    async def _shadow(
        self, call: Call, lane: ShadowLane, counters: LaneCounters, metadata: Any,
        span: ClientSpan, ticket: Ticket, stream: bool,
        recorder: StreamRecorder | None = None, kind: StreamKind = "server",
        feed: Feed | None = None,
    ) -> None:
        backend = lane.backend
        breaker = backend.breaker
        started = time.time()
        kept: list[tuple[float, bytes]] = []
        try:
            if stream:  # ended with the caller's stream unless the route wants it whole
                cut = None if call.plan.config.full_shadow_streams else call.cut
                bounds = recorder.stream_bounds if recorder is not None else (0, 0)
                if feed is not None:  # a client or bidi stream: the caller's messages
                    outcome, kept = await read_fed_stream(
                        backend, kind, call.method, feed, timeout=lane.timeout_s,
                        metadata=metadata, cut=cut, bounds=bounds)
                else:
                    outcome, kept = await read_stream(
                        backend, call.method, call.request, timeout=lane.timeout_s,
                        metadata=metadata, cut=cut, bounds=bounds)
            else:
                outcome = await backend.call(call.method, call.request,
                                             timeout=lane.timeout_s, metadata=metadata,
                                             replied_metadata=False)
        except asyncio.CancelledError:
            breaker.release(ticket)  # cut at shutdown: no verdict on the shadow
            counters.in_flight -= 1
            counters.errored += 1  # sent, never answered: the counters must still add up
            self._finish(call, lane, span, CallOutcome(
                grpc.StatusCode.CANCELLED, "cancelled at shutdown", None, (), (), started,
                (time.time() - started) * 1000))
            raise
        except Exception as exc:  # a broken shadow must never escape into the loop
            breaker.release(ticket)  # our failure, not evidence against the backend
            counters.in_flight -= 1
            counters.errored += 1
            self._finish(call, lane, span, CallOutcome(
                grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}", None, (), (),
                started, (time.time() - started) * 1000))
            return
        counters.in_flight -= 1
        if outcome.details in (CUT_DETAILS, BEHIND_DETAILS):
            breaker.release(ticket)  # ended by the caller's pace or end: no verdict
        else:
            breaker.report(ticket, outcome.code.name, call.shown(outcome.details),
                           call.plan.failure_codes)
        if not outcome.ok:
            counters.errored += 1
        self._finish(call, lane, span, outcome)
        if kept and recorder is not None:
            recorder.record_messages(call_messages(call, kept, backend.name, "shadow",
                                                   "response"))

    async def aclose(self, timeout: float) -> None:
        """Let running shadows end by their own deadlines (at most ``timeout``), then
        cancel what is left and await it. Idempotent."""
        self._closing = True
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        leftover = set(self._tasks)
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.gather(*leftover, return_exceptions=True)
