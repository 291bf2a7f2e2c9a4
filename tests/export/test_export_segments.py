"""Parquet export: hive layout, idempotence across crashes, fleets read as one source."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydantic import ValidationError
from recorded_files import ROUTE, fill_db

from analysis.divergence import analyze_divergence
from analysis.load import RECORDED_TABLES, open_source
from sidecar.demo import build_infer_request, make_demo_models, start_model_server
from sidecar.export import (
    ExportConfig,
    PeriodicExport,
    SegmentExporter,
    default_replica,
)

FillDb = Callable[..., Path]


@pytest.fixture
def filled(tmp_path: Path) -> FillDb:
    def factory(name: str, prefix: str, n: int, **kwargs: Any) -> Path:
        return fill_db(tmp_path / name, prefix, n, **kwargs)

    return factory


def exporter(db: Path, out: Path, replica: str | None = "r1", **kw: Any) -> SegmentExporter:
    settings = ExportConfig(dir=str(out), replica=replica, **kw)
    return SegmentExporter(settings, lambda: duckdb.connect(str(db)), str(db))


def parquet_count(out: Path, table: str, extra: str = "") -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    try:
        return con.execute(
            f"SELECT count(*), count(DISTINCT {extra or 'NULL'}) FROM read_parquet("
            f"'{out}/table={table}/**/*.parquet', hive_partitioning = true)"
        ).fetchall()
    finally:
        con.close()


def db_count(db: Path, table: str) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
    finally:
        con.close()


def test_layout_and_export_twice_has_no_duplicates(filled: FillDb, tmp_path: Path) -> None:
    db = filled("a.duckdb", "a", 40)
    out = tmp_path / "export"
    first = exporter(db, out).export_once()
    assert first.as_dict()["rows"]["calls"] == 80
    assert first.as_dict()["rows"]["requests"] == 40
    files = sorted(Path(f).relative_to(out).as_posix() for f in first.files)
    calls = [f for f in files if f.startswith("table=calls/")]
    assert len(calls) == 2  # two dates, one segment
    for f in calls:
        _table, date, name = f.split("/")
        assert date.startswith("date=") and len(date) == len("date=2024-01-01")
        assert name.startswith("r1-") and name.endswith("-0000000001.parquet")
    assert exporter(db, out).export_once().rows == 0
    rows = parquet_count(out, "calls", "request_id || role")
    assert rows == [(80, 80)]

    fill_db(db, "b", 10, spread_days=1)  # the sidecar restarts and appends
    third = exporter(db, out).export_once()
    assert third.as_dict()["rows"]["calls"] == 20
    assert all(f.endswith("-0000000002.parquet") for f in third.files)
    assert parquet_count(out, "calls", "request_id || role") == [(100, 100)]
    assert parquet_count(out, "requests", "request_id") == [(50, 50)]
    assert parquet_count(out, "audit")[0][0] == db_count(db, "audit") == 2
    assert parquet_count(out, "configs")[0][0] == db_count(db, "configs")


def test_bytes_columns_only_when_asked(filled: FillDb, tmp_path: Path) -> None:
    db = filled("b.duckdb", "b", 5)
    plain, full = tmp_path / "plain", tmp_path / "full"
    exporter(db, plain).export_once()
    con = duckdb.connect()
    cols = {r[0] for r in con.execute(
        f"DESCRIBE SELECT * FROM read_parquet('{plain}/table=calls/**/*.parquet')").fetchall()}
    assert "response_bytes" not in cols and "output" in cols
    # A second exporter on a copy of the file: the watermark lives in the file itself.
    copy = tmp_path / "copy.duckdb"
    fill_db(copy, "b", 5)
    exporter(copy, full, include_bytes=True).export_once()
    got = con.execute(
        f"SELECT count(request_bytes) FROM read_parquet('{full}/table=requests/**/*.parquet')"
    ).fetchall()
    assert got == [(5,)]
    con.close()


class _CrashBeforeWatermark(SegmentExporter):
    """Dies after writing a segment's files, before the watermark moves."""

    def _advance(self, con: duckdb.DuckDBPyConnection, table: str, upper: int) -> None:
        if table == "calls":
            raise RuntimeError("simulated crash")
        super()._advance(con, table, upper)


def test_crash_between_write_and_watermark_rewrites_the_same_files(
    filled: FillDb, tmp_path: Path
) -> None:
    db = filled("c.duckdb", "c", 30)
    out = tmp_path / "export"
    settings = ExportConfig(dir=str(out), replica="r1")
    crashing = _CrashBeforeWatermark(settings, lambda: duckdb.connect(str(db)), str(db))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.export_once()
    before = sorted(p.name for p in (out / "table=calls").rglob("*.parquet"))
    assert before and parquet_count(out, "calls")[0][0] == 60
    fill_db(db, "late", 5)  # rows that arrive between the crash and the restart
    result = exporter(db, out).export_once()
    assert result.as_dict()["segments"]["calls"] == 2  # the interrupted one again + a new one
    assert parquet_count(out, "calls", "request_id || role") == [(70, 70)]
    after = sorted(p.name for p in (out / "table=calls").rglob("*.parquet"))
    assert set(before) <= set(after)
    assert not list(out.rglob(".*tmp*"))


def test_replica_names_are_stable_and_safe(tmp_path: Path) -> None:
    a = default_replica(str(tmp_path / "x.duckdb"))
    assert a == default_replica(str(tmp_path / "x.duckdb"))
    assert a != default_replica(str(tmp_path / "y.duckdb"))
    assert "-" not in a
    with pytest.raises(ValidationError):
        ExportConfig(dir="d", replica="has-dash")
    with pytest.raises(ValidationError):
        ExportConfig.model_validate({"dir": "d", "unknown": 1})
    with pytest.raises(ValueError, match="disabled"):
        SegmentExporter(ExportConfig(), duckdb.connect, "x.duckdb")


def _assert_close(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            _assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and not (math.isnan(a) or math.isnan(b)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), where
    else:
        assert a == b, where


def test_three_replicas_read_as_the_union_of_their_files(
    filled: FillDb, tmp_path: Path
) -> None:
    dbs = [filled(f"rep{i}.duckdb", f"rep{i}", 60 + 10 * i, seed=i) for i in range(3)]
    out = tmp_path / "fleet"
    for db in dbs:  # default replica names: same host, different paths
        exporter(db, out, replica=None).export_once()
    names = {p.name.split("-")[0] for p in (out / "table=calls").rglob("*.parquet")}
    assert len(names) == 3

    union = duckdb.connect()
    for i, db in enumerate(dbs):
        union.execute(f"ATTACH '{db}' AS r{i} (READ_ONLY)").fetchall()
    for table in RECORDED_TABLES:
        parts = " UNION ALL BY NAME ".join(f"SELECT * FROM r{i}.main.{table}" for i in range(3))
        union.execute(f"CREATE VIEW {table} AS {parts}").fetchall()
    expected = analyze_divergence(union, route=ROUTE).to_dict()
    fleet = open_source(parquet=str(out))
    got = analyze_divergence(fleet, route=ROUTE).to_dict()
    assert expected["pairs"] and expected["pairs"][0]["n"] == 60 + 70 + 80
    _assert_close(got, expected)

    plain = duckdb.connect()
    n = plain.execute(
        f"SELECT count(*), count(DISTINCT date), min(\"table\") FROM read_parquet("
        f"'{out}/table=calls/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert n == [(2 * 210, 2, "calls")]
    assert union.execute("SELECT count(*) FROM calls").fetchall() == [(420,)]
    for con in (union, fleet, plain):
        con.close()


async def test_periodic_export_of_a_live_sidecar_and_final_export(
    start_sidecar: Any, channel_to: Any, tmp_path: Path
) -> None:
    primary, shadow = make_demo_models()
    servers = [await start_model_server(primary), await start_model_server(shadow)]
    db, out = tmp_path / "live.duckdb", tmp_path / "export"
    try:
        sc = await start_sidecar(
            {"p": servers[0].target, "s": servers[1].target},
            [{"match": ROUTE, "primary": "p", "codec": "oip", "shadows": [{"backend": "s"}]}],
            db_path=db,
        )
        export = PeriodicExport(ExportConfig(dir=str(out), every_s=0.1, replica="live"), sc.sink)
        export.start()
        stub = channel_to(sc.port).unary_unary(ROUTE)
        for i in range(20):
            await stub(build_infer_request("demo", [0.1 * i] * 8), timeout=5)
        for _ in range(100):  # bounded wait for a periodic export that saw traffic
            if export.last_result is not None and export.last_result.rows:
                break
            await asyncio.sleep(0.05)
        assert export.last_result is not None and export.last_result.rows
        await export.stop()  # before the sink closes
        for i in range(5):
            await stub(build_infer_request("demo", [0.2 * i] * 8), timeout=5)
        await sc.aclose()
        await export.aclose()  # the final export after the final flush
        await export.aclose()
        assert export.failures == 0
        assert parquet_count(out, "calls", "request_id || role") == [(50, 50)]
        assert parquet_count(out, "requests")[0][0] == db_count(db, "requests") == 25
    finally:
        for server in servers:
            await server.aclose()
