"""Mirroring: fire-and-forget copies of a request to shadow backends, with owned tasks.

A copy is sampled by request id, capped per shadow (dropped and counted when full), and
never awaited by the caller. The mirror owns every task it starts and ends them on close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sidecar.backends import CallOutcome, Metadata
from sidecar.routing import RoutePlan, ShadowLane
from sidecar.sink import CallRecord

__all__ = ["Mirror"]

log = logging.getLogger(__name__)

SHADOW_METADATA = ("x-shadow", "true")


class Mirror:
    """Starts shadow calls and owns their tasks until they end."""

    def __init__(self, record: Callable[[CallRecord], None]) -> None:
        self._record = record
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

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
        bucket: int,
        config_version: str,
    ) -> None:
        """Start a shadow call for every lane of ``plan`` that samples this request."""
        shadow_md: Metadata | None = None
        for lane in plan.shadows:
            if bucket >= lane.threshold:
                continue
            lane.sampled += 1
            if lane.in_flight >= lane.config.max_in_flight or self._closing:
                lane.dropped += 1
                self._record(
                    CallRecord(
                        request_id, time.time(), plan.match, method, lane.backend.name,
                        lane.backend.version, "shadow", False, "DROPPED", None, len(request),
                        None, "closing" if self._closing else "max_in_flight reached",
                        config_version, plan.decoding,
                    )
                )
                continue
            if shadow_md is None:
                shadow_md = (*metadata, SHADOW_METADATA)
            lane.in_flight += 1
            lane.sent += 1
            task = asyncio.get_running_loop().create_task(
                self._shadow(plan, lane, method, request, shadow_md, request_id, config_version)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _shadow(
        self,
        plan: RoutePlan,
        lane: ShadowLane,
        method: str,
        request: bytes,
        metadata: Metadata,
        request_id: str,
        config_version: str,
    ) -> None:
        started = time.time()
        outcome: CallOutcome | None = None
        try:
            outcome = await lane.backend.call(
                method, request, timeout=lane.timeout_s, metadata=metadata
            )
        except asyncio.CancelledError:
            self._record(
                CallRecord(
                    request_id, started, plan.match, method, lane.backend.name,
                    lane.backend.version, "shadow", False, "CANCELLED",
                    (time.time() - started) * 1000, len(request), None,
                    "cancelled at shutdown", config_version, plan.decoding,
                )
            )
            raise
        except Exception as exc:  # a broken shadow must never escape into the loop
            lane.errored += 1
            self._record(
                CallRecord(
                    request_id, started, plan.match, method, lane.backend.name,
                    lane.backend.version, "shadow", False, "INTERNAL",
                    (time.time() - started) * 1000, len(request), None,
                    f"{type(exc).__name__}: {exc}", config_version, plan.decoding,
                )
            )
        finally:
            lane.in_flight -= 1
        if outcome is None:
            return
        if not outcome.ok:
            lane.errored += 1
        self._record(
            CallRecord(
                request_id, outcome.started, plan.match, method, lane.backend.name,
                lane.backend.version, "shadow", False, outcome.code.name, outcome.latency_ms,
                len(request), outcome.response, outcome.details, config_version, plan.decoding,
            )
        )

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
