"""The ``report`` command: exit codes, messages without tracebacks, outputs and mounting."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from analysis.cli import add_report_parser, main, run_report
from sidecar.sink.schema import migrate


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cli") / "rec.duckdb"
    con = duckdb.connect(str(path))
    migrate(con)
    con.execute("""
        INSERT INTO calls (request_id, ts, route, backend, role, served, status, latency_ms, score)
        SELECT 'q' || i, TIMESTAMP '2024-01-01' + to_seconds(i), '/r', b, role,
               role = 'primary', 'OK', 3.0 + i % 7, sc
        FROM range(120) t(i), LATERAL (SELECT * FROM (VALUES
            ('p', 'primary', (hash(i) % 100) / 100.0),
            ('s', 'shadow', (hash(i) % 100) / 100.0 + 0.01))) v(b, role, sc)
    """)
    con.execute("""
        INSERT INTO requests (request_id, ts, route, inputs)
        SELECT 'q' || i, TIMESTAMP '2024-01-01' + to_seconds(i), '/r',
               [{'name': 'x', 'datatype': 'FP64', 'shape': [1], 'data': [i / 10], 'text': NULL}]
        FROM range(120) t(i)
    """)
    con.close()
    return str(path)


def test_divergence_json_to_stdout(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "divergence", "--db", db, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schema"] == "shadowcar.report.divergence/2"
    assert report["pairs"][0]["n"] == 120
    assert report["pairs"][0]["numeric"]["mean_diff"] == pytest.approx(0.01)


def test_tolerances_and_route_reach_the_analysis(db: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "divergence", "--db", db, "--format", "json", "--atol", "0.02",
                 "--route", "/r", "--since", "2024-01-01T00:00:30"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"]["atol"] == 0.02
    assert report["pairs"][0]["numeric"]["out_of_tolerance"] == 0.0
    assert report["pairs"][0]["n"] == 90


def test_html_and_table_to_file(db: str, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "div.html"
    assert main(["report", "divergence", "--db", db, "--format", "html", "-o", str(out)]) == 0
    assert "<svg" in out.read_text()
    table = tmp_path / "drift.txt"
    assert main(["report", "drift", "--db", db, "-o", str(table)]) == 0
    assert "Input drift per feature" in table.read_text()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["report", "drift", "--input", "x.csv"], "drift reads recorded requests"),
        (["report", "divergence", "--db", "DB", "--since", "last tuesday"], "ISO 8601"),
        (["report", "divergence", "--db", "DB", "--atol", "-1"], "--atol"),
        (["report", "experiment", "--db", "DB", "--weights", "control50"], "--weights"),
        (["report", "experiment", "--db", "DB", "--winsorize", "0.2"], "--winsorize"),
        (["report", "divergence", "--db", "DB", "--segment", "nope"], "segment"),
    ],
)
def test_bad_input_exits_2_with_message(db: str, capsys: pytest.CaptureFixture[str],
                                        argv: list[str], needle: str) -> None:
    argv = [db if a == "DB" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["report", "divergence", "--db", "/nonexistent.duckdb"], "no DuckDB file"),
        (["report", "divergence", "--parquet", "/nonexistent-dir-*"], "no Parquet"),
    ],
)
def test_unreadable_source_exits_3_with_message(capsys: pytest.CaptureFixture[str],
                                                argv: list[str], needle: str) -> None:
    """Issue 15.7: a source that cannot be read is 3, not the usage code 2."""
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["report", "divergence"], ["report", "nope", "--db", "x"],
                 ["report", "divergence", "--db", "x", "--format", "pdf"],
                 ["report", "divergence", "--db", "x", "--parquet", "y"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_experiment_from_input_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("analysis.experiment")
    frame = pd.DataFrame({"unit_id": [f"u{i}" for i in range(40)],
                          "variant": ["control", "treat"] * 20, "metric": "clicks",
                          "value": [float(i % 3) for i in range(40)]})
    path = tmp_path / "exp.csv"
    frame.to_csv(path, index=False)
    code = main(["report", "experiment", "--input", str(path), "--format", "json",
                 "--weights", "control=50,treat=50"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert report["schema"] == "shadowcar.report.experiment/2"


def test_mounts_under_another_parser(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="sidecar")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve")
    add_report_parser(sub)
    args = parser.parse_args(["report", "divergence", "--db", db, "--format", "json"])
    assert args.handler is run_report
    assert run_report(args) == 0
    assert json.loads(capsys.readouterr().out)["pairs"]


def test_python_dash_m_analysis(db: str) -> None:
    done = subprocess.run([sys.executable, "-m", "analysis", "report", "divergence", "--db",
                           "/nonexistent.duckdb"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "no DuckDB file" in done.stderr and "Traceback" not in done.stderr


def test_package_exports_public_api() -> None:
    import analysis

    for name in analysis.__all__:
        if name in ("ExperimentReport", "analyze_experiments"):
            pytest.importorskip("analysis.experiment")
        assert getattr(analysis, name) is not None
    with pytest.raises(AttributeError):
        analysis.no_such_name  # noqa: B018


def test_quality_and_fields_reports_from_the_cli(tmp_path) -> None:
    """`report quality` scores models on outcome labels; `report fields` says when there is
    no decoded JSON to compare."""
    import datetime as dt
    import json as _json
    import subprocess
    import sys

    import duckdb as _duckdb

    from sidecar.sink.schema import migrate

    db = tmp_path / "q.duckdb"
    con = _duckdb.connect(str(db))
    migrate(con)
    now = dt.datetime(2026, 1, 1)
    rng = __import__("numpy").random.default_rng(0)
    for i in range(200):
        label = int(rng.random() < 0.5)
        score = min(max(0.5 + (0.3 if label else -0.3) + rng.normal(0, 0.2), 0.01), 0.99)
        con.execute("INSERT INTO calls (request_id, ts, route, backend, role, served, status, "
                    "score) VALUES (?, ?, 'r', 'p', 'primary', true, 'OK', ?)",
                    [f"q{i}", now, score]).fetchall()
        con.execute("INSERT INTO outcomes (event_id, request_id, metric, value, ts) VALUES "
                    "(?, ?, 'label', ?, ?)", [f"e{i}", f"q{i}", label, now]).fetchall()
    con.close()
    out = subprocess.run([sys.executable, "-m", "sidecar", "report", "quality", "--db", str(db),
                          "--format", "json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = _json.loads(out.stdout)
    assert report["schema"] == "shadowcar.report.quality/1"
    (model,) = report["models"]
    assert model["n"] == 200 and model["auc"] > 0.8
    out = subprocess.run([sys.executable, "-m", "sidecar", "report", "fields", "--db", str(db)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no primary/shadow pair" in out.stdout or "no pairs" in out.stdout
    for fmt, check in (("json", lambda t: _json.loads(t)["schema"] == "shadowcar.report.fields/1"),
                       ("html", lambda t: t.lstrip().lower().startswith("<!doctype html"))):
        out = subprocess.run([sys.executable, "-m", "sidecar", "report", "fields", "--db",
                              str(db), "--format", fmt], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and check(out.stdout), (fmt, out.stderr)


def test_drift_report_checks_the_contracts_ranges(tmp_path) -> None:
    """`report drift --contract FILE` flags values outside a feature's declared range."""
    import datetime as dt
    import json as _json
    import subprocess
    import sys

    import duckdb as _duckdb
    import yaml as _yaml

    from sidecar.sink.schema import migrate

    db = tmp_path / "d.duckdb"
    con = _duckdb.connect(str(db))
    migrate(con)
    start = dt.datetime(2026, 1, 1)
    for i in range(200):
        value = 0.5 if i < 100 else 5.0  # the current window leaves the range
        con.execute(
            "INSERT INTO requests (request_id, ts, route, inputs) VALUES (?, ?, 'r', "
            "[{'name': 'x', 'datatype': 'FP32', 'shape': [1, 1], 'data': [?], 'text': NULL}])",
            [f"r{i}", start + dt.timedelta(seconds=i), value]).fetchall()
    con.close()
    contract = tmp_path / "c.yaml"
    contract.write_text(_yaml.safe_dump({
        "name": "c", "version": "1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1],
                    "features": [{"index": 0, "name": "amount", "range": [0, 1]}]}]}))
    out = subprocess.run([sys.executable, "-m", "sidecar", "report", "drift", "--db", str(db),
                          "--contract", str(contract), "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    features = _json.loads(out.stdout)["features"]
    (feature,) = [f for f in features if f["feature"] in ("x", "x[0]")]
    text = _json.dumps(feature)
    assert "out_of_range" in text or "range" in text
    assert any("range" in flag for flag in feature.get("flags", [])), feature
