"""The demo's traffic: deadlines fitted to this machine, an adaptive pace, and a tally that
says why calls failed.

A busy machine (other CPU-heavy jobs) queues every call: fixed tens-of-milliseconds
deadlines then fail almost everything. So the demo first times a few warm-up calls straight
to the primary model at the configured concurrency and sets every deadline to many times
that; while sending, the number of calls in flight halves when a call takes more than a
quarter of its deadline and grows back by one after a run of fast calls.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["AdaptiveLimit", "Pace", "Tally", "calibrate", "send_traffic"]

METHOD = "/inference.GRPCInferenceService/ModelInfer"
#: Deadline of the primary call on an idle machine; never lowered by calibration.
BASE_PRIMARY_TIMEOUT_MS = 500
#: A deadline is at least this many warm-up p95 call times (the sidecar's own work, the
#: shadows and the recorder share the machine with the model during the real traffic).
DEADLINE_HEADROOM = 20
#: Longest primary deadline calibration may choose.
MAX_PRIMARY_TIMEOUT_MS = 60_000
#: Warm-up calls per concurrent slot.
WARMUP_ROUNDS = 3
#: Failed calls whose status and details the summary quotes.
FIRST_ERRORS = 3


@dataclass(frozen=True, slots=True)
class Pace:
    """Deadlines and concurrency fitted to this machine by the warm-up calls."""

    primary_timeout_ms: int
    #: Factor applied to every shadow deadline (the primary's over its idle-machine value).
    scale: float
    client_timeout_s: float
    concurrency: int
    warmup_p95_ms: float

    def describe(self) -> str:
        return (f"warm-up p95 {self.warmup_p95_ms:.1f} ms at {self.concurrency} in flight: "
                f"primary deadline {self.primary_timeout_ms} ms, shadow deadlines x"
                f"{self.scale:.1f}")


@dataclass(slots=True)
class Tally:
    """What came back: answers, failures by status, and the first few errors verbatim."""

    ok: int = 0
    failed: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def fail(self, code: grpc.StatusCode, details: str | None) -> None:
        self.failed += 1
        self.statuses[code.name] += 1
        if len(self.first_errors) < FIRST_ERRORS:
            self.first_errors.append(f"{code.name}: {(details or '(no details)')[:300]}")

    def describe(self) -> str:
        """``N answered, M failed (STATUS n, ...); first errors: STATUS: details; ...``."""
        text = f"{self.ok} answered, {self.failed} failed"
        if self.failed:
            counts = ", ".join(f"{s} {n}" for s, n in self.statuses.most_common())
            text += f" ({counts}); first errors: " + "; ".join(self.first_errors)
        return text


class AdaptiveLimit:
    """Calls in flight: halved when one is slow, grown by one after ``limit`` fast ones."""

    def __init__(self, maximum: int, slow_s: float) -> None:
        self.maximum = max(1, maximum)
        self.limit = self.maximum
        self.lowest = self.maximum
        self._slow_s = slow_s
        self._in_use = 0
        self._fast = 0
        self._changed = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_use < self.limit)
            self._in_use += 1

    async def release(self, elapsed_s: float) -> None:
        async with self._changed:
            self._in_use -= 1
            if elapsed_s > self._slow_s:
                self.limit = max(1, self.limit // 2)
                self.lowest = min(self.lowest, self.limit)
                self._fast = 0
            else:
                self._fast += 1
                if self._fast >= self.limit and self.limit < self.maximum:
                    self.limit += 1
                    self._fast = 0
            self._changed.notify_all()


async def calibrate(target: str, payloads: Sequence[bytes], concurrency: int) -> Pace:
    """Time ``WARMUP_ROUNDS * concurrency`` calls straight to the primary model, ``concurrency``
    at a time as the demo will send them, and fit the deadlines to their p95."""
    latencies: list[float] = []
    count = max(1, concurrency) * WARMUP_ROUNDS
    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(METHOD)
        await asyncio.wait_for(channel.channel_ready(), MAX_PRIMARY_TIMEOUT_MS / 1000)

        async def one(i: int) -> None:
            started = time.perf_counter()
            try:
                await infer(payloads[i % len(payloads)], timeout=MAX_PRIMARY_TIMEOUT_MS / 1000)
            except grpc.aio.AioRpcError:
                pass  # a failed warm-up call still took its time; that is what is measured
            latencies.append((time.perf_counter() - started) * 1000)

        slots = asyncio.Semaphore(max(1, concurrency))

        async def limited(i: int) -> None:
            async with slots:
                await one(i)

        await asyncio.gather(*(limited(i) for i in range(count)))
    p95 = float(np.quantile(latencies, 0.95))
    primary_ms = int(min(MAX_PRIMARY_TIMEOUT_MS,
                         max(BASE_PRIMARY_TIMEOUT_MS, DEADLINE_HEADROOM * p95)))
    return Pace(
        primary_timeout_ms=primary_ms,
        scale=primary_ms / BASE_PRIMARY_TIMEOUT_MS,
        client_timeout_s=2 * primary_ms / 1000 + 5,
        concurrency=max(1, concurrency),
        warmup_p95_ms=p95,
    )


async def send_traffic(
    port: int, payloads: Sequence[bytes], pace: Pace, console: Console
) -> tuple[Tally, AdaptiveLimit]:
    """Send every payload through the sidecar (request ids ``demo-0``...), paced."""
    tally = Tally()
    limit = AdaptiveLimit(pace.concurrency, slow_s=pace.primary_timeout_ms / 1000 / 4)
    # One iterator shared by the workers (one event loop): each index is taken once.
    indices = iter(range(len(payloads)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(METHOD)
        with Progress(
            TextColumn("[bold]sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        ) as progress:
            task = progress.add_task("requests", total=len(payloads))

            async def worker() -> None:
                for i in indices:
                    await limit.acquire()
                    started = time.perf_counter()
                    try:
                        await infer(payloads[i], timeout=pace.client_timeout_s,
                                    metadata=(("x-request-id", f"demo-{i}"),))
                        tally.ok += 1
                    except grpc.aio.AioRpcError as err:
                        tally.fail(err.code(), err.details())
                    finally:
                        await limit.release(time.perf_counter() - started)
                    progress.advance(task)

            await asyncio.gather(*(worker() for _ in range(pace.concurrency)))
    return tally, limit
