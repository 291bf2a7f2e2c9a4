"""Where a report's row work runs: embedded DuckDB (the default) or Spark over the fleet export.

Both engines are reached through Ibis (docs/engines.md): a report's row work is written
once as Ibis expressions that reduce rows to sufficient statistics (sizes per variant, per
backend, per bin), and the same expression runs on DuckDB or on Spark. ``ibis`` and
``pyspark`` are imported here on first use only: ``sidecar serve`` never loads them.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from analysis.load import RECORDED_TABLES, AnalysisSourceError
from analysis.progress import wants_progress

if TYPE_CHECKING:
    import duckdb
    import ibis.expr.types as ir
    from ibis.backends import BaseBackend

__all__ = [
    "ENGINES",
    "Engine",
    "EngineName",
    "EngineUnsupported",
    "duckdb_engine",
    "memory_limit_bytes",
    "size_mb",
    "spark_engine",
    "spark_memory",
    "spark_session",
]

EngineName = Literal["duckdb", "spark"]
ENGINES: tuple[EngineName, ...] = ("duckdb", "spark")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_UNIT_MB = {"": 1 / 2**20, "b": 1 / 2**20, "k": 1 / 1024, "kb": 1 / 1024, "kib": 1 / 1024,
            "m": 1, "mb": 1, "mib": 1, "g": 1024, "gb": 1024, "gib": 1024,
            "t": 2**20, "tb": 2**20, "tib": 2**20}


class EngineUnsupported(Exception):
    """This report (or part of it) runs on the DuckDB engine only: the message says which."""


@dataclass
class Engine:
    """One engine with the recorded tables of one source as Ibis tables.

    ``con`` is the DuckDB connection of the DuckDB engine (the views of
    :func:`analysis.load.open_source`); the Spark engine has none.
    """

    name: EngineName
    #: the Ibis backend that runs expressions (Spark); DuckDB's are compiled to SQL and run
    #: on ``con`` directly
    backend: BaseBackend | None
    con: duckdb.DuckDBPyConnection | None = None
    _tables: dict[str, ir.Table] = field(default_factory=dict)
    #: the Spark session that runs the compiled SQL (Spark engine)
    session: Any = None
    #: Spark frames kept by :meth:`materialize`, by view name
    _persisted: dict[str, Any] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.names()

    def names(self) -> set[str]:
        if self.name == "spark":
            return set(self._tables)
        from analysis.load import relations

        assert self.con is not None
        return relations(self.con) & set(RECORDED_TABLES) | (
            {"experiment_input"} & relations(self.con))

    def table(self, name: str) -> ir.Table:
        if name not in self._tables:
            if not self.has(name):
                raise AnalysisSourceError(f"the source has no {name} table")
            if self.con is not None:
                self._tables[name] = _duckdb_table(self.con, name)
            else:
                assert self.backend is not None
                self._tables[name] = self.backend.table(name)
        return self._tables[name]

    def _sql(self, expr: ir.Expr) -> str:
        import ibis

        return str(ibis.to_sql(expr, dialect="duckdb"))

    def columns(self, name: str) -> set[str]:
        """Column names of a table; empty when there is none."""
        return set(self.table(name).columns) if self.has(name) else set()

    def scalar(self, expr: ir.Scalar) -> Any:
        """One value computed by the engine."""
        if self.con is not None:
            row = self.con.execute(self._sql(expr)).fetchone()
            return None if row is None else row[0]
        rows = self._spark_rows(expr.as_table())
        return next(iter(rows[0].values())) if rows else None

    def rows(self, expr: ir.Table) -> list[dict[str, Any]]:
        """A small result (sufficient statistics) as plain Python rows."""
        if self.con is not None:  # the connection's own cursor: no pandas, no arrow
            cursor = self.con.execute(self._sql(expr))
            names = [d[0] for d in cursor.description or []]
            return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
        return self._spark_rows(expr)

    def materialize(self, expr: ir.Table, name: str, *, append: bool = False) -> ir.Table:
        """``expr`` computed once and kept as table ``name`` (DuckDB: a temporary table, which
        spills past the memory limit; Spark: a view persisted on disk), so reductions that
        read it again do not repeat the joins and windows behind it. :meth:`drop` frees it.
        ``append`` (DuckDB) adds the rows to the table of an earlier call, by column name."""
        if self.con is not None:
            import ibis

            into = (f'INSERT INTO "{name}" BY NAME' if append
                    else f'CREATE OR REPLACE TEMP TABLE "{name}" AS')
            self.con.execute(f"{into} {self._sql(expr)}")
            return ibis.table(expr.schema(), name=name)
        if append:
            raise EngineUnsupported("appending to a materialized table runs on DuckDB only")
        assert self.backend is not None and self.session is not None
        from pyspark import StorageLevel

        frame = self.session.sql(str(self.backend.compile(expr)))
        frame.persist(StorageLevel.DISK_ONLY)
        frame.createOrReplaceTempView(name)
        self._persisted[name] = frame
        return self.backend.table(name)

    def drop(self, name: str) -> None:
        """Free a table of :meth:`materialize`."""
        if self.con is not None:
            self.con.execute(f'DROP TABLE IF EXISTS "{name}"')
        elif name in self._persisted:
            self._persisted.pop(name).unpersist()
            self.session.catalog.dropTempView(name)

    def _spark_rows(self, expr: ir.Table) -> list[dict[str, Any]]:
        # Spark runs the SQL Ibis compiles; the few rows come back as Row objects (no
        # pandas on the way: the result is a handful of sums).
        assert self.backend is not None and self.session is not None
        sql = str(self.backend.compile(expr))
        return [row.asDict() for row in self.session.sql(sql).collect()]


def duckdb_engine(con: duckdb.DuckDBPyConnection) -> Engine:
    """The embedded engine over an open source's connection (its views stay as they are):
    expressions are compiled to DuckDB SQL and run on ``con`` itself."""
    return Engine("duckdb", None, con)


def _duckdb_table(con: duckdb.DuckDBPyConnection, name: str) -> ir.Table:
    """An Ibis table bound by name to a view of ``con``, typed from DESCRIBE."""
    import ibis
    from ibis.backends.sql.datatypes import DuckDBType

    schema = {}
    for column, kind, *_ in con.execute(f'DESCRIBE "{name}"').fetchall():
        try:
            schema[str(column)] = DuckDBType.from_string(str(kind))
        except Exception:  # a type Ibis cannot name: the row work never reads such a column
            continue
    return ibis.table(schema, name=name)


def size_mb(limit: str) -> float:
    """A size as ``--memory-limit`` takes it (``1GB``, ``1500MB``) or DuckDB prints it
    (``572.2 MiB``), in MiB."""
    found = _SIZE.match(limit)
    if not found or found.group(2).lower() not in _UNIT_MB:
        raise AnalysisSourceError(f"--memory-limit: cannot read {limit!r}; use e.g. 1GB or 800MB")
    return float(found.group(1)) * _UNIT_MB[found.group(2).lower()]


def memory_limit_bytes(con: Any) -> float:
    """A DuckDB connection's ``memory_limit`` in bytes (the cap numpy work is sized by)."""
    return size_mb(str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
                   ) * 2**20


def spark_memory(limit: str | None) -> str | None:
    """``--memory-limit`` (``1GB``, ``1500MB``) as a JVM size (``1024m``), None to keep
    Spark's default."""
    if not limit:
        return None
    mb = size_mb(limit)
    if mb < 64:
        raise AnalysisSourceError("--memory-limit: Spark needs at least 64MB")
    return f"{int(mb)}m"


def spark_session(master: str | None = None, memory_limit: str | None = None) -> Any:
    """A Spark session: Spark Connect for ``sc://`` (``--spark-master`` or ``SPARK_REMOTE``),
    else a cluster master URL, else ``local[*]`` in this process's own JVM.

    In local mode ``memory_limit`` is the driver's heap (the JVM where the work runs); it
    applies only when this call starts the JVM.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise EngineUnsupported(
            "--engine spark needs pyspark: pip install 'shadowcar[spark]'") from exc
    remote = master if master and master.startswith("sc://") else (
        None if master else os.environ.get("SPARK_REMOTE"))
    if remote:
        return SparkSession.builder.remote(remote).getOrCreate()
    local = not master or master.startswith("local")
    if local:  # a local JVM listens on loopback only (never on the host's other addresses)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (SparkSession.builder.master(master or "local[*]").appName("shadowcar-report")
               .config("spark.ui.enabled", "false")
               # Spark's own bar (on stderr) only on a terminal: nothing on a pipe
               .config("spark.ui.showConsoleProgress", str(wants_progress()).lower())
               .config("spark.sql.session.timeZone", "UTC")  # recorded times are naive UTC
               .config("spark.sql.shuffle.partitions", "8")
               .config("spark.sql.ansi.enabled", "false"))
    memory = spark_memory(memory_limit)
    if memory:
        builder = builder.config("spark.driver.memory", memory)
    if local:
        builder = (builder.config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1"))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def spark_engine(
    session: Any, *, parquet: str | None = None, table: str | None = None,
    kind: str | None = None,
) -> Engine:
    """The recorded tables of a fleet export (``parquet``: the directory of
    docs/fleet-data.md) or an analyst's experiment table (``table``) as Spark views."""
    import ibis

    backend = ibis.pyspark.connect(session)
    found: dict[str, ir.Table] = {}
    if parquet:
        if not os.path.isdir(parquet):
            raise AnalysisSourceError(
                f"--engine spark reads an export directory (DIR/table=NAME/date=...): "
                f"{parquet!r} is not a directory")
        for name in RECORDED_TABLES:
            where = os.path.join(parquet, f"table={name}")
            if not glob.glob(os.path.join(where, "**", "*.parquet"), recursive=True):
                continue
            frame = (session.read.option("mergeSchema", "true").option("basePath", where)
                     .parquet(where))
            # ``date`` is the partition directory: not a recorded column.
            frame = frame.drop("date") if "date" in frame.columns else frame
            view = f"shadowcar_{name}"
            frame.createOrReplaceTempView(view)
            found[name] = backend.table(view)
        if not found:
            raise AnalysisSourceError(
                f"{parquet!r} holds no hive-partitioned tables (expected table=calls/**/*.parquet)")
    elif table:
        if kind != "experiment":
            raise EngineUnsupported(
                "--engine spark reads an analyst table (--input) for the experiment report only")
        found["experiment_input"] = _spark_input(session, backend, table)
    else:
        raise EngineUnsupported(
            "--engine spark reads a fleet export (--parquet DIR) or an analyst table "
            "(--input FILE); a DuckDB file (--db) is read by --engine duckdb")
    return Engine("spark", backend, None, found, session)


def _spark_input(session: Any, backend: BaseBackend, path: str) -> ir.Table:
    if not os.path.exists(path) and not glob.glob(path):
        raise AnalysisSourceError(f"no input table at {path!r}")
    lower = path.lower()
    if lower.endswith((".csv", ".tsv", ".csv.gz")):
        frame = session.read.option("header", "true").option("inferSchema", "true").csv(path)
    else:
        frame = session.read.parquet(path)
    missing = [c for c in ("unit_id", "variant", "metric", "value") if c not in frame.columns]
    if missing:
        raise AnalysisSourceError(
            f"{path!r} lacks column(s) {', '.join(missing)} needed for a experiment table "
            "(unit_id, variant, metric, value)")
    frame.createOrReplaceTempView("shadowcar_input_raw")
    raw = backend.table("shadowcar_input_raw")
    columns = {"unit_id": raw.unit_id.cast("string"), "variant": raw.variant.cast("string"),
               "metric": raw.metric.cast("string"), "value": raw.value.cast("float64")}
    if "pre_value" in raw.columns:
        columns["pre_value"] = raw.pre_value.cast("float64")
    return raw.select(**columns)
