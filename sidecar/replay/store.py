"""The replay's output file: recorded schema, replay calls, the originals they pair with, and
which request ids each run has replayed (so an interrupted run resumes without doubling).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from sidecar.replay.source import ReplaySource, connect_out
from sidecar.sink import CallRecord
from sidecar.sink.writer import write_batch

__all__ = ["ReplayStore"]

_PROGRESS_DDL = """
CREATE TABLE IF NOT EXISTS replay_progress (
    run_id VARCHAR,
    request_id VARCHAR,
    replayed_at TIMESTAMP,       -- UTC, when the replayed call ended
    backend VARCHAR,
    status VARCHAR
)
"""


class ReplayStore:
    """One connection to the output DuckDB file; every write is one transaction."""

    def __init__(self, path: str, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        self.con = connect_out(path)
        self.con.execute(_PROGRESS_DDL).fetchall()
        self._columns = {t: self._describe(t) for t in ("requests", "calls", "configs")}

    def _describe(self, table: str) -> list[str]:
        return [str(r[0]) for r in self.con.execute(f"DESCRIBE {table}").fetchall()]

    def close(self) -> None:
        self.con.close()

    def done(self) -> set[str]:
        """Request ids this run id has already replayed."""
        rows = self.con.execute(
            "SELECT request_id FROM replay_progress WHERE run_id = ?", [self.run_id]
        ).fetchall()
        return {str(r[0]) for r in rows}

    def other_runs(self) -> list[str]:
        rows = self.con.execute(
            "SELECT DISTINCT run_id FROM replay_progress WHERE run_id <> ? ORDER BY 1",
            [self.run_id],
        ).fetchall()
        return [str(r[0]) for r in rows]

    def copy_configs(self, source: ReplaySource) -> None:
        table = source.configs(self._columns["configs"])
        if table is None or table.num_rows == 0:
            return
        self._insert_new("configs", table, "config_version")

    def write(self, source: ReplaySource, rows: Sequence[CallRecord], ended: float) -> None:
        """Record replayed calls with their original requests and primary calls, atomically."""
        if not rows:
            return
        ids = [r.request_id for r in rows]
        requests = source.originals("requests", ids, self._columns["requests"])
        primaries = source.originals("calls", ids, self._columns["calls"])
        con = self.con
        con.execute("BEGIN TRANSACTION").fetchall()
        try:
            self._insert_new("requests", requests, "request_id")
            self._insert_new("calls", primaries, "request_id", "role <> 'replay'")
            write_batch(con, "calls", rows)
            progress = pa.table({
                "run_id": pa.array([self.run_id] * len(rows), pa.string()),
                "request_id": pa.array(ids, pa.string()),
                "replayed_at": pa.array([int(ended * 1e6)] * len(rows), pa.timestamp("us")),
                "backend": pa.array([r.backend for r in rows], pa.string()),
                "status": pa.array([r.status for r in rows], pa.string()),
            })
            con.register("_replay_progress", progress)
            try:
                con.execute(
                    "INSERT INTO replay_progress BY NAME SELECT * FROM _replay_progress"
                ).fetchall()
            finally:
                con.unregister("_replay_progress")
            con.execute("COMMIT").fetchall()
        except BaseException:
            con.execute("ROLLBACK").fetchall()
            raise

    def _insert_new(self, table: str, data: pa.Table, key: str, among: str = "TRUE") -> None:
        """Insert rows whose ``key`` the file does not hold yet (a resumed run copies once)."""
        if data.num_rows == 0:
            return
        self.con.register("_replay_rows", data)
        try:
            self.con.execute(
                f"INSERT INTO {table} BY NAME SELECT * FROM _replay_rows "
                f"WHERE {key} NOT IN (SELECT {key} FROM {table} WHERE {key} IS NOT NULL "
                f"AND {among})"
            ).fetchall()
        finally:
            self.con.unregister("_replay_rows")
