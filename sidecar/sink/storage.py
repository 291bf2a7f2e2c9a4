"""The sink's DuckDB file: opening it checked, telling row faults from database faults, and
naming the new segment the sink moves to when its file cannot be reopened.

A DuckDB error after a write is one of four things (:func:`fault`): the rows were written
and then the database died (an autocheckpoint failure after a durable COMMIT), the database
died or was invalidated before the rows were written, the storage refused the bytes (disk
full, a file size limit, permissions), or the statement failed on its rows (memory, a
value) on a connection that still works.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Literal

import duckdb

from sidecar.sink.schema import migrate

__all__ = ["PROBE", "Fault", "fault", "next_segment", "open_checked", "refused", "remove_new"]

log = logging.getLogger(__name__)

#: The smallest real write: one row, rewritten in place (table created by the schema).
PROBE = "INSERT OR REPLACE INTO sink_health VALUES (1, now()::TIMESTAMP)"

Fault = Literal["committed", "fatal", "storage", "statement"]

# How DuckDB words a write the file system refused (it reports them as IO errors, or as a
# failed COMMIT when the WAL cannot grow).
_STORAGE_WORDS = ("Could not write", "No space left", "File too large", "Permission denied",
                  "Read-only file system", "Disk quota")


def fault(exc: BaseException) -> Fault:
    """What a failed write left behind.

    ``committed``: DuckDB made the COMMIT durable and then failed its autocheckpoint; the rows
    are in the file but the database instance is invalidated. ``fatal``: the instance (or the
    connection) is unusable and nothing was written. ``statement``: this statement failed and
    was rolled back; the connection still works. ``storage``: the file system refused the
    bytes; nothing was written and smaller pieces would not help.
    """
    text = str(exc)
    if "COMMIT succeeded" in text:
        return "committed"
    fatal = (duckdb.FatalException, duckdb.InternalException, duckdb.ConnectionException)
    if isinstance(exc, fatal) or "database has been invalidated" in text:
        return "fatal"
    return "storage" if refused(exc) else "statement"


def refused(exc: BaseException) -> bool:
    """The file system refused bytes (disk full, a size limit, permissions): a new segment
    on the same disk would not help, freeing space will."""
    text = str(exc)
    return isinstance(exc, (duckdb.IOException, OSError)) or any(
        word in text for word in _STORAGE_WORDS)


def open_checked(path: str, threads: int, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """A connection to ``path`` that has proven it can write: migrated, probed, checkpointed.

    The checkpoint matters after a fatal error: a WAL too big to checkpoint under the memory
    limit reopens fine and then invalidates the database again at the first write.
    """
    con = duckdb.connect(path, config={"threads": threads, "memory_limit": memory_limit})
    try:
        migrate(con)
        con.execute(PROBE).fetchall()
        con.execute("CHECKPOINT").fetchall()
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.close()
        raise
    return con


def next_segment(path: str) -> str:
    """The first free ``NAME.rN.duckdb`` beside ``path``: a glob of ``NAME*.duckdb`` (what
    the analysis CLI takes with ``--db``) reads the file and its segments as one."""
    p = Path(path)
    for n in range(1, 10_000):
        candidate = p.with_name(f"{p.stem}.r{n}{p.suffix or '.duckdb'}")
        if not candidate.exists():
            return str(candidate)
    raise RuntimeError(f"no free segment name beside {path}")


def remove_new(path: str) -> None:
    """Remove a segment a failed open just created (and its WAL), so it is not retried."""
    for name in (path, f"{path}.wal"):
        with contextlib.suppress(OSError):
            os.remove(name)
