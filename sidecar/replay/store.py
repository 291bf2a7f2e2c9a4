"""The replay's output file: recorded schema, replay calls, the originals they pair with, and
which request ids each run has replayed (so an interrupted run resumes without doubling).
"""

from __future__ import annotations

from collections.abc import Sequence, Set

import pyarrow as pa

from sidecar.replay.source import ReplaySource, connect_out
from sidecar.sink import CallRecord
from sidecar.sink.streams import StreamMessageRecord
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


# One row per run id: what it replays where. A resume that changes any of it is refused.
_RUNS_DDL = """
CREATE TABLE IF NOT EXISTS replay_runs (
    run_id VARCHAR,
    source VARCHAR,
    route VARCHAR,
    target VARCHAR,
    backend VARCHAR,
    backend_version VARCHAR,
    started_at TIMESTAMP
)
"""


class ReplayStore:
    """One connection to the output DuckDB file; every write is one transaction."""

    def __init__(self, path: str, run_id: str) -> None:
        self.path = path
        self.run_id = run_id
        self.con = connect_out(path)
        self.con.execute(_PROGRESS_DDL).fetchall()
        self.con.execute(_RUNS_DDL).fetchall()
        self._columns = {t: self._describe(t)
                         for t in ("requests", "calls", "configs", "stream_messages")}

    def _describe(self, table: str) -> list[str]:
        return [str(r[0]) for r in self.con.execute(f"DESCRIBE {table}").fetchall()]

    def close(self) -> None:
        self.con.close()

    def claim(self, source: str, route: str, target: str, backend: str, version: str) -> None:
        """Record what this run id replays, or check that a resume replays the same: another
        route, target or backend under one run id would mix two candidates' answers."""
        from sidecar.replay.source import ReplayInputError

        wanted = {"route": route, "target": target, "backend": backend}
        rows = self.con.execute(
            "SELECT route, target, backend FROM replay_runs WHERE run_id = ?",
            [self.run_id]).fetchall()
        if not rows:  # a run begun before replay_runs existed: its progress names a backend
            rows = [(None, None, str(r[0])) for r in self.con.execute(
                "SELECT DISTINCT backend FROM replay_progress WHERE run_id = ?",
                [self.run_id]).fetchall()]
        for row in rows:
            found = dict(zip(wanted, row, strict=True))
            changed = [f"{key} {found[key]!r} (now {value!r})" for key, value in wanted.items()
                       if found[key] is not None and found[key] != value]
            if changed:
                raise ReplayInputError(
                    f"run {self.run_id} in {self.path} was started with " + ", ".join(changed)
                    + ": resume it with the same arguments, or give a new --run-id")
        if not rows or rows[0][0] is None:
            self.con.execute(
                "INSERT INTO replay_runs VALUES (?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                [self.run_id, source, route, target, backend, version]).fetchall()

    def done(self) -> set[str]:
        """Request ids this run id has replayed and had answered OK (failed ones are sent
        again by a resume)."""
        rows = self.con.execute(
            "SELECT request_id FROM replay_progress WHERE run_id = ? GROUP BY request_id "
            "HAVING bool_or(status = 'OK')", [self.run_id]
        ).fetchall()
        return {str(r[0]) for r in rows}

    def failed(self) -> set[str]:
        """Request ids this run id has replayed without an OK answer yet."""
        rows = self.con.execute(
            "SELECT request_id FROM replay_progress WHERE run_id = ? GROUP BY request_id "
            "HAVING NOT bool_or(status = 'OK')", [self.run_id]
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

    def write(self, source: ReplaySource, rows: Sequence[CallRecord], ended: float, *,
              retried: Set[str] = frozenset(),
              messages: Sequence[StreamMessageRecord] = ()) -> None:
        """Record replayed calls with their original requests and primary calls, atomically;
        a call sent again (in ``retried``) replaces its earlier failed row."""
        if not rows:
            return
        ids = [r.request_id for r in rows]
        again = [i for i in ids if i in retried]
        requests = source.originals("requests", ids, self._columns["requests"])
        primaries = source.originals("calls", ids, self._columns["calls"])
        streams = (source.originals("stream_messages", ids, self._columns["stream_messages"])
                   if source.columns("stream_messages") else None)
        con = self.con
        con.execute("BEGIN TRANSACTION").fetchall()
        try:
            self._insert_new("requests", requests, "request_id")
            self._insert_new("calls", primaries, "request_id", "role <> 'replay'")
            if streams is not None:
                self._insert_new("stream_messages", streams, "request_id", "role <> 'replay'")
            if again:
                for table, failed in (("calls", "status <> 'OK'"), ("stream_messages", "TRUE")):
                    con.execute(
                        f"DELETE FROM {table} WHERE role = 'replay' AND {failed} "
                        "AND backend = ? AND request_id IN (SELECT unnest(?))",
                        [rows[0].backend, again]).fetchall()
            write_batch(con, "calls", rows)
            if messages:
                write_batch(con, "stream_messages", messages)
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
