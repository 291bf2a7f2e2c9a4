"""The export's lifecycle in a running sidecar: every ``every_s`` in a worker thread, and
once more after the sink's final flush.

Owned by the composition root: ``start()`` after the sink opens, ``stop()`` before the sink
closes (an export in flight finishes first), ``aclose()`` after it (the final export).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import duckdb

from sidecar.errors import SinkError
from sidecar.export.exporter import CursorFactory, ExportResult, SegmentExporter
from sidecar.export.settings import ExportConfig

if TYPE_CHECKING:  # the sink imports the config, which mounts ExportConfig: no cycle at run time
    from sidecar.sink import DuckDBSink

__all__ = ["PeriodicExport", "sink_cursor_factory"]

log = logging.getLogger(__name__)


def sink_cursor_factory(sink: DuckDBSink) -> CursorFactory:
    """A sink cursor while the sink is open, else a fresh connection to its file (the final
    export runs after the writer thread closed the database)."""

    def connect() -> duckdb.DuckDBPyConnection:
        try:
            return sink.cursor()
        except SinkError:
            return duckdb.connect(sink.path)

    return connect


class PeriodicExport:
    """Runs :meth:`SegmentExporter.export_once` on a period; an async context manager."""

    def __init__(self, settings: ExportConfig, sink: DuckDBSink) -> None:
        self.exporter = SegmentExporter(settings, sink_cursor_factory(sink), sink.path)
        self._every_s = settings.every_s
        self._task: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Task[ExportResult] | None = None
        self._stopped = False
        self._closed = False
        self.last_result: ExportResult | None = None
        self.failures = 0
        self.last_error: str | None = None

    def start(self) -> None:
        """Begin the periodic loop (the first export runs after ``every_s``)."""
        if self._task is None and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="shadowcar-export"
            )

    async def __aenter__(self) -> PeriodicExport:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            try:
                await self.export_now()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed export is retried on the next period
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("parquet export failed (will retry): %s", exc)

    async def export_now(self) -> ExportResult:
        """Export in a worker thread. Cancelling the caller waits for the thread to finish:
        the sink must not close under a running export."""
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(self.exporter.export_once)
        )
        self._in_flight = task
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            raise
        finally:
            self._in_flight = None
        self.last_result = result
        return result

    async def stop(self) -> None:
        """End the loop; an export in flight completes first. Idempotent."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop, then export whatever the sink's final flush wrote. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.stop()
        try:
            await self.export_now()
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("final parquet export failed; rows stay in the DuckDB file: %s", exc)
