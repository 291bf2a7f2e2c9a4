"""The recording sink: a bounded in-memory buffer and one writer thread that owns DuckDB.

The hot path only appends to a list (dropping and counting when full); the writer
flushes on ``flush_interval_ms`` or as soon as ``batch_rows`` records wait.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from sidecar.config import StorageConfig
from sidecar.errors import SinkError
from sidecar.sink.records import (
    AuditRecord,
    CallRecord,
    CanaryStateRecord,
    ConfigRecord,
    OutcomeRecord,
    RequestRecord,
)
from sidecar.sink.schema import migrate
from sidecar.sink.writer import CallObserver, warm_up, write_batch

__all__ = ["DuckDBSink", "SinkStats"]

log = logging.getLogger(__name__)

_TABLES = ("configs", "requests", "calls", "audit", "outcomes", "canary_state")


@dataclass
class SinkStats:
    """Counters a sink keeps; read by metrics and the demo summary."""

    accepted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TABLES, 0))
    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TABLES, 0))
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TABLES, 0))
    flushes: int = 0
    last_flush_ms: float = 0.0
    write_errors: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": dict(self.accepted),
            "written": dict(self.written),
            "dropped": dict(self.dropped),
            "flushes": self.flushes,
            "last_flush_ms": round(self.last_flush_ms, 3),
            "write_errors": self.write_errors,
            "last_error": self.last_error,
        }


class DuckDBSink:
    """Records requests and calls into one DuckDB file; an async context manager."""

    def __init__(
        self, settings: StorageConfig, *, on_call: CallObserver | None = None
    ) -> None:
        self._on_call = on_call
        self.on_flush: Callable[[float], None] | None = None
        self._settings = settings
        self._path = settings.path
        self._limit = settings.buffer_rows
        self._batch = settings.batch_rows
        self._interval = settings.flush_interval_ms / 1000.0
        # deque.append and popleft are atomic: the hot path never takes a lock.
        self._pending: dict[str, deque[Any]] = {t: deque() for t in _TABLES}
        self._wake = threading.Event()
        self._stopping = False
        self._closed = False
        self._last_flush_failed = False
        self._thread: threading.Thread | None = None
        self._con: duckdb.DuckDBPyConnection | None = None
        self.stats = SinkStats()

    # -- lifecycle ---------------------------------------------------------------
    def open(self) -> None:
        """Open (or create) the file, migrate it and start the writer thread."""
        if self._thread is not None:
            return
        path = Path(self._path)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = self._connect()
            migrate(self._con)
        except (duckdb.Error, OSError, RuntimeError) as exc:
            raise SinkError(f"cannot open recording database {self._path}: {exc}") from exc
        warm_up()
        self._thread = threading.Thread(target=self._run, name="shadowcar-sink", daemon=True)
        self._thread.start()

    async def __aenter__(self) -> DuckDBSink:
        self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self, timeout: float = 30.0) -> None:
        """Flush every accepted record and close the file (idempotent)."""
        thread = self._stop_writer()
        if thread is not None:
            await asyncio.to_thread(self._join, thread, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """:meth:`aclose` for non-async callers: blocks until the writer has finished."""
        thread = self._stop_writer()
        if thread is not None:
            self._join(thread, timeout)

    def _stop_writer(self) -> threading.Thread | None:
        """Tell the writer to flush and stop, once; the thread to wait for, if any."""
        if self._closed:
            return None
        self._closed = True
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
        return self._thread

    @staticmethod
    def _join(thread: threading.Thread, timeout: float) -> None:
        thread.join(timeout)
        if thread.is_alive():
            log.error("sink writer did not finish within %.1fs; records may be lost", timeout)

    # -- hot path --------------------------------------------------------------
    def _put(self, table: str, row: Any) -> bool:
        """Queue ``row``; False when it was dropped (buffer full or stopping), counted."""
        pending = self._pending[table]
        if len(pending) >= self._limit or self._stopping:
            self.stats.dropped[table] += 1
            return False
        pending.append(row)
        self.stats.accepted[table] += 1
        if len(pending) == self._batch:
            self._wake.set()
        return True

    def record_request(self, row: RequestRecord) -> None:
        self._put("requests", row)

    def record_call(self, row: CallRecord) -> None:
        self._put("calls", row)

    def record_config(self, version: str, config_json: str) -> None:
        self._put("configs", ConfigRecord(version, time.time(), config_json))

    def record_audit(self, row: AuditRecord) -> None:
        self._put("audit", row)

    def record_canary_state(self, row: CanaryStateRecord) -> None:
        self._put("canary_state", row)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A separate connection to the same database, for reads from another thread."""
        if self._con is None:
            raise SinkError("the recording database is not open")
        return self._con.cursor()

    def latest_canary_states(self) -> dict[str, tuple[Any, ...]]:
        """route -> (canary_key, state, step_index, step_started, last_decision JSON)."""
        cur = self.cursor()
        try:
            rows = cur.execute(
                "SELECT route, canary_key, state, step_index, step_started, last_decision "
                "FROM canary_state QUALIFY row_number() OVER (PARTITION BY route "
                "ORDER BY ts DESC) = 1"
            ).fetchall()
        finally:
            cur.close()
        return {r[0]: tuple(r[1:]) for r in rows}

    def record_outcome(self, row: OutcomeRecord) -> bool:
        """Queue one validated outcome; False when the buffer is full (dropped, counted)."""
        # Not a before/after look at stats.dropped: a failed flush raises it concurrently.
        return self._put("outcomes", row)

    @property
    def queue_depth(self) -> int:
        return sum(len(v) for v in self._pending.values())

    @property
    def writable(self) -> bool:
        """The writer runs and its last flush did not fail."""
        alive = self._thread is not None and self._thread.is_alive()
        return alive and not self._last_flush_failed

    @property
    def path(self) -> str:
        return self._path

    # -- writer thread -----------------------------------------------------------
    def _swap(self) -> dict[str, list[Any]]:
        taken = {}
        for table in _TABLES:
            pending = self._pending[table]
            n = len(pending)
            if n:
                popleft = pending.popleft
                taken[table] = [popleft() for _ in range(n)]
        return taken

    def _flush(self) -> None:
        taken = self._swap()
        if not taken:
            return
        if self._con is None:
            self._recover()
        if self._con is None:  # still cannot open: drop and count, try again next time
            for table, rows in taken.items():
                self.stats.dropped[table] += len(rows)
            self._last_flush_failed = True
            return
        started = time.perf_counter()
        failed = False
        for table, rows in taken.items():
            try:
                write_batch(self._con, table, rows, self._on_call)
            except Exception as exc:  # the writer must survive any bad batch
                failed = True
                self.stats.write_errors += 1
                self.stats.dropped[table] += len(rows)
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.error("sink could not write %d %s rows: %s", len(rows), table, exc)
            else:
                self.stats.written[table] += len(rows)
        self._last_flush_failed = failed
        if failed:
            self._recover()
        self.stats.flushes += 1
        self.stats.last_flush_ms = (time.perf_counter() - started) * 1000
        if self.on_flush is not None:
            self.on_flush(self.stats.last_flush_ms)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        return duckdb.connect(
            str(self._path),
            config={
                "threads": self._settings.duckdb_threads,
                "memory_limit": self._settings.duckdb_memory_limit,
            },
        )

    def _recover(self) -> None:
        """After a failed write: keep the connection if it still answers, else reopen the
        file (a fatal error invalidates a DuckDB connection). Writing resumes by itself."""
        con = self._con
        try:
            if con is not None:
                con.execute("SELECT 1").fetchall()
                return
        except duckdb.Error:
            pass
        try:
            if con is not None:
                con.close()
        except duckdb.Error:
            pass
        try:
            self._con = self._connect()
            migrate(self._con)
            log.warning("sink reopened %s after a write failure", self._path)
        except (duckdb.Error, OSError, RuntimeError) as exc:
            self._con = None
            self.stats.last_error = f"reopen failed: {exc}"

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._wake.wait(self._interval)
                self._wake.clear()
                self._flush()
            # Late appends raced with the stop flag: one more swap takes them.
            self._flush()
            self._flush()
        finally:
            con, self._con = self._con, None
            if con is not None:
                try:
                    con.execute("CHECKPOINT").fetchall()
                finally:
                    con.close()

    def wait_flushed(self, timeout: float = 5.0) -> bool:
        """Block (in a worker thread) until every record accepted before the call is
        written or dropped; True when that happened within ``timeout``."""
        target = dict(self.stats.accepted)
        deadline = time.monotonic() + timeout
        while True:
            done = all(
                self.stats.written[t] + self.stats.dropped[t] >= n for t, n in target.items()
            )
            if done:
                return True
            if time.monotonic() > deadline or not self.writable:
                return False
            self._wake.set()
            time.sleep(0.005)
