"""Opening analysis sources: a sidecar DuckDB file, an exported Parquet tree or an analyst's table.

Every source becomes an in-memory DuckDB connection with the recorded tables as views.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import duckdb

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "PRIMARY_SQL",
    "RECORDED_TABLES",
    "AnalysisSourceError",
    "SourceKind",
    "VersionScope",
    "open_source",
    "parse_time",
    "pick_versions",
    "primary_calls",
    "relation_columns",
    "relations",
    "release_memory",
    "sql_quote",
    "sql_timestamp",
    "time_filter",
    "version_scope",
]

SourceKind = Literal["divergence", "experiment", "drift"]

#: The tables of the recorded-data contract (DESIGN section 4) that become views.
RECORDED_TABLES: tuple[str, ...] = (
    "configs", "requests", "calls", "outcomes", "audit", "canary_state", "stream_messages",
)

_EXPERIMENT_COLUMNS = ("unit_id", "variant", "metric", "value")
_DIVERGENCE_COLUMNS = ("request_id", "backend", "role", "output")
#: DuckDB memory cap of an analysis connection (Spark: the driver's heap). With it a 10M-unit
#: experiment report peaks under 1 GB of process memory (bench/README.md, issue 19.5).
DEFAULT_MEMORY_LIMIT = "600MB"
_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class AnalysisSourceError(Exception):
    """A source cannot be opened or does not hold what the analysis needs."""


def sql_quote(text: str) -> str:
    """A SQL string literal (names and paths come from data, never trusted as SQL)."""
    return "'" + text.replace("'", "''") + "'"


def primary_calls(alias: str = "") -> str:
    """SQL condition on ``calls``: the call whose output is the request's primary answer
    (the primary, or the variant, stable or canary call that served it)."""
    p = f"{alias}." if alias else ""
    return f"({p}role = 'primary' OR ({p}served AND {p}role IN ('variant', 'stable', 'canary')))"


#: :func:`primary_calls` on unqualified columns.
PRIMARY_SQL = primary_calls()


def relations(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of the tables and views a connection sees."""
    # Only what an unqualified name reaches: an attached file's tables are not in scope.
    rows = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE database_name = current_database() "
        "AND schema_name = current_schema() UNION ALL SELECT table_name FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name = current_schema()"
    ).fetchall()
    return {str(r[0]) for r in rows}


def relation_columns(con: duckdb.DuckDBPyConnection, name: str) -> set[str]:
    """Column names of table or view ``name``; empty when there is none."""
    if name not in relations(con):
        return set()
    return {str(r[0]) for r in con.execute(f"DESCRIBE {name}").fetchall()}


def release_memory(con: duckdb.DuckDBPyConnection) -> None:
    """Have DuckDB hand its cached buffers back (a dropped table's, a finished aggregate's):
    it keeps them for the next query up to ``memory_limit``, which a report that goes on in
    numpy would pay for twice. Lowering the limit for a moment makes it free them; when
    something pinned cannot be freed the limit is simply restored."""
    limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    try:
        con.execute("SET memory_limit = '32MB'")
    except duckdb.Error:
        pass
    finally:
        con.execute(f"SET memory_limit = {sql_quote(str(limit))}")


def open_source(
    *,
    db: str | None = None,
    parquet: str | None = None,
    table: str | None = None,
    kind: SourceKind | None = None,
    memory_limit: str | None = DEFAULT_MEMORY_LIMIT,
) -> duckdb.DuckDBPyConnection:
    """Return an in-memory connection whose views are the recorded tables of one source.

    Exactly one of ``db`` (a sidecar DuckDB file, opened read-only), ``parquet`` (a directory
    or glob of hive-partitioned Parquet, ``DIR/table=calls/**/*.parquet``) or ``table`` (an
    analyst's Parquet/CSV file, shaped for ``kind``) must be given. ``memory_limit`` caps
    DuckDB's own memory (joins spill to a temporary directory beyond it); ``None`` keeps
    DuckDB's default of most of the machine's memory.
    """
    given = [name for name, value in (("db", db), ("parquet", parquet), ("table", table)) if value]
    if len(given) != 1:
        raise AnalysisSourceError(
            "give exactly one source: --db FILE, --parquet DIR or --input TABLE"
        )
    con = duckdb.connect(":memory:")
    try:
        # DuckDB measures progress (analysis.progress draws it on a terminal) but never
        # prints it: reports own the terminal.
        con.execute("SET enable_progress_bar = true")
        con.execute("SET enable_progress_bar_print = false")
        if memory_limit:
            con.execute(f"SET memory_limit = {sql_quote(memory_limit)}")
            spill = os.path.join(tempfile.gettempdir(), "shadowcar-analysis")
            con.execute(f"SET temp_directory = {sql_quote(spill)}")
        if db:
            _attach_db(con, db)
        elif parquet:
            _parquet_views(con, parquet)
        elif table:
            _table_views(con, table, kind)
    except AnalysisSourceError:
        con.close()
        raise
    except duckdb.Error as exc:
        con.close()
        raise AnalysisSourceError(f"cannot read source: {exc}") from exc
    return con


def _attach_db(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """One DuckDB file, or a glob of several (the segments of a ``--workers N`` sidecar,
    ``shadowcar.w*.duckdb``): their tables are seen as one (UNION ALL BY NAME)."""
    if any(ch in path for ch in "*?[") and not os.path.isfile(path):
        files = sorted(glob.glob(path))
        if not files:
            raise AnalysisSourceError(f"no DuckDB file matches {path!r}")
        names = [f"src{i}" for i in range(len(files))]
        present_in: dict[str, list[str]] = {}
        for alias, file in zip(names, files, strict=True):
            for table in _attach_one(con, file, alias):
                present_in.setdefault(table, []).append(alias)
        for table, aliases in present_in.items():
            union = " UNION ALL BY NAME ".join(
                f"SELECT * FROM {alias}.main.{table}" for alias in aliases
            )
            con.execute(f"CREATE VIEW {table} AS {union}")
        return
    for table in _attach_one(con, path, "src"):
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM src.main.{table}")


def _attach_one(con: duckdb.DuckDBPyConnection, path: str, alias: str) -> list[str]:
    if not os.path.isfile(path):
        raise AnalysisSourceError(f"no DuckDB file at {path!r}")
    try:
        con.execute(f"ATTACH {sql_quote(path)} AS {alias} (READ_ONLY)")
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise AnalysisSourceError(
                f"{path!r} is locked by a running sidecar (DuckDB allows one writer process). "
                "Analyse a live sidecar through its admin API, or point --parquet at its "
                "Parquet export directory (storage.export.dir), or copy the file once it stops."
            ) from exc
        raise AnalysisSourceError(f"cannot open {path!r}: {exc}") from exc
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [alias]
    ).fetchall()
    present = {str(r[0]) for r in rows}
    if not present & set(RECORDED_TABLES):
        raise AnalysisSourceError(f"{path!r} holds none of the recorded tables {RECORDED_TABLES}")
    return [name for name in RECORDED_TABLES if name in present]


def _parquet_views(con: duckdb.DuckDBPyConnection, location: str) -> None:
    if os.path.isdir(location):
        roots = [location]
    else:
        matches = sorted(glob.glob(location, recursive=True))
        if not matches:
            raise AnalysisSourceError(f"no Parquet files or directories match {location!r}")
        roots = [m for m in matches if os.path.isdir(m)]
        files = [m for m in matches if os.path.isfile(m)]
        if files and not roots:
            _parquet_files_views(con, files)
            return
    made = 0
    for name in RECORDED_TABLES:
        patterns = [os.path.join(r, f"table={name}", "**", "*.parquet") for r in roots]
        found = [p for p in patterns if glob.glob(p, recursive=True)]
        if not found:
            continue
        listing = "[" + ", ".join(sql_quote(p) for p in found) + "]"
        con.execute(
            f"CREATE VIEW {name} AS SELECT * EXCLUDE (\"table\") FROM read_parquet({listing}, "
            "hive_partitioning = true, union_by_name = true)"
        )
        made += 1
    if not made:
        raise AnalysisSourceError(
            f"{location!r} holds no hive-partitioned tables (expected table=calls/**/*.parquet)"
        )


def _parquet_files_views(con: duckdb.DuckDBPyConnection, files: list[str]) -> None:
    listing = "[" + ", ".join(sql_quote(f) for f in files) + "]"
    con.execute(
        "CREATE VIEW _all_parquet AS SELECT * FROM read_parquet("
        f"{listing}, hive_partitioning = true, union_by_name = true)"
    )
    cols = {str(r[0]) for r in con.execute("DESCRIBE _all_parquet").fetchall()}
    if "table" not in cols:
        raise AnalysisSourceError("Parquet files are not under table=NAME/ partitions")
    names = {str(r[0]) for r in con.execute('SELECT DISTINCT "table" FROM _all_parquet').fetchall()}
    for name in RECORDED_TABLES:
        if name in names:
            con.execute(
                f"CREATE VIEW {name} AS SELECT * EXCLUDE (\"table\") FROM _all_parquet "
                f"WHERE \"table\" = {sql_quote(name)}"
            )


def _reader(path: str) -> str:
    if not os.path.exists(path) and not glob.glob(path):
        raise AnalysisSourceError(f"no input table at {path!r}")
    lower = path.lower()
    if lower.endswith((".csv", ".tsv", ".csv.gz")):
        return f"read_csv({sql_quote(path)}, auto_detect = true)"
    return f"read_parquet({sql_quote(path)})"


def _table_views(con: duckdb.DuckDBPyConnection, path: str, kind: SourceKind | None) -> None:
    con.execute(f"CREATE VIEW input_table AS SELECT * FROM {_reader(path)}")
    described = con.execute("DESCRIBE input_table").fetchall()
    types = {str(r[0]): str(r[1]) for r in described}
    if kind == "experiment":
        _require(types, _EXPERIMENT_COLUMNS, path, kind)
        extra = ", pre_value::DOUBLE AS pre_value" if "pre_value" in types else ""
        # Whole-number ids stay numbers: grouping 10M units by a BIGINT is a quarter cheaper
        # than by its text, and the units are the same.
        unit = ("unit_id" if types["unit_id"] in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT",
                                                  "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")
                else "unit_id::VARCHAR AS unit_id")
        con.execute(
            f"CREATE VIEW experiment_input AS SELECT {unit}, "
            "variant::VARCHAR AS variant, metric::VARCHAR AS metric, "
            f"value::DOUBLE AS value{extra} "
            "FROM input_table"
        )
    elif kind == "divergence":
        _require(types, _DIVERGENCE_COLUMNS, path, kind)
        _divergence_calls_view(con, types)
    else:
        raise AnalysisSourceError(
            "an input table is read for divergence (request_id, backend, role, output) or "
            "experiment (unit_id, variant, metric, value[, pre_value]); "
            "drift needs recorded requests"
        )


def _require(types: dict[str, str], needed: tuple[str, ...], path: str, kind: str) -> None:
    missing = [c for c in needed if c not in types]
    if missing:
        raise AnalysisSourceError(
            f"{path!r} lacks column(s) {', '.join(missing)} needed for a {kind} table "
            f"({', '.join(needed)})"
        )


def _divergence_calls_view(con: duckdb.DuckDBPyConnection, types: dict[str, str]) -> None:
    """Map ``request_id, backend, role, output`` onto the ``calls`` columns analysis reads."""
    out_type = types["output"].upper()
    if out_type.endswith("[]"):
        as_list = "output::DOUBLE[]"
        as_scalar = "NULL::DOUBLE"
    elif out_type in ("VARCHAR", "JSON"):
        as_scalar = "TRY_CAST(output AS DOUBLE)"
        as_list = (
            "CASE WHEN TRY_CAST(output AS DOUBLE) IS NULL THEN TRY_CAST(output AS DOUBLE[]) END"
        )
    else:
        as_scalar = "output::DOUBLE"
        as_list = "NULL::DOUBLE[]"

    def column(name: str, default: str, cast: str) -> str:
        return f"{name}::{cast}" if name in types else f"{default}::{cast}"

    con.execute(
        f"""
        CREATE VIEW calls AS
        SELECT request_id, ts, route, method, backend, backend_version, role, served, status,
               latency_ms, error,
               lst AS output,
               CASE WHEN lst IS NULL THEN scalar ELSE lst[-1] END AS score,
               CASE WHEN lst IS NULL OR len(lst) = 0 THEN NULL
                    ELSE (list_position(lst, list_max(lst)) - 1)::VARCHAR END AS label
        FROM (
            SELECT request_id::VARCHAR AS request_id,
                   {column("ts", "NULL", "TIMESTAMP")} AS ts,
                   {column("route", "'input'", "VARCHAR")} AS route,
                   {column("method", "NULL", "VARCHAR")} AS method,
                   backend::VARCHAR AS backend,
                   {column("backend_version", "NULL", "VARCHAR")} AS backend_version,
                   role::VARCHAR AS role,
                   {"served::BOOLEAN" if "served" in types else "role = 'primary'"} AS served,
                   {column("status", "'OK'", "VARCHAR")} AS status,
                   {column("latency_ms", "NULL", "DOUBLE")} AS latency_ms,
                   {column("error", "NULL", "VARCHAR")} AS error,
                   {as_scalar} AS scalar,
                   {as_list} AS lst
            FROM input_table
        )
        """
    )


def parse_time(value: str | datetime | None, *, now: datetime | None = None) -> datetime | None:
    """Parse an ISO 8601 instant or a relative age (``24h``, ``7d``, ``30m``) into naive UTC.

    Recorded timestamps are naive UTC, so aware values are converted and made naive.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        text = value.strip()
        relative = _RELATIVE.match(text)
        if relative:
            seconds = float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
            base = now or datetime.now(UTC)
            try:
                moment = base - timedelta(seconds=seconds)
            except OverflowError:  # an age beyond year 1 (99999999999999d)
                raise AnalysisSourceError(
                    f"time {value!r} reaches before the year 1: use a smaller age"
                ) from None
        else:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as exc:
                raise AnalysisSourceError(
                    f"cannot read time {value!r}: "
                    "use ISO 8601 (2024-05-01T12:00) or an age (24h, 7d)"
                ) from exc
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # 9999-12-31T23:59-14:00 is past the year 9999 in UTC
            raise AnalysisSourceError(
                f"time {value!r} is outside the years 1-9999 in UTC"
            ) from None
    return moment


def sql_timestamp(moment: datetime) -> str:
    """A SQL TIMESTAMP literal."""
    return f"TIMESTAMP '{moment.isoformat(sep=' ')}'"


def time_filter(
    since: str | datetime | None, until: str | datetime | None, column: str = "ts"
) -> str:
    """Return an SQL condition for ``since <= column < until`` (``TRUE`` when both are open).

    The bounds are parsed by :func:`parse_time` and inlined as timestamp literals, so the
    condition can be repeated in several CTEs without juggling parameters.
    """
    parts: list[str] = []
    start, end = parse_time(since), parse_time(until)
    if start is not None:
        parts.append(f"{column} >= {sql_timestamp(start)}")
    if end is not None:
        parts.append(f"{column} < {sql_timestamp(end)}")
    return " AND ".join(parts) if parts else "TRUE"


#: How a report picks config versions: each route's newest, one named version, or all.
VersionRule = Literal["newest", "given", "all"]


@dataclass(frozen=True)
class VersionScope:
    """Which config versions a report covers, per route, and the SQL condition keeping them.

    ``routes`` maps a route (``"(none)"`` for rows without one) to the versions kept and
    the versions left out; ``condition`` is SQL on the table's ``route`` and
    ``config_version`` columns (qualified by the alias given to :func:`version_scope`).
    """

    rule: VersionRule
    condition: str
    routes: dict[str, dict[str, list[str | None]]] = field(default_factory=dict)
    message: str | None = None
    #: the (route, config_version) pairs kept; None keeps every row (rule "all")
    keep: tuple[tuple[str | None, str | None], ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "routes": {k: dict(v) for k, v in self.routes.items()},
                "message": self.message}

    @property
    def note(self) -> str:
        """One sentence for a report's notes: the rule and what it left out."""
        if self.rule == "all":
            head = "all config versions are included (--all-versions)"
        elif self.rule == "given":
            head = "only rows recorded under the requested config version are included"
        else:
            head = ("each route's newest config version is analysed (--version V or "
                    "--all-versions for others)")
        left = sum(len(v["left_out"]) for v in self.routes.values())
        kept = sorted({str(x) for v in self.routes.values() for x in v["kept"]})
        tail = f"; versions covered: {', '.join(kept) or 'none'}"
        if left:
            tail += f"; {left} older route version(s) left out"
        return head + tail + (f"; {self.message}" if self.message else "")


_NO_ROUTE = "(none)"


def version_scope(
    con: duckdb.DuckDBPyConnection,
    table: str,
    *,
    where: str = "TRUE",
    version: str | None = None,
    all_versions: bool = False,
    alias: str = "",
) -> VersionScope:
    """Pick the config versions of ``table`` (requests or calls) a report covers.

    By default each route keeps its newest version among the rows matching ``where``:
    newest by the time ``configs`` accepted it, else by its first row. ``version`` keeps one
    named version on every route; ``all_versions`` keeps everything (the rule is stated in
    the report either way). A table without ``config_version`` is taken whole.
    """
    if version is not None and all_versions:
        raise ValueError("give either a config version or all versions, not both")
    columns = relation_columns(con, table)
    if "config_version" not in columns or "route" not in columns:
        return VersionScope("all", "TRUE", {}, f"{table} has no config_version: all rows kept")
    accepted = ("LEFT JOIN (SELECT config_version, max(ts) AS accepted FROM configs "
                "GROUP BY 1) c USING (config_version)"
                if "ts" in relation_columns(con, "configs") else "")
    rows = con.execute(f"""
        SELECT route, config_version, {'max(c.accepted)' if accepted else 'NULL'} AS accepted,
               min(t.ts) AS first_ts
        FROM {table} t {accepted} WHERE {where} GROUP BY ALL
    """).fetchall()
    return pick_versions(rows, version=version, all_versions=all_versions, alias=alias)


def pick_versions(
    rows: list[tuple[Any, ...]], *, version: str | None, all_versions: bool, alias: str = "",
) -> VersionScope:
    """The scope from ``(route, config_version, accepted, first_ts)`` rows (any engine)."""
    p = f"{alias}." if alias else ""
    by_route: dict[str | None, list[tuple[Any, ...]]] = {}
    for route, ver, acc, first in rows:
        by_route.setdefault(route, []).append((ver, acc, first))
    routes: dict[str, dict[str, list[str | None]]] = {}
    keep: list[tuple[str | None, str | None]] = []
    for route, found in sorted(by_route.items(), key=lambda kv: (kv[0] is None, kv[0] or "")):
        # Versioned rows beat unversioned ones; then the latest acceptance or first row; at
        # the same instant a recorded acceptance beats a first row, then the larger name (the
        # rows come in no set order: without these a tie picked by chance).
        found.sort(key=lambda f: (f[0] is not None, f[1] or f[2] or datetime.min,
                                  f[1] is not None, str(f[0] or "")),
                   reverse=True)
        versions = [f[0] for f in found]
        if all_versions:
            kept = versions
        elif version is not None:
            kept = [v for v in versions if v == version]
        else:
            kept = versions[:1]
        routes[_NO_ROUTE if route is None else str(route)] = {
            "kept": list(kept), "left_out": [v for v in versions if v not in kept]}
        keep += [(route, v) for v in kept]
    if all_versions:
        return VersionScope("all", "TRUE", routes)

    def literal(value: str | None) -> str:
        return "NULL" if value is None else sql_quote(value)

    condition = " OR ".join(
        f"({p}route IS NOT DISTINCT FROM {literal(r)} AND "
        f"{p}config_version IS NOT DISTINCT FROM {literal(v)})" for r, v in keep
    ) or "FALSE"
    message = None
    if version is not None and not keep:
        message = f"no rows were recorded under config version {version!r}"
    return VersionScope("given" if version is not None else "newest", f"({condition})",
                        routes, message, tuple(keep))
