"""Opening sources: DuckDB files (read-only, locked), Parquet exports and analyst tables."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from analysis.divergence import analyze_divergence
from analysis.load import AnalysisSourceError, open_source, parse_time, time_filter
from sidecar.sink.schema import migrate


def _db(path: Path, n: int = 200) -> str:
    """A recorded file: one primary, one shadow, configs; scores differ by a seeded noise."""
    con = duckdb.connect(str(path))
    migrate(con)
    con.execute(f"""
        INSERT INTO calls (request_id, ts, route, backend, role, served, status, latency_ms,
                           score, label, output)
        SELECT 'q' || i, TIMESTAMP '2024-05-01' + to_seconds(i), '/r', b, role, role = 'primary',
               'OK', 1 + (hash(i || b) % 100) / 10.0, sc, (sc > 0.5)::INT::VARCHAR, [1 - sc, sc]
        FROM range({n}) t(i),
             LATERAL (SELECT * FROM (VALUES ('p1', 'primary', (hash(i) % 997) / 997.0),
                     ('s1', 'shadow', ((hash(i) % 997) / 997.0 + (hash(i * 31) % 13) / 300.0)
                      / 1.05))) v(b, role, sc)
    """)
    con.execute("INSERT INTO requests (request_id, ts, route) "
                "SELECT 'q' || i, TIMESTAMP '2024-05-01' + to_seconds(i), '/r' FROM range(?) t(i)",
                [n])
    con.execute("INSERT INTO configs VALUES ('v1', TIMESTAMP '2024-05-01', ?)",
                [json.dumps({"routes": [{"match": "/r", "shadows": [{"backend": "s1"}]}]})])
    con.close()
    return str(path)


def _export(db: str, out: Path) -> None:
    """Write each table as hive-partitioned Parquet, as the sink's exporter lays it out."""
    con = duckdb.connect(db, read_only=True)
    for table in ("calls", "requests", "configs"):
        target = out / f"table={table}" / "date=2024-05-01"
        target.mkdir(parents=True)
        con.execute(f"COPY {table} TO '{target / 'part-0.parquet'}' (FORMAT parquet)")
    con.close()


def test_db_opens_read_only_with_views(tmp_path: Path) -> None:
    con = open_source(db=_db(tmp_path / "a.duckdb"))
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() "
                                       "WHERE NOT internal").fetchall()}
    assert {"calls", "requests", "configs", "outcomes", "audit"} <= views
    assert con.execute("SELECT count(*) FROM calls").fetchone() == (400,)
    with pytest.raises(duckdb.Error):
        con.execute("INSERT INTO src.main.audit (actor) VALUES ('x')")


def test_locked_file_gives_clear_error(tmp_path: Path) -> None:
    path = _db(tmp_path / "live.duckdb")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, duckdb
            con = duckdb.connect({path!r})
            con.execute("INSERT INTO audit (actor) VALUES ('writer')")
            print("ready", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(AnalysisSourceError) as caught:
            open_source(db=path)
        message = str(caught.value)
        assert "locked" in message and "admin API" in message and "--parquet" in message
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(AnalysisSourceError, match="exactly one"):
        open_source()
    with pytest.raises(AnalysisSourceError, match="exactly one"):
        open_source(db="a", parquet="b")
    with pytest.raises(AnalysisSourceError, match="no DuckDB file"):
        open_source(db=str(tmp_path / "missing.duckdb"))
    empty = tmp_path / "other.duckdb"
    duckdb.connect(str(empty)).close()
    with pytest.raises(AnalysisSourceError, match="none of the recorded tables"):
        open_source(db=str(empty))
    with pytest.raises(AnalysisSourceError, match="no Parquet"):
        open_source(parquet=str(tmp_path / "nothing-*"))
    (tmp_path / "flat").mkdir()
    with pytest.raises(AnalysisSourceError, match="hive-partitioned"):
        open_source(parquet=str(tmp_path / "flat"))


def test_parquet_directory_equals_duckdb_file(tmp_path: Path) -> None:
    db = _db(tmp_path / "a.duckdb")
    _export(db, tmp_path / "export")
    from_db = analyze_divergence(open_source(db=db)).to_dict()
    from_dir = analyze_divergence(open_source(parquet=str(tmp_path / "export"))).to_dict()
    assert from_dir == from_db
    assert from_db["pairs"][0]["n"] == 200
    files = str(tmp_path / "export" / "**" / "*.parquet")
    from_glob = analyze_divergence(open_source(parquet=files)).to_dict()
    assert from_glob == from_db
    dirs = analyze_divergence(open_source(parquet=str(tmp_path / "exp*"))).to_dict()
    assert dirs == from_db


def test_divergence_input_table_maps_outputs(tmp_path: Path) -> None:
    rows = pd.DataFrame({
        "request_id": ["a", "a", "b", "b", "c", "c"],
        "backend": ["m1", "m2"] * 3,
        "role": ["primary", "shadow"] * 3,
        "output": ["0.25", "0.5", "[0.1, 0.7, 0.2]", "[0.6, 0.3, 0.1]", "1.5", "1.0"],
    })
    csv = tmp_path / "pairs.csv"
    rows.to_csv(csv, index=False)
    con = open_source(table=str(csv), kind="divergence")
    got = con.execute("SELECT request_id, backend, score, label, output FROM calls "
                      "ORDER BY request_id, backend").fetchall()
    assert got[0] == ("a", "m1", 0.25, None, None)
    assert got[2] == ("b", "m1", 0.2, "1", [0.1, 0.7, 0.2])
    assert got[3] == ("b", "m2", 0.1, "0", [0.6, 0.3, 0.1])
    report = analyze_divergence(con).to_dict()
    assert report["pairs"][0]["n"] == 3
    parquet = tmp_path / "scalars.parquet"
    scalars = pd.DataFrame({"request_id": ["x", "x"], "backend": ["m1", "m2"],
                            "role": ["primary", "shadow"], "output": [1.0, 2.0]})
    scalars.to_parquet(parquet)
    con = open_source(table=str(parquet), kind="divergence")
    assert con.execute("SELECT score, label FROM calls ORDER BY backend").fetchall() == [
        (1.0, None), (2.0, None)]


def test_experiment_input_table(tmp_path: Path) -> None:
    frame = pd.DataFrame({"unit_id": [1, 2], "variant": ["control", "treat"],
                          "metric": ["clicks", "clicks"], "value": [1, 0],
                          "pre_value": [0.5, 0.25]})
    path = tmp_path / "exp.parquet"
    frame.to_parquet(path)
    con = open_source(table=str(path), kind="experiment")
    # whole-number unit ids stay numbers (cheaper to group: issue 19)
    assert con.execute("SELECT * FROM experiment_input ORDER BY unit_id").fetchall() == [
        (1, "control", "clicks", 1.0, 0.5), (2, "treat", "clicks", 0.0, 0.25)]
    frame.drop(columns=["metric"]).to_parquet(path)
    with pytest.raises(AnalysisSourceError, match="metric"):
        open_source(table=str(path), kind="experiment")
    with pytest.raises(AnalysisSourceError, match="drift needs recorded requests"):
        open_source(table=str(path), kind="drift")
    with pytest.raises(AnalysisSourceError, match="no input table"):
        open_source(table=str(tmp_path / "none.csv"), kind="experiment")


def test_parse_time_and_filter() -> None:
    now = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
    assert parse_time("24h", now=now) == datetime(2024, 5, 1, 12, 0)
    assert parse_time("7d", now=now) == datetime(2024, 4, 25, 12, 0)
    assert parse_time("2024-05-01T10:00:00Z") == datetime(2024, 5, 1, 10, 0)
    assert parse_time("2024-05-01T12:00:00+02:00") == datetime(2024, 5, 1, 10, 0)
    assert parse_time(None) is None
    with pytest.raises(AnalysisSourceError, match="ISO 8601"):
        parse_time("yesterday")
    assert time_filter(None, None) == "TRUE"
    condition = time_filter("2024-05-01", datetime(2024, 5, 2))
    con = duckdb.connect()
    ts = [datetime(2024, 5, 1) + timedelta(hours=h) for h in (-1, 0, 23, 24)]
    con.execute("CREATE TABLE t AS SELECT unnest(?::TIMESTAMP[]) AS ts", [ts])
    kept = con.execute(f"SELECT count(*) FROM t WHERE {condition}").fetchone()
    assert kept == (2,)


def test_the_newest_version_is_picked_the_same_whatever_the_row_order() -> None:
    """A version accepted (configs) at the instant another's first row was recorded: the
    pick must not depend on the order the engine returns the rows in (it did: the fields
    report of test_pairing's data kept the older version about one run in six)."""
    from datetime import datetime

    from analysis.load import pick_versions

    at = datetime(2025, 12, 31)
    accepted = ("/r", "c1", at, datetime(2026, 1, 1))
    inferred = ("/r", "c0", None, at)  # no configs row: its first call's time
    other = ("/r", "b9", None, at)
    picks = set()
    for rows in ([accepted, inferred, other], [inferred, other, accepted],
                 [other, accepted, inferred]):
        scope = pick_versions(rows, version=None, all_versions=False)
        picks.add(tuple(scope.routes["/r"]["kept"]))
    assert picks == {("c1",)}
    ties = {tuple(pick_versions(rows, version=None, all_versions=False).routes["/r"]["kept"])
            for rows in ([inferred, other], [other, inferred])}
    assert ties == {("c0",)}  # same instant, neither accepted: the larger name, always
