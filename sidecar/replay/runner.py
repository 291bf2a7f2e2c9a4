"""Re-sending recorded requests to a candidate backend, paced and bounded, with progress.

Each answer becomes a ``calls`` row with role ``replay`` under the ORIGINAL request id, so
``sidecar report divergence`` pairs it with the recorded primary.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sidecar.backends import Backend, CallOutcome
from sidecar.config import BackendConfig
from sidecar.replay.codecs import CodecUnavailable, build_codecs
from sidecar.replay.source import (
    RecordedRequest,
    ReplayInputError,
    ReplaySource,
    RouteDecoding,
)
from sidecar.replay.store import ReplayStore
from sidecar.replay.streams import Answer, send
from sidecar.sink import CallRecord
from sidecar.sink.streams import StreamMessageRecord, message_records

if TYPE_CHECKING:
    from sidecar.codecs import Codec

__all__ = ["ReplayOptions", "ReplayResult", "default_out", "new_run_id", "replay"]

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
ROLE = "replay"


@dataclass(frozen=True)
class ReplayOptions:
    """One replay: what to read, where to send it, how fast, where to write."""

    source: str
    route: str
    target: str
    backend_name: str
    backend_version: str
    run_id: str
    out: str
    since: str | None = None
    until: str | None = None
    rate: float | None = None
    concurrency: int = 8
    timeout_s: float = 5.0
    limit: int | None = None
    codec: str | None = None
    record_bytes: bool = False
    flush_rows: int = 200
    flush_interval_s: float = 1.0
    max_message_bytes: int = 16 * 1024 * 1024
    progress: bool = True
    #: OIP model name and version the candidate is asked for (``backends[].model``).
    model: str | None = None
    model_version: str | None = None
    #: a caller stream's messages sent at their recorded offsets (else as fast as taken)
    pace: bool = False
    #: messages of one replayed stream recorded one by one (storage.stream_max_messages)
    stream_max_messages: int = 10_000


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did; ``interrupted`` means it can be resumed with the same run id.
    ``already_done`` counts calls answered OK before; failed ones are sent again
    (``retried`` of the ``sent``)."""

    run_id: str
    out: str
    selected: int
    already_done: int
    sent: int
    ok: int
    interrupted: bool
    retried: int = 0

    @property
    def failed(self) -> int:
        """Calls of this invocation that did not end OK."""
        return self.sent - self.ok


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def default_out(source: str, run_id: str) -> str:
    """``replay-RUNID.duckdb`` beside the source file (or beside the Parquet directory)."""
    parent = Path(os.path.abspath(source.rstrip("/"))).parent
    return str(parent / f"replay-{run_id}.duckdb")


class _Pacer:
    """At most ``rate`` starts per second across all workers (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self._interval:
            return
        async with self._lock:
            now = time.monotonic()
            start = max(self._next, now)
            self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)


def _candidate(options: ReplayOptions) -> BackendConfig:
    return BackendConfig.model_validate({"name": options.backend_name,
                                         "version": options.backend_version,
                                         "target": options.target, "model": options.model,
                                         "model_version": options.model_version})


def _validate(options: ReplayOptions) -> None:
    if not _RUN_ID.match(options.run_id):
        raise ReplayInputError("--run-id must be 1-63 letters, digits, '.', '_' or '-'")
    if options.concurrency < 1:
        raise ReplayInputError("--concurrency must be at least 1")
    if options.rate is not None and options.rate <= 0:
        raise ReplayInputError("--rate must be positive")
    if os.path.abspath(options.out) == os.path.abspath(options.source):
        raise ReplayInputError("--out must not be the source file")
    try:
        _candidate(options)
    except ValueError as exc:
        raise ReplayInputError(f"invalid candidate backend: {exc}") from exc


async def replay(options: ReplayOptions, *, stop: asyncio.Event | None = None) -> ReplayResult:
    """Run (or resume) one replay. Setting ``stop`` (SIGINT does, in the main thread) ends it
    after the calls in flight; what was answered is written, the rest is left for a resume."""
    _validate(options)
    stop = stop or asyncio.Event()
    source = ReplaySource(options.source, options.route, since=options.since,
                          until=options.until)
    store = None
    backend = None
    try:
        store = ReplayStore(options.out, options.run_id)
        store.claim(source.location, options.route, options.target, options.backend_name,
                    options.backend_version)  # a resume must not change its target
        others = store.other_runs()
        if others:
            log.warning("%s also holds replay runs %s: their rows pair with the same primaries",
                        options.out, ", ".join(others))
        by_version, latest = source.decodings()
        if options.codec is not None:
            by_version = {v: replace(d, codec=options.codec) for v, d in by_version.items()}
            latest = replace(latest, codec=options.codec)
        try:
            codecs = await build_codecs(
                {*(d.codec for d in by_version.values()), latest.codec},
                source=source.location, target=options.target, route=options.route,
                timeout_s=options.timeout_s)
        except CodecUnavailable as exc:
            raise ReplayInputError(str(exc)) from exc
        if latest.streaming in ("client", "bidi") and not source.has_request_messages():
            raise ReplayInputError(
                f"route {options.route!r} streams from the caller ({latest.streaming}): replay "
                "sends the caller's messages one by one, and none were recorded with their "
                "bytes (storage.record_bytes: true on a sidecar that records stream_messages; "
                "a Parquet export needs include_bytes: true)")
        store.copy_configs(source)
        done = store.done()
        retry = store.failed()
        selected = source.count()
        backend = Backend(
            _candidate(options),
            max_message_bytes=options.max_message_bytes,
        )
        run = _Run(options, source, store, backend, stop, by_version, latest, codecs, retry)
        todo = max(0, selected - len(done))
        if options.limit is not None:
            todo = min(todo, options.limit)
        with _SignalStop(stop):
            sent = await run.go(done, todo)
        return ReplayResult(options.run_id, options.out, selected, len(done), sent, run.ok,
                            interrupted=stop.is_set(), retried=run.retried)
    finally:
        if backend is not None:
            await backend.aclose()
        if store is not None:
            store.close()
        source.close()


class _SignalStop:
    """SIGINT sets the stop event while the replay runs (main thread only)."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._installed = False

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self._stop.set)
                self._installed = True
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix loop
                pass

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)


class _Run:
    """The workers, the pacer and the batched writes of one replay."""

    def __init__(self, options: ReplayOptions, source: ReplaySource, store: ReplayStore,
                 backend: Backend, stop: asyncio.Event, by_version: dict[str, RouteDecoding],
                 latest: RouteDecoding, codecs: dict[str, Codec], retry: set[str]) -> None:
        self.o = options
        self.source = source
        self.store = store
        self.backend = backend
        self.stop = stop
        self.by_version = by_version
        self.latest = latest
        self.codecs = codecs
        self.retry = retry
        self.retried = 0
        self.pacer = _Pacer(options.rate)
        self.pending: list[CallRecord] = []
        self.pending_messages: list[StreamMessageRecord] = []
        self.last_flush = time.monotonic()
        self.ok = 0
        self.sent = 0
        self.error: BaseException | None = None

    def _decoding(self, request: RecordedRequest) -> RouteDecoding:
        found = self.by_version.get(request.config_version or "")
        return found if found is not None else self.latest

    async def go(self, done: set[str], todo: int) -> int:
        queue: asyncio.Queue[RecordedRequest | None] = asyncio.Queue(self.o.concurrency * 2)
        console = Console(stderr=True)
        with Progress(
            TextColumn(f"[bold]replay {self.o.run_id}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console,
            disable=not self.o.progress,
        ) as progress:
            bar = progress.add_task("replay", total=todo)
            workers = [asyncio.create_task(self._worker(queue, progress, bar))
                       for _ in range(self.o.concurrency)]
            try:
                await self._feed(queue, done, todo)
            finally:
                for _ in workers:
                    await queue.put(None)
                await asyncio.gather(*workers)
                self._flush(force=True)
        if self.error is not None:
            raise self.error
        return self.sent

    async def _feed(self, queue: asyncio.Queue[RecordedRequest | None], done: set[str],
                    todo: int) -> None:
        fed = 0
        for request in self.source.requests(done):
            if self.stop.is_set() or fed >= todo:
                return
            await self.pacer.wait()
            if self.stop.is_set():
                return
            await queue.put(request)
            fed += 1

    async def _worker(self, queue: asyncio.Queue[RecordedRequest | None], progress: Progress,
                      bar: TaskID) -> None:
        while (request := await queue.get()) is not None:
            if self.stop.is_set():
                continue  # drain: queued but not sent, left for a resume
            try:
                self._answered(request, await self._send(request))
                progress.advance(bar)
            except Exception as exc:  # stop the run; the feeder must not wait on a dead pool
                self.error = self.error or exc
                self.stop.set()

    async def _send(self, request: RecordedRequest) -> Answer:
        kind = self._decoding(request).streaming
        if kind in ("client", "bidi"):
            messages = self.source.request_messages(request.request_id)
            if messages is None:
                return Answer(CallOutcome(
                    grpc.StatusCode.FAILED_PRECONDITION, "the caller's stream was not recorded "
                    "message by message with its bytes (docs/streams.md): not replayed",
                    None, (), (), time.time(), 0.0))
            request = replace(request, messages=messages)
        return await send(
            self.backend, kind, request, timeout=self.o.timeout_s, pace=self.o.pace,
            metadata=(("x-request-id", request.request_id), ("x-shadow", "true"),
                      ("x-replay-run", self.o.run_id)),
        )

    def _answered(self, request: RecordedRequest, answer: Answer) -> None:
        outcome = answer.outcome
        route = self._decoding(request)
        decoding = route.decoding(self.o.record_bytes, self.codecs.get(route.codec))
        if answer.messages:  # a stream: its messages, each decoded alone (docs/streams.md)
            self.pending_messages += message_records(
                request.request_id, request.ts, self.o.route, request.method, decoding,
                route.stream_key, answer.messages[:self.o.stream_max_messages],
                self.backend.name, ROLE, "response")
        # ts is the original request's, so time windows hold the pair together.
        self.pending.append(CallRecord(
            request.request_id, request.ts, self.o.route, request.method,
            self.backend.name, self.backend.version, ROLE, False, outcome.code.name,
            outcome.latency_ms, len(request.body), outcome.response, outcome.details,
            request.config_version or "", decoding, outcome.messages, outcome.first_message_ms,
        ))
        self.retried += request.request_id in self.retry
        self.sent += 1
        self.ok += outcome.ok
        self._flush()

    def _flush(self, *, force: bool = False) -> None:
        due = (len(self.pending) >= self.o.flush_rows
               or time.monotonic() - self.last_flush >= self.o.flush_interval_s)
        if not self.pending or not (force or due):
            return
        rows, self.pending = self.pending, []
        messages, self.pending_messages = self.pending_messages, []
        self.store.write(self.source, rows, time.time(), retried=self.retry, messages=messages)
        self.last_flush = time.monotonic()
