"""Issue 16: the statistics options of ``report`` reach the analyses, bad values exit 2."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import duckdb
import pytest

from analysis.cli import main
from sidecar.sink.schema import migrate

T0 = datetime(2026, 4, 1)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cli") / "stats.duckdb"
    con = duckdb.connect(str(path))
    migrate(con)
    con.executemany(
        "INSERT INTO requests (request_id, ts, unit_id, experiment, variant, exposed, "
        "config_version) VALUES (?, ?, ?, 'e', ?, true, ?)",
        [(f"r{i}", T0 + timedelta(minutes=i), f"u{i}", ["control", "treat"][i % 2],
          "v1" if i < 20 else "v2") for i in range(200)])
    con.executemany(
        "INSERT INTO outcomes (event_id, unit_id, metric, value, ts) VALUES (?, ?, ?, ?, ?)",
        [(f"e{i}{m}", f"u{i}", m, float((i * 7 + len(m)) % 5 + 1),
          T0 + timedelta(minutes=i, hours=h))
         for i in range(200) for m, h in (("clicks", 1), ("views", 2), ("clicks", -24))])
    con.close()
    return str(path)


def test_experiment_options_reach_the_report(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["report", "experiment", "--db", db, "--format", "json", "--window", "7d",
                 "--cuped", "--cuped-lookback", "2d", "--alpha", "0.1", "--ratio",
                 "ctr=clicks/views", "--ratio", "clicks/views", "--sequential",
                 "--expected-n", "1000", "--all-versions"])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads(out.out)
    settings = report["settings"]
    assert settings["alpha"] == 0.1 and settings["window"] == "7d"
    assert settings["cuped"] is True and settings["cuped_lookback"] == "2d"
    assert settings["sequential_tuning"] == "expected_n" and settings["sequential_n_opt"] == 1000
    assert settings["versions"]["rule"] == "all"
    assert set(settings["ratios"]) == {"ctr", "clicks/views"}
    (exp,) = report["experiments"]
    assert sum(exp["srm"]["counts"].values()) == 200
    kinds = {(r["metric"], r["method"]) for r in exp["results"]}
    assert ("clicks", "cuped_sequential") in kinds and ("ctr", "ratio_delta_sequential") in kinds
    assert any("90% two-sided" in note for note in report["notes"])
    default = main(["report", "experiment", "--db", db, "--format", "json"])
    assert default == 0
    newest = json.loads(capsys.readouterr().out)
    assert sum(newest["experiments"][0]["srm"]["counts"].values()) == 180  # v2 only


def test_drift_and_divergence_take_their_options(db: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "drift", "--db", db, "--format", "json", "--drift-method", "psi",
                 "--drift-threshold", "0.3", "--version", "v1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "drift method psi" in report["notes"][0] and "0.3" in report["notes"][0]
    assert main(["report", "divergence", "--db", db, "--format", "json", "--all-versions"]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == "shadowcar.report.divergence/2"


@pytest.mark.parametrize(("argv", "needle"), [
    (["--alpha", "0.7"], "--alpha"),
    (["--n-opt", "-5"], "--n-opt"),
    (["--n-opt", "10", "--expected-n", "10"], "not both"),
    (["--ratio", "clicks"], "--ratio"),
    (["--window", "soon"], "window"),
    (["--cuped-lookback", "0d", "--cuped"], "cuped_lookback"),
    (["--drift-threshold", "0"], "--drift-threshold"),
])
def test_bad_statistics_options_exit_2(db: str, capsys: pytest.CaptureFixture[str],
                                       argv: list[str], needle: str) -> None:
    assert main(["report", "experiment", "--db", db, *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_version_and_all_versions_exclude_each_other(db: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["report", "experiment", "--db", db, "--version", "v1", "--all-versions"])
    assert info.value.code == 2
