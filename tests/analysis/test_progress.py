"""Issue 19.4: a long report draws a progress bar on a terminal and nothing on a pipe."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest

import analysis.progress as progress
from analysis.load import open_source

_LONG = ("SELECT count(*) FROM (SELECT i % 1000003 AS k, sum(i) FROM range(60000000) t(i) "
         "GROUP BY 1)")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = true")
    con.execute("SET enable_progress_bar_print = false")
    return con


def test_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19.4: on a terminal the running query's progress is drawn (and cleared)."""
    monkeypatch.setattr(progress, "_GRACE_S", 0.0)
    screen = _Terminal()
    con = _con()
    with progress.query_progress_bar(con, "report divergence", screen):
        con.execute(_LONG).fetchall()
    assert "report divergence" in screen.getvalue()
    assert not [t for t in threading.enumerate() if t.name == "report-progress"]


def test_nothing_on_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 19.4: a stream that is not a terminal gets nothing and no thread starts."""
    monkeypatch.setattr(progress, "_GRACE_S", 0.0)
    pipe = io.StringIO()
    con = _con()
    with progress.query_progress_bar(con, "report divergence", pipe):
        assert not [t for t in threading.enumerate() if t.name == "report-progress"]
        con.execute(_LONG).fetchall()
    assert pipe.getvalue() == ""


def test_sources_measure_progress_without_printing_it(tmp_path: Path) -> None:
    """Issue 19.4: DuckDB's own bar never prints (it would reach stdout); the CLI on a pipe
    writes the report and nothing else."""
    con = open_source(table=str(_units(tmp_path)), kind="experiment")
    assert con.execute("SELECT current_setting('enable_progress_bar_print')").fetchone() == (
        False,)
    done = subprocess.run([sys.executable, "-m", "analysis", "report", "experiment", "--input",
                           str(_units(tmp_path)), "--format", "json"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.lstrip().startswith("{")


def _units(tmp_path: Path) -> Path:
    path = tmp_path / "units.csv"
    if not path.exists():
        rows = ["unit_id,variant,metric,value"] + [
            f"u{i},{'ab'[i % 2]},m,{i % 7}" for i in range(200)]
        path.write_text("\n".join(rows) + "\n")
    return path
