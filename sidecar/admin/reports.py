"""Analysis of a live sidecar: the admin API runs reports on the sidecar's own database.

``GET /v1/reports/{kind}`` (the ``sidecar report`` options as query parameters, ``format``
json, html or table), ``GET /v1/models`` and ``GET /v1/check`` answer from the recorded
data flushed so far, as the stopped file would. DuckDB lets no other process open the file,
so the sidecar reads it on a cursor of its own connection. Report work never runs on the
event loop: one worker thread (niced, so the loop wins the CPU) runs one report at a time,
a few more wait, beyond that 429. While the admin API listens, the discovery file beside
the database tells ``--db FILE`` commands where to ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
from aiohttp import web

from sidecar.admin.live import remove_discovery, write_discovery
from sidecar.errors import SinkError

if TYPE_CHECKING:
    from sidecar.telemetry.live_state import LiveState

__all__ = ["LiveReports", "ReportsBusy"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Reports that may wait behind the running one before requests get 429.
MAX_WAITING = 4
#: Nice value of the report thread: under CPU contention the event loop thread (nice 0)
#: runs first; the report takes what is left (Linux: a thread's nice is its own).
REPORT_NICE = 10
#: How long a report waits for records accepted before it to be written.
FLUSH_WAIT_S = 2.0
_CONTENT_TYPES = {"json": "application/json", "html": "text/html", "table": "text/plain"}


class ReportsBusy(Exception):
    """Too many reports are running or waiting (HTTP 429)."""


class _Abandoned(Exception):
    """The client left before its report started: the report is skipped."""


class _Job:
    """One report: its cursor while it runs, so that a client that leaves interrupts it."""

    def __init__(self) -> None:
        self.cancelled = False
        self.cursor: duckdb.DuckDBPyConnection | None = None
        self.lock = threading.Lock()


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REPORT_NICE)


class LiveReports:
    """Runs report work for one sidecar, one at a time, off the event loop; owns the
    worker thread and the discovery file. ``aclose`` is idempotent."""

    def __init__(self, sidecar: LiveState) -> None:
        self._sidecar = sidecar
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadowcar-report",
                                            initializer=_lower_priority)
        self._pending = 0
        self._jobs: set[_Job] = set()
        self._closed = False
        self._discovery: str | None = None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/reports/{kind}", self._report)
        router.add_get("/v1/models", self._models)
        router.add_get("/v1/check", self._check)

    # -- lifecycle ----------------------------------------------------------------------
    def listening(self, host: str, port: int, *, tls: bool) -> None:
        """The admin API listens: tell ``--db FILE`` commands where (a wildcard address is
        reached on loopback)."""
        if host in ("", "0.0.0.0", "*"):
            host = "127.0.0.1"
        elif host in ("::", "[::]"):
            host = "[::1]"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        url = f"{'https' if tls else 'http'}://{host}:{port}"
        self._discovery = write_discovery(self._sidecar.sink.path, url)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._discovery is not None:
            remove_discovery(self._sidecar.sink.path)
        for job in list(self._jobs):
            _interrupt(job)
        # The sink closes its connection next: no report may still hold a cursor on it.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    # -- running ------------------------------------------------------------------------
    async def run(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``work`` on a fresh cursor in the report thread, after a flush."""
        if self._closed:
            raise SinkError("the sidecar is stopping")
        if self._pending > MAX_WAITING:
            raise ReportsBusy(f"{self._pending} reports are running or waiting")
        job = _Job()
        self._pending += 1
        self._jobs.add(job)
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._call, job, work)

        def done(finished: asyncio.Future[T]) -> None:  # the thread's work, also after a cancel
            self._pending -= 1
            self._jobs.discard(job)
            if not finished.cancelled():
                finished.exception()  # retrieved here when the client left before the end

        future.add_done_callback(done)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            _interrupt(job)  # the client left: stop its query, keep the thread for the next
            raise

    def _call(self, job: _Job, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        if job.cancelled:
            raise _Abandoned
        sink = self._sidecar.sink
        sink.wait_flushed(FLUSH_WAIT_S)  # what was accepted before the request, written
        cursor = sink.cursor()
        with job.lock:
            job.cursor = cursor
        try:
            return work(cursor)
        finally:
            with job.lock:
                job.cursor = None
            cursor.close()  # drops the report's temporary tables with it

    # -- handlers -----------------------------------------------------------------------
    async def _guarded(self, work: Callable[[duckdb.DuckDBPyConnection], T]
                       ) -> T | web.Response:
        from analysis.cli import ReportUsageError
        from analysis.load import AnalysisSourceError

        try:
            return await self.run(work)
        except ReportsBusy as exc:
            return _error(429, f"busy: {exc}; one report runs at a time, retry",
                          headers={"Retry-After": "1"})
        except (ReportUsageError, AnalysisSourceError, ValueError) as exc:
            return _error(400, str(exc))
        except SinkError as exc:
            return _error(503, f"the recording database is not available: {exc}")
        except duckdb.Error as exc:
            log.warning("a live report failed: %s", exc)
            return _error(500, f"the recorded data could not be analysed: {exc}")

    async def _report(self, request: web.Request) -> web.StreamResponse:
        from analysis.cli import ReportUsageError, render_report, report_args

        kind = request.match_info["kind"]
        try:
            args = report_args(kind, list(request.query.items()))
        except ReportUsageError as exc:
            return _error(400, str(exc))
        color = request.query.get("color", "0") in ("1", "true", "yes")
        text = await self._guarded(lambda cur: render_report(cur, args, color))
        if isinstance(text, web.Response):
            return text
        return web.Response(text=text, content_type=_CONTENT_TYPES[args.format],
                            charset="utf-8")

    async def _models(self, request: web.Request) -> web.StreamResponse:
        from sidecar.provenance import models_listing

        rows = await self._guarded(models_listing)
        if isinstance(rows, web.Response):
            return rows
        return _json({"models": rows})

    async def _check(self, request: web.Request) -> web.StreamResponse:
        """Evaluate triggers (the query's ``triggers`` JSON list, else the sidecar's own) on
        the recorded data; read only: nothing is audited or sent to a webhook."""
        import datetime as dt

        from pydantic import TypeAdapter, ValidationError

        from sidecar.config import canonical_json
        from sidecar.triggers import TriggerConfig, evaluate_triggers

        config = self._sidecar.loaded.config
        triggers: Any = config.triggers
        raw = request.query.get("triggers")
        if raw is not None:
            try:
                triggers = TypeAdapter(list[TriggerConfig]).validate_json(raw)
            except ValidationError as exc:
                problems = "; ".join(
                    f"triggers[{']['.join(str(p) for p in e['loc'])}]: {e['msg']}"
                    for e in exc.errors())
                return _error(400, problems)
        now = dt.datetime.now(dt.UTC)
        config_json = canonical_json(config)
        results = await self._guarded(
            lambda cur: evaluate_triggers(cur, triggers, config_json, now))
        if isinstance(results, web.Response):
            return results
        return _json({"results": [r.as_event() for r in results]})


def _interrupt(job: _Job) -> None:
    job.cancelled = True
    with job.lock:
        if job.cursor is not None:
            with contextlib.suppress(duckdb.Error):
                job.cursor.interrupt()


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(
        data, status=status, dumps=lambda d: json.dumps(d, indent=1, default=str)
    )


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    response = _json({"error": reason}, status=status)
    if headers:
        response.headers.update(headers)
    return response
