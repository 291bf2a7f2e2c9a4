"""Exports recorded rows not exported before as hive-partitioned Parquet segments.

Layout ``DIR/table=NAME/date=YYYY-MM-DD/REPLICA-SEGMENT.parquet``; a watermark per table in
the DuckDB file itself (``export_state``) makes the export idempotent across crashes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sidecar.export.settings import ExportConfig, default_replica

__all__ = [
    "BYTES_COLUMNS",
    "EXPORTED_TABLES",
    "CursorFactory",
    "ExportResult",
    "SegmentExporter",
    "TableExport",
]

log = logging.getLogger(__name__)

CursorFactory = Callable[[], duckdb.DuckDBPyConnection]

#: The recorded tables (sidecar/sink/schema.py) the export covers, in export order.
EXPORTED_TABLES: Final = ("configs", "requests", "calls", "outcomes", "audit", "canary_state",
                          "stream_messages")
#: Raw bytes columns, left out unless ``include_bytes``.
BYTES_COLUMNS: Final = {"requests": "request_bytes", "calls": "response_bytes",
                        "stream_messages": "message_bytes"}
#: Partition of rows without a timestamp (never written by the sink, but never lost either).
NO_DATE: Final = "1970-01-01"

_STATE_DDL = """
CREATE TABLE IF NOT EXISTS export_state (
    table_name VARCHAR PRIMARY KEY,
    exported_rowid BIGINT,       -- rows with rowid <= this are in committed segments
    pending_rowid BIGINT,        -- upper rowid of the segment being written, NULL when none
    segment BIGINT,              -- number of the last committed segment
    epoch VARCHAR,               -- when this database's export began (UTC): names restart safely
    updated_at TIMESTAMP
)
"""


@dataclass(frozen=True)
class TableExport:
    """What one table contributed to one export: rows, segments and files."""

    table: str
    rows: int
    segments: int
    files: tuple[str, ...]


@dataclass(frozen=True)
class ExportResult:
    """The outcome of :meth:`SegmentExporter.export_once`."""

    tables: tuple[TableExport, ...] = ()
    elapsed_s: float = 0.0
    skipped: tuple[str, ...] = field(default=())

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for t in self.tables for f in t.files)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": {t.table: t.rows for t in self.tables},
            "segments": {t.table: t.segments for t in self.tables},
            "files": list(self.files),
            "elapsed_s": round(self.elapsed_s, 3),
            "skipped": list(self.skipped),
        }


@dataclass(frozen=True)
class _State:
    exported: int
    pending: int | None
    segment: int
    epoch: str


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SegmentExporter:
    """Writes new rows of every recorded table as Parquet segments; one export at a time.

    ``cursor_factory`` returns a connection to the sidecar's database (a sink cursor while
    it runs); each export closes the connection it got. Thread-safe; synchronous.
    """

    def __init__(
        self, settings: ExportConfig, cursor_factory: CursorFactory, db_path: str
    ) -> None:
        if settings.dir is None:
            raise ValueError("export is disabled (storage.export.dir is null)")
        self.settings = settings
        self.root = Path(settings.dir)
        self.replica = settings.replica or default_replica(db_path)
        self._cursor_factory = cursor_factory
        self._lock = threading.Lock()

    # -- public -------------------------------------------------------------------------
    def export_once(self) -> ExportResult:
        """Export every row recorded so far and not yet exported; return what was written."""
        started = time.perf_counter()
        with self._lock, self._connection() as con:
            present = self._prepare(con)
            done: list[TableExport] = []
            for table in EXPORTED_TABLES:
                if table in present:
                    done.append(self._export_table(con, table))
            skipped = tuple(t for t in EXPORTED_TABLES if t not in present)
        result = ExportResult(tuple(done), time.perf_counter() - started, skipped)
        if result.rows:
            log.info("exported %d rows in %d files to %s", result.rows, len(result.files),
                     self.root)
        return result

    def segment_name(self, state_epoch: str, segment: int) -> str:
        """``REPLICA-EPOCH-NNNNNNNNNN``: unique per replica, increasing in segment order."""
        return f"{self.replica}-{state_epoch}-{segment:010d}"

    # -- state --------------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._cursor_factory()
        try:
            yield con
        finally:
            con.close()

    def _prepare(self, con: duckdb.DuckDBPyConnection) -> set[str]:
        con.execute(_STATE_DDL).fetchall()
        rows = con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
            "AND schema_name = 'main'"
        ).fetchall()
        present = {str(r[0]) for r in rows} & set(EXPORTED_TABLES)
        epoch = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        # One epoch for the whole database: the first table's, if any exists already.
        found = con.execute("SELECT min(epoch) FROM export_state").fetchall()
        if found and found[0][0] is not None:
            epoch = str(found[0][0])
        for table in sorted(present):
            con.execute(
                "INSERT INTO export_state SELECT ?, -1, NULL, 0, ?, now()::TIMESTAMP "
                "WHERE NOT EXISTS (SELECT 1 FROM export_state WHERE table_name = ?)",
                [table, epoch, table],
            ).fetchall()
        return present

    def _state(self, con: duckdb.DuckDBPyConnection, table: str) -> _State:
        row = con.execute(
            "SELECT exported_rowid, pending_rowid, segment, epoch FROM export_state "
            "WHERE table_name = ?", [table]
        ).fetchall()[0]
        return _State(int(row[0]), None if row[1] is None else int(row[1]), int(row[2]),
                      str(row[3]))

    def _plan(self, con: duckdb.DuckDBPyConnection, table: str, state: _State, target: int) -> int:
        """Fix the next segment's upper rowid before writing it, so a retry rewrites the
        very same rows under the very same file names."""
        upper = min(target, state.exported + self.settings.segment_rows)
        con.execute(
            "UPDATE export_state SET pending_rowid = ?, updated_at = now()::TIMESTAMP "
            "WHERE table_name = ?", [upper, table]
        ).fetchall()
        return upper

    def _advance(self, con: duckdb.DuckDBPyConnection, table: str, upper: int) -> None:
        """Commit a written segment: move the watermark and count the segment."""
        con.execute(
            "UPDATE export_state SET exported_rowid = ?, pending_rowid = NULL, "
            "segment = segment + 1, updated_at = now()::TIMESTAMP WHERE table_name = ?",
            [upper, table],
        ).fetchall()

    # -- export -------------------------------------------------------------------------
    def _export_table(self, con: duckdb.DuckDBPyConnection, table: str) -> TableExport:
        rows = con.execute(f"SELECT max(rowid) FROM {_quote(table)}").fetchall()
        target = -1 if rows[0][0] is None else int(rows[0][0])
        written: list[str] = []
        count = segments = 0
        while True:
            state = self._state(con, table)
            if state.pending is not None:
                upper = state.pending  # a segment interrupted by a crash: write it again
            elif state.exported < target:
                upper = self._plan(con, table, state, target)
            else:
                break
            n, files = self._write_segment(con, table, state, upper)
            self._advance(con, table, upper)
            count += n
            segments += 1
            written.extend(files)
        return TableExport(table, count, segments, tuple(written))

    def _columns(self, con: duckdb.DuckDBPyConnection, table: str) -> str:
        described = con.execute(f"DESCRIBE {_quote(table)}").fetchall()
        names = [str(r[0]) for r in described]
        if not self.settings.include_bytes:
            names = [n for n in names if n != BYTES_COLUMNS.get(table)]
        return ", ".join(_quote(n) for n in names)

    def _write_segment(
        self, con: duckdb.DuckDBPyConnection, table: str, state: _State, upper: int
    ) -> tuple[int, list[str]]:
        has_ts = any(
            str(r[0]) == "ts" for r in con.execute(f"DESCRIBE {_quote(table)}").fetchall()
        )
        day = (
            f"coalesce(strftime(ts, '%Y-%m-%d'), '{NO_DATE}')" if has_ts else f"'{NO_DATE}'"
        )
        batch = con.sql(
            f"SELECT {self._columns(con, table)}, {day} AS __date FROM {_quote(table)} "
            "WHERE rowid > ? AND rowid <= ? ORDER BY rowid",
            params=[state.exported, upper],
        ).to_arrow_table()
        if batch.num_rows == 0:
            return 0, []
        name = self.segment_name(state.epoch, state.segment + 1)
        dates = batch.column("__date")
        files = []
        for value in sorted(set(dates.to_pylist())):
            part = batch.filter(pc.equal(dates, pa.scalar(value))).drop_columns(["__date"])
            directory = self.root / f"table={table}" / f"date={value}"
            files.append(self._write_file(part, directory, f"{name}.parquet"))
        return batch.num_rows, files

    def _write_file(self, data: pa.Table, directory: Path, filename: str) -> str:
        """Write to a hidden temporary name, fsync, then rename over the final name."""
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(f".{self.replica}-*.tmp*"):
            stale.unlink(missing_ok=True)  # left by an earlier crash of this replica
        final = directory / filename
        temp = directory / f".{filename}.tmp{uuid.uuid4().hex[:8]}"
        try:
            pq.write_table(data, temp, compression="zstd")
            with open(temp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(directory)
        return str(final)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename still happened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
