"""The recording sink: a bounded in-memory buffer and one writer thread that owns DuckDB.

The hot path only appends to a list (dropping and counting when full); the writer
flushes on ``flush_interval_ms`` or as soon as ``batch_rows`` records wait.

A batch DuckDB refuses is split in halves until only the rows it refuses alone are left:
those are dropped and counted by reason, the rest are written. A fatal DuckDB error (the
database invalidated) is recovered with a fresh connection, to a new segment file when the
old one cannot be reopened. While the sink cannot write, a probe re-checks it every
``probe_interval_ms``, so readiness comes back without traffic.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

import duckdb
import pyarrow as pa

from sidecar.config import StorageConfig
from sidecar.errors import SinkError
from sidecar.sink import storage
from sidecar.sink.records import (
    AuditRecord,
    CallRecord,
    CanaryStateRecord,
    ConfigRecord,
    OutcomeRecord,
    RequestRecord,
)
from sidecar.sink.schema import migrate
from sidecar.sink.streams import StreamMessageRecord
from sidecar.sink.writer import CallObserver, Observed, build_batch, insert_batch, observe, warm_up

__all__ = ["DropReason", "DuckDBSink", "SinkStats"]

log = logging.getLogger(__name__)

_TABLES = ("configs", "requests", "calls", "audit", "outcomes", "canary_state",
           "stream_messages")

#: Why a record was not written. The first two refuse it on the hot path (never accepted);
#: the last two lose an accepted record: DuckDB refused the row alone, or could not write at
#: all (disk full, no usable database).
DropReason = Literal["buffer_full", "closing", "rejected", "unwritable"]
_LOST: Final = ("rejected", "unwritable")


@dataclass
class SinkStats:
    """Counters a sink keeps; read by metrics, /v1/stats and the demo summary.

    ``written`` counts exactly the rows in the file(s); ``accepted`` = ``written`` +
    ``duplicates`` + the rejected and unwritable drops + what is still queued.
    """

    accepted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TABLES, 0))
    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TABLES, 0))
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TABLES, 0))
    reasons: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(get_args(DropReason), 0)
    )
    flushes: int = 0
    last_flush_ms: float = 0.0
    write_errors: int = 0
    last_error: str | None = None
    #: Outcome events whose event id was already stored: skipped by the insert, not lost.
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_TABLES, 0))
    #: Fresh connections after a fatal DuckDB error, and new segment files among them.
    recoveries: int = 0
    segments: int = 0
    #: Accepted records not written when the sink closed (the process exits non-zero).
    lost_at_close: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": dict(self.accepted),
            "written": dict(self.written),
            "dropped": dict(self.dropped),
            "dropped_by_reason": dict(self.reasons),
            "flushes": self.flushes,
            "last_flush_ms": round(self.last_flush_ms, 3),
            "write_errors": self.write_errors,
            "last_error": self.last_error,
            "duplicates": dict(self.duplicates),
            "recoveries": self.recoveries,
            "segments": self.segments,
            "lost_at_close": self.lost_at_close,
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
        self._probe_every = settings.probe_interval_ms / 1000.0
        self._max_payload = settings.max_payload_bytes
        # deque.append and popleft are atomic: the hot path never takes a lock.
        self._pending: dict[str, deque[Any]] = {t: deque() for t in _TABLES}
        self._wake = threading.Event()
        self._stopping = False
        self._closed = False
        #: The database refused a write or a probe (or there is none): /readyz says so.
        self._failing = False
        self._next_probe = 0.0
        self._probe_failures = 0
        self._lost_before_stop = 0
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
            self._con = duckdb.connect(
                str(self._path),
                config={
                    "threads": self._settings.duckdb_threads,
                    "memory_limit": self._settings.duckdb_memory_limit,
                },
            )
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
            self._lost_before_stop = self._lost()
            self._stopping = True
            self._wake.set()
        return self._thread

    def _lost(self) -> int:
        return sum(self.stats.reasons[r] for r in _LOST)

    def _join(self, thread: threading.Thread, timeout: float) -> None:
        thread.join(timeout)
        if thread.is_alive():
            log.error("sink writer did not finish within %.1fs; records may be lost", timeout)
        # Accepted and not written, less what was already lost (and counted) before the stop:
        # what the final flush could not write, or what it never reached.
        unwritten = sum(self.stats.accepted.values()) - sum(self.stats.written.values())
        skipped = sum(self.stats.duplicates.values())
        self.stats.lost_at_close = unwritten - skipped - self._lost_before_stop
        if self.stats.lost_at_close:
            log.error("sink closed with %d accepted records not written",
                      self.stats.lost_at_close)

    # -- hot path --------------------------------------------------------------
    def _put(self, table: str, row: Any) -> bool:
        """Queue ``row``; False when it was dropped (buffer full or stopping), counted."""
        pending = self._pending[table]
        if len(pending) >= self._limit or self._stopping:
            self.stats.dropped[table] += 1
            self.stats.reasons["closing" if self._stopping else "buffer_full"] += 1
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

    def record_messages(self, rows: Sequence[StreamMessageRecord]) -> None:
        """One stream's kept messages, a row each (docs/streams.md)."""
        for row in rows:
            if not self._put("stream_messages", row):
                return  # the rest would be dropped too: counted once per stream is enough

    @property
    def stream_bounds(self) -> tuple[int, int]:
        """(messages, bytes) of one stream recorded one by one."""
        return self._settings.stream_max_messages, self._settings.stream_max_bytes

    def record_config(self, version: str, config_json: str) -> None:
        self._put("configs", ConfigRecord(version, time.time(), config_json))

    def record_audit(self, row: AuditRecord) -> None:
        self._put("audit", row)

    def record_canary_state(self, row: CanaryStateRecord) -> None:
        self._put("canary_state", row)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A separate connection to the same database, for reads from another thread."""
        con = self._con
        if con is None:
            raise SinkError("the recording database is not open")
        return con.cursor()

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
    def problem(self) -> str | None:
        """Why the sink cannot record now (for /readyz), None when it can."""
        if self._thread is None or not self._thread.is_alive():
            return "sink not writable: writer stopped"
        if self._con is None:
            return f"sink not writable: no usable database ({self.stats.last_error})"
        if self._failing:
            return f"sink not writable: {self.stats.last_error}"
        return None

    @property
    def writable(self) -> bool:
        """The writer runs and the database took its last write (or probe)."""
        return self.problem is None

    @property
    def path(self) -> str:
        """The file being written: ``storage.path``, or the segment that replaced it."""
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
        started = time.perf_counter()
        for table, rows in taken.items():
            self._write(table, rows)
        self.stats.flushes += 1
        self.stats.last_flush_ms = (time.perf_counter() - started) * 1000
        if self.on_flush is not None:
            self.on_flush(self.stats.last_flush_ms)

    def _write(self, table: str, rows: list[Any]) -> None:
        """Build ``rows`` into one Arrow batch and insert it; split what cannot be built."""
        try:
            batch, observed = build_batch(table, rows, self._max_payload)
        except Exception as exc:  # a record the writer cannot turn into columns at all
            if len(rows) == 1:
                self._drop(table, rows, "rejected", exc)
                return
            mid = len(rows) // 2
            self._write(table, rows[:mid])
            self._write(table, rows[mid:])
            return
        self._insert(table, rows, batch, observed, 0, len(rows), retry=True)

    def _insert(self, table: str, rows: list[Any], batch: pa.Table,
                observed: Observed | None, lo: int, hi: int, retry: bool) -> None:
        """Insert rows ``lo:hi`` of ``batch``; on failure, recover or bisect (see module)."""
        con = self._con
        if con is None:
            self._drop(table, rows[lo:hi], "unwritable", None)
            return
        try:
            inserted = insert_batch(
                con, table, batch if hi - lo == len(rows) else batch.slice(lo, hi - lo))
        except Exception as exc:  # the writer must survive any batch
            self._note(exc)
            kind = storage.fault(exc)
            if kind == "committed":  # durable: the rows are in the file, the instance is not
                self._wrote(table, rows, observed, lo, hi)
                self._reconnect(exc)
            elif kind == "fatal":
                if retry and self._reconnect(exc):
                    self._insert(table, rows, batch, observed, lo, hi, retry=False)
                else:
                    self._drop(table, rows[lo:hi], "unwritable", exc)
            elif kind == "storage":  # the disk, not these rows: smaller pieces fail too
                self._drop(table, rows[lo:hi], "unwritable", exc)
            elif hi - lo == 1:
                self._drop(table, rows[lo:hi], "rejected", exc)
            else:
                mid = (lo + hi) // 2
                self._insert(table, rows, batch, observed, lo, mid, retry)
                self._insert(table, rows, batch, observed, mid, hi, retry)
        else:
            self._wrote(table, rows, observed, lo, hi, inserted)

    def _wrote(self, table: str, rows: list[Any], observed: Observed | None,
               lo: int, hi: int, inserted: int | None = None) -> None:
        """Count rows ``lo:hi`` as written (``inserted`` of them: the others were duplicate
        outcomes) and tell the call observer about them."""
        if inserted is None:  # a COMMIT reported durable with the database's fatal error
            inserted = hi - lo
        self.stats.written[table] += inserted
        self.stats.duplicates[table] += hi - lo - inserted
        self._failing = False
        if self._on_call is not None and table == "calls":
            if hi - lo != len(rows):  # a part of a bisected batch
                rows = rows[lo:hi]
                if observed is not None:
                    observed = (observed[0][lo:hi], observed[1][lo:hi])
            observe(self._on_call, rows, observed)

    def _drop(self, table: str, rows: Sequence[Any], reason: DropReason,
              exc: BaseException | None) -> None:
        self.stats.dropped[table] += len(rows)
        self.stats.reasons[reason] += len(rows)
        if reason == "unwritable":
            self._failing = True
        why = f"{type(exc).__name__}: {exc}" if exc is not None else self.stats.last_error
        if reason == "rejected":
            ids = ", ".join(str(getattr(r, "request_id", None) or "?") for r in rows)
            log.error("sink dropped a %s row DuckDB refuses alone (%s): %s", table, ids, why)
        else:
            log.error("sink could not write %d %s rows: %s", len(rows), table, why)

    def _note(self, exc: BaseException) -> None:
        self.stats.write_errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"

    def _probe(self) -> bool:
        """Whether the database takes a write now (a row, then a checkpoint that moves the
        WAL into the file); a dead one is replaced first."""
        if self._con is None:
            return self._reconnect(None)
        try:
            self._con.execute(storage.PROBE).fetchall()
            self._con.execute("CHECKPOINT").fetchall()
        except Exception as exc:
            self._note(exc)
            if storage.fault(exc) in ("fatal", "committed"):
                return self._reconnect(exc)
            return False
        return True

    def _reconnect(self, cause: BaseException | None) -> bool:
        """After a fatal error: a fresh connection to the file, else to a new segment (a
        WAL too big to checkpoint, an instance still invalidated). False when neither opens:
        the probe tries again every ``probe_interval_ms``."""
        old, self._con = self._con, None
        self._failing = True
        if old is not None:
            try:
                old.close()
            except duckdb.Error:
                pass
        try:
            self._con = self._open(self._path)
        except Exception as exc:
            self._note(exc)
            if storage.refused(exc):  # disk full: a new file would not fare better
                log.error("sink cannot reopen %s: %s; retrying", self._path, exc)
                return False
            segment = storage.next_segment(self._settings.path)
            try:
                self._con = self._open(segment)
            except Exception as seg_exc:
                storage.remove_new(segment)
                self._note(seg_exc)
                log.error("sink cannot reopen %s (%s) nor start %s (%s); retrying",
                          self._path, exc, segment, seg_exc)
                return False
            log.error("sink cannot reopen %s (%s); recording goes on in %s",
                      self._path, exc, segment)
            self._path = segment
            self.stats.segments += 1
        self.stats.recoveries += 1
        self._failing = False
        log.warning("sink recovered with a fresh connection to %s after: %s", self._path,
                    cause if cause is not None else self.stats.last_error)
        return True

    def _open(self, path: str) -> duckdb.DuckDBPyConnection:
        return storage.open_checked(
            path, self._settings.duckdb_threads, self._settings.duckdb_memory_limit
        )

    def _run(self) -> None:
        try:
            while not self._stopping:
                wait = min(self._interval, self._probe_every) if self._failing else self._interval
                self._wake.wait(wait)
                self._wake.clear()
                self._step()
            # Late appends raced with the stop flag: one more swap takes them.
            self._next_probe = 0.0
            self._step()
            self._step()
        finally:
            self._close_connection()

    def _step(self) -> None:
        """One turn of the writer: re-check a failing database when due, then flush."""
        try:
            now = time.monotonic()
            if self._failing and now >= self._next_probe:
                if self._probe():
                    self._failing = False
                    self._probe_failures = 0
                    log.warning("sink can write %s again", self._path)
                else:
                    # A dead database is reopened by each probe (its WAL replayed): back off
                    # to 4 intervals while it lasts.
                    self._probe_failures = min(self._probe_failures + 1, 2)
                self._next_probe = now + self._probe_every * 2**self._probe_failures
            self._flush()
        except Exception as exc:  # a bug here must not end recording: counted at close
            self._note(exc)
            log.exception("sink writer step failed")

    def _close_connection(self) -> None:
        con, self._con = self._con, None
        if con is None:
            return
        try:
            con.execute("CHECKPOINT").fetchall()
        except duckdb.Error as exc:
            # Every committed row is in the WAL, replayed when the file is next opened.
            log.warning("sink's final checkpoint failed (the WAL keeps the data): %s", exc)
        finally:
            try:
                con.close()
            except duckdb.Error:
                pass

    def wait_flushed(self, timeout: float = 5.0) -> bool:
        """Block (in a worker thread) until every record accepted before the call is
        written or dropped; True when that happened within ``timeout``."""
        target = dict(self.stats.accepted)
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats
            done = all(stats.written[t] + stats.dropped[t] + stats.duplicates[t] >= n
                       for t, n in target.items())
            if done:
                return True
            if time.monotonic() > deadline or not self.writable:
                return False
            self._wake.set()
            time.sleep(0.005)
