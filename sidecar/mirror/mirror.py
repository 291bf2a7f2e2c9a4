"""Mirroring: fire-and-forget copies of a request to shadow backends, with owned tasks.

A copy is sampled by request id, capped per shadow (dropped and counted when full), and
never awaited by the caller. The mirror owns every task it starts and ends them on close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from opentelemetry.context import Context
from opentelemetry.trace import Span

from sidecar.backends import Backend, CallOutcome, Metadata
from sidecar.resilience import Ticket
from sidecar.routing import CallCounts, RoutePlan, ShadowLane, sampled_lanes
from sidecar.sink import CallRecord
from sidecar.sink.redaction import shown_error
from sidecar.telemetry.tracing import Tracing, call_attributes

__all__ = ["Mirror"]

log = logging.getLogger(__name__)

SHADOW_METADATA = ("x-shadow", "true")


class Mirror:
    """Starts shadow calls and owns their tasks until they end."""

    def __init__(
        self,
        record: Callable[[CallRecord], None],
        *,
        counts: CallCounts | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._record = record
        self._counts: CallCounts = counts if counts is not None else {}
        self._tracing = tracing
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """Every shadow task (unary and streaming) the mirror owns until it ends."""
        return self._tasks

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def start(
        self,
        plan: RoutePlan,
        method: str,
        request: bytes,
        metadata: Metadata,
        request_id: str,
        config_version: str,
        trace_parent: Context | None = None,
        serving: Backend | None = None,
    ) -> None:
        """Start a shadow call for every lane of ``plan`` that samples this request (never
        to the backend that is serving it)."""
        shadow_md: Metadata | None = None
        for lane in sampled_lanes(plan, request_id, serving):
            ticket = self.admit(lane)
            if isinstance(ticket, str):
                self._finish(plan, lane, method, request, request_id, config_version,
                             time.time(), "DROPPED", None, None, ticket)
                continue
            if shadow_md is None:
                shadow_md = (*metadata, SHADOW_METADATA)
            span: Span | None = None
            lane_md = shadow_md
            if self._tracing is not None and trace_parent is not None:
                span, injected = self._tracing.start_client(
                    f"{lane.backend.name} {method[1:]}", trace_parent,
                    call_attributes(method, lane.backend.target, "shadow"),
                )
                lane_md = (*shadow_md, *injected)
            lane.in_flight += 1
            lane.sent += 1
            self.own(self._shadow(plan, lane, method, request, lane_md, request_id,
                                  config_version, span, ticket))

    def admit(self, lane: ShadowLane) -> Ticket | str:
        """The breaker's ticket for a sampled copy (hand it back when the copy ends), or
        why the copy is dropped (counted on the lane)."""
        why = None
        if self._closing:
            why = "closing"
        elif lane.in_flight >= lane.config.max_in_flight:
            why = "max_in_flight reached"
        else:
            ticket = lane.backend.breaker.admit()
            if ticket is not None:
                return ticket
            why = "circuit open"
            lane.breaker_skipped += 1
        lane.dropped += 1
        return why

    def own(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a shadow coroutine as a task the mirror keeps until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(
        self, plan: RoutePlan, lane: ShadowLane, method: str, request: bytes,
        request_id: str, config_version: str, started: float, status: str,
        latency_ms: float | None, response: bytes | None, error: str | None,
    ) -> None:
        """Count and record one shadow call's end."""
        self._count(plan, lane, status)
        self._record(
            CallRecord(
                request_id, started, plan.match, method, lane.backend.name,
                lane.backend.version, "shadow", False, status, latency_ms, len(request),
                response, error, config_version, plan.decoding,
            )
        )

    async def _shadow(
        self,
        plan: RoutePlan,
        lane: ShadowLane,
        method: str,
        request: bytes,
        metadata: Metadata,
        request_id: str,
        config_version: str,
        span: Span | None,
        ticket: Ticket,
    ) -> None:
        started = time.time()
        outcome: CallOutcome | None = None
        code = grpc.StatusCode.INTERNAL
        breaker = lane.backend.breaker
        try:
            outcome = await lane.backend.call(
                method, request, timeout=lane.timeout_s, metadata=metadata
            )
        except asyncio.CancelledError:
            breaker.release(ticket)  # cut at shutdown: no verdict on the shadow
            code = grpc.StatusCode.CANCELLED
            lane.errored += 1  # sent, never answered: the counters must still add up
            self._finish(plan, lane, method, request, request_id, config_version, started,
                         "CANCELLED", (time.time() - started) * 1000, None,
                         "cancelled at shutdown")
            raise
        except Exception as exc:  # a broken shadow must never escape into the loop
            breaker.release(ticket)  # our failure, not evidence against the backend
            lane.errored += 1
            self._finish(plan, lane, method, request, request_id, config_version, started,
                         "INTERNAL", (time.time() - started) * 1000, None,
                         f"{type(exc).__name__}: {exc}")
        finally:
            lane.in_flight -= 1
            if span is not None:
                span.set_attribute("shadowcar.backend", lane.backend.name)
                span.set_attribute("shadowcar.backend.version", lane.backend.version)
                Tracing.end(span, outcome.code if outcome is not None else code,
                            shown_error(plan.decoding.redactor, outcome.details)
                            if outcome is not None else None)
        if outcome is None:
            return
        breaker.report(ticket, outcome.code.name,
                       shown_error(plan.decoding.redactor, outcome.details), plan.failure_codes)
        if not outcome.ok:
            lane.errored += 1
        self._finish(plan, lane, method, request, request_id, config_version, outcome.started,
                     outcome.code.name, outcome.latency_ms, outcome.response, outcome.details)

    def _count(self, plan: RoutePlan, lane: ShadowLane, status: str) -> None:
        key = (plan.match, lane.backend.name, "shadow", status)
        self._counts[key] = self._counts.get(key, 0) + 1

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
