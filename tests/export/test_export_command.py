"""``sidecar export``: a stopped sidecar's DuckDB file joins a fleet directory, read by the
reports as the file itself was; a file a sidecar still writes is refused with the way to
export it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from recorded_files import ROUTE, fill_db

from analysis.divergence import analyze_divergence
from analysis.load import open_source
from sidecar.cli import main
from sidecar.exit_codes import EXIT_DATA, EXIT_USAGE


def _divergence(**source: str) -> dict[str, object]:
    con = open_source(**source)
    try:
        return analyze_divergence(con, route=ROUTE).to_dict()
    finally:
        con.close()


def _same(a: object, b: object, where: str = "$") -> None:
    """Equal reports; floats to the last bits a different summation order moves."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), where
    else:
        assert a == b, where


def test_a_stopped_file_exported_gives_the_same_report(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    db = fill_db(tmp_path / "replica.duckdb", "a", 300)
    fleet = tmp_path / "fleet"
    assert main(["export", "--db", str(db), "--dir", str(fleet), "--replica", "old_1"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("exported ") and str(fleet) in said
    assert {"table=calls", "table=requests"} <= {p.name for p in fleet.iterdir()}
    assert all("old_1" in f.name for f in fleet.rglob("*.parquet"))
    from_file = _divergence(db=str(db))
    from_fleet = _divergence(parquet=str(fleet))
    for report in (from_file, from_fleet):
        report.pop("source", None)
    _same(from_fleet, from_file)
    # Again: the watermark in the file says everything went out already.
    files = sorted(fleet.rglob("*.parquet"))
    assert main(["export", "--db", str(db), "--dir", str(fleet), "--replica", "old_1"]) == 0
    assert "nothing new" in capsys.readouterr().err
    assert sorted(fleet.rglob("*.parquet")) == files


def test_a_file_in_use_or_missing_is_refused_with_the_way_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = fill_db(tmp_path / "live.duckdb", "b", 20)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)", str(db)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code = main(["export", "--db", str(db), "--dir", str(tmp_path / "fleet")])
    finally:
        holder.kill()
        holder.communicate()
    assert code == EXIT_DATA
    assert "storage.export.dir" in capsys.readouterr().err
    assert not (tmp_path / "fleet").exists()
    assert main(["export", "--db", str(tmp_path / "none.duckdb"), "--dir",
                 str(tmp_path / "fleet")]) == EXIT_DATA
    assert "no such file" in capsys.readouterr().err
    assert main(["export", "--db", str(db), "--dir", str(tmp_path / "fleet"), "--replica",
                 "a-b"]) == EXIT_USAGE  # '-' separates a segment's name parts
    assert "replica" in capsys.readouterr().err
