"""Recorded traffic to replay: requests with their bytes, and how each route was decoded.

Reads a stopped sidecar's DuckDB file or a Parquet export through ``analysis.load``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import pyarrow as pa

from analysis.load import PRIMARY_SQL
from sidecar.codecs import codec_for
from sidecar.errors import ShadowcarError
from sidecar.exit_codes import EXIT_DATA, EXIT_USAGE
from sidecar.sink import Decoding

if TYPE_CHECKING:
    from sidecar.codecs import Codec

__all__ = [
    "PRIMARY_SQL",
    "Message",
    "RecordedRequest",
    "ReplayInputError",
    "ReplaySource",
    "ReplaySourceError",
    "RouteDecoding",
]

_PAGE_ROWS = 500


class ReplayInputError(ShadowcarError):
    """The source, its recorded data or the arguments cannot give a replay (exit 2)."""

    exit_code = EXIT_USAGE


class ReplaySourceError(ReplayInputError):
    """The source cannot be read at all: missing, locked or corrupt (exit 3)."""

    exit_code = EXIT_DATA


#: A recorded stream message: (milliseconds after the call started, its bytes).
Message = tuple[float, bytes]
Streaming = Literal["unary", "server", "client", "bidi"]
_KINDS: tuple[Streaming, ...] = ("unary", "server", "client", "bidi")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One recorded request to send again; ``messages`` holds a caller stream's messages
    (client and bidi routes), ``body`` the one request message of the others."""

    request_id: str
    ts: float
    method: str
    body: bytes
    config_version: str | None
    messages: tuple[Message, ...] | None = None


@dataclass(frozen=True, slots=True)
class RouteDecoding:
    """How a route's calls were made and decoded under one config version: its codec as
    configured (``oip``, ``raw``, ``reflection`` or ``descriptor:FILE``), compared fields
    and its streaming kind."""

    codec: str
    compare_output: str | None
    score_index: int
    compare_fields: tuple[str, ...] = ()
    streaming: Streaming = "unary"
    stream_key: str | None = None

    def decoding(self, record_bytes: bool, codec: Codec | None = None) -> Decoding:
        """The writer's instructions; ``codec`` is the built codec of a JSON route."""
        built = codec if codec is not None else codec_for(self.codec)
        return Decoding(built, self.compare_output, self.score_index, record_bytes,
                        compare_fields=self.compare_fields)


RAW = RouteDecoding("raw", None, -1)


def route_decoding(config_json: str, route: str) -> RouteDecoding | None:
    """The route's codec settings in a recorded canonical config, None when it has no route."""
    try:
        config = json.loads(config_json)
    except ValueError:
        return None
    routes = config.get("routes") if isinstance(config, dict) else None
    for entry in routes or []:
        if isinstance(entry, dict) and entry.get("match") == route:
            kind = entry.get("streaming") or "unary"
            fields = entry.get("compare_fields") or ()
            return RouteDecoding(
                str(entry.get("codec") or "raw"),
                entry.get("compare_output"),
                int(entry.get("score_index", -1)),
                tuple(str(f) for f in fields if isinstance(f, str)),
                kind if kind in _KINDS else "unary",
                entry.get("stream_key") if isinstance(entry.get("stream_key"), str) else None,
            )
    return None


class ReplaySource:
    """A recorded source opened read-only; iterates one route's requests that carry bytes."""

    def __init__(self, location: str, route: str, *, since: str | None = None,
                 until: str | None = None) -> None:
        try:
            from analysis.load import AnalysisSourceError, open_source, time_filter
        except ImportError as exc:  # pragma: no cover - analysis ships with the sidecar
            raise ReplayInputError("replay needs the analysis package") from exc
        if not os.path.exists(location):
            raise ReplaySourceError(f"--from {location!r}: no such file or directory")
        self.location = location
        self.route = route
        try:
            self._where = time_filter(since, until)  # a bad --since is a usage error (2)
        except AnalysisSourceError as exc:
            raise ReplayInputError(str(exc)) from exc
        try:
            if os.path.isdir(location):
                self.con = open_source(parquet=location)
            else:
                self.con = open_source(db=location)
        except AnalysisSourceError as exc:
            raise ReplaySourceError(str(exc)) from exc
        self._check()

    def close(self) -> None:
        self.con.close()

    def columns(self, table: str) -> list[str]:
        present = self.con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [table]
        ).fetchall()
        if not present[0][0]:
            return []
        return [str(r[0]) for r in self.con.execute(f"DESCRIBE {table}").fetchall()]

    def _check(self) -> None:
        cols = self.columns("requests")
        if not cols:
            raise ReplayInputError(f"{self.location!r} has no recorded requests table")
        if "request_bytes" not in cols:
            raise ReplayInputError(
                f"{self.location!r} has no request_bytes column: export with "
                "storage.export.include_bytes: true (and record with storage.record_bytes: true)"
            )
        total, with_bytes = self.con.execute(
            f"SELECT count(*), count(request_bytes) FROM requests WHERE route = ? "
            f"AND {self._where}", [self.route]
        ).fetchall()[0]
        if not total:
            routes = [str(r[0]) for r in self.con.execute(
                "SELECT DISTINCT route FROM requests ORDER BY 1 LIMIT 20").fetchall()]
            raise ReplayInputError(
                f"no recorded requests for route {self.route!r} in the window "
                f"(routes recorded: {', '.join(routes) or 'none'})"
            )
        if not with_bytes:
            raise ReplayInputError(
                f"none of the {total} recorded requests of route {self.route!r} kept their "
                "bytes: replay needs traffic recorded with storage.record_bytes: true"
            )

    def count(self) -> int:
        """Requests of the route in the window that carry bytes."""
        rows = self.con.execute(
            f"SELECT count(*) FROM requests WHERE route = ? AND request_bytes IS NOT NULL "
            f"AND {self._where}", [self.route]
        ).fetchall()
        return int(rows[0][0])

    def requests(self, skip: set[str]) -> Iterator[RecordedRequest]:
        """Requests in (ts, request_id) order, a page at a time; ids in ``skip`` are left out.

        Pages are read to their end before they are yielded (DuckDB 2 wants every result
        consumed before the connection does other work)."""
        last: tuple[Any, str] | None = None
        while True:
            after = "TRUE" if last is None else "(ts > ? OR (ts = ? AND request_id > ?))"
            params: list[Any] = [self.route]
            if last is not None:
                params += [last[0], last[0], last[1]]
            rows = self.con.execute(
                "SELECT request_id, ts, epoch(ts), method, request_bytes, config_version "
                f"FROM requests WHERE route = ? AND request_bytes IS NOT NULL AND {self._where} "
                f"AND {after} ORDER BY ts, request_id LIMIT {_PAGE_ROWS}", params
            ).fetchall()
            if not rows:
                return
            for rid, _ts, epoch, method, body, version in rows:
                if rid not in skip:
                    yield RecordedRequest(str(rid), float(epoch), str(method), bytes(body),
                                          version)
            last = (rows[-1][1], str(rows[-1][0]))

    def has_request_messages(self) -> bool:
        """Whether any caller stream of the route kept its messages' bytes one by one."""
        if "message_bytes" not in self.columns("stream_messages"):
            return False
        rows = self.con.execute(
            "SELECT count(*) FROM stream_messages WHERE route = ? AND direction = 'request' "
            "AND message_bytes IS NOT NULL", [self.route]).fetchall()
        return bool(rows[0][0])

    def request_messages(self, request_id: str) -> tuple[Message, ...] | None:
        """A caller stream's recorded messages in order, None when none were recorded one by
        one (an older sidecar recorded them concatenated), without their bytes, or fewer
        than the caller sent (past storage.stream_max_messages)."""
        if "message_bytes" not in self.columns("stream_messages"):
            return None
        rows = self.con.execute(
            "SELECT offset_ms, message_bytes FROM stream_messages WHERE request_id = ? "
            "AND direction = 'request' ORDER BY idx", [request_id]
        ).fetchall()
        if not rows or any(body is None for _, body in rows):
            return None
        if "messages" in self.columns("requests"):  # kept fewer than seen: not the stream
            seen = self.con.execute("SELECT max(messages) FROM requests WHERE request_id = ?",
                                    [request_id]).fetchall()[0][0]
            if seen is not None and int(seen) > len(rows):
                return None
        return tuple((float(offset or 0.0), bytes(body)) for offset, body in rows)

    def decodings(self) -> tuple[dict[str, RouteDecoding], RouteDecoding]:
        """Per config version, the route's decoding; and the newest one as the default."""
        if "config_json" not in self.columns("configs"):
            return {}, RAW
        rows = self.con.execute(
            "SELECT config_version, config_json FROM configs ORDER BY ts NULLS FIRST"
        ).fetchall()
        found: dict[str, RouteDecoding] = {}
        latest = RAW
        for version, text in rows:
            decoded = route_decoding(str(text), self.route) if text is not None else None
            if decoded is not None:
                found[str(version)] = decoded
                latest = decoded
        return found, latest

    def originals(self, table: str, ids: list[str], columns: list[str]) -> pa.Table:
        """Recorded rows of ``table`` for ``ids``: requests, or the primary calls."""
        have = set(self.columns(table))  # two queries: once, not once per column
        keep = [c for c in columns if c in have]
        select = ", ".join(f'"{c}"' for c in keep)
        where = "request_id IN (SELECT unnest(?))"
        if table == "calls":
            where += f" AND {PRIMARY_SQL}"
        elif table == "stream_messages":  # the primary's and the caller's messages
            where += " AND role NOT IN ('shadow', 'replay', 'gold')"
        return self.con.sql(
            f"SELECT {select} FROM {table} WHERE {where}", params=[ids]
        ).to_arrow_table()

    def configs(self, columns: list[str]) -> pa.Table | None:
        have = set(self.columns("configs"))
        if not have:
            return None
        keep = ", ".join(f'"{c}"' for c in columns if c in have)
        return self.con.sql(f"SELECT DISTINCT {keep} FROM configs").to_arrow_table()


def connect_out(path: str) -> duckdb.DuckDBPyConnection:
    """Open (or create) the replay output file and bring it to the recorded schema."""
    from sidecar.sink import migrate

    try:
        con = duckdb.connect(path)
        migrate(con)
    except (duckdb.Error, OSError, RuntimeError) as exc:
        raise ReplayInputError(f"cannot open replay output {path!r}: {exc}") from exc
    return con
