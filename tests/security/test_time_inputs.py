"""Issue 14.10: extreme report times (ages past the year 1, instants past 9999 in UTC) are a
usage error (exit 2, one line), never an OverflowError."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from analysis.load import AnalysisSourceError, parse_time
from sidecar.cli import main

EXTREME = ["99999999999999d", "-99999999999999d", "9" * 40 + "s", "9999-12-31T23:59:59-14:00",
           "0001-01-01T00:00:00+14:00"]


@pytest.mark.parametrize("text", EXTREME)
def test_extreme_report_times_are_usage_errors(text: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14.10: ``report --since 99999999999999d`` raised OverflowError."""
    with pytest.raises(AnalysisSourceError):
        parse_time(text)
    db = tmp_path / "r.duckdb"
    duckdb.connect(str(db)).close()
    for kind in ("divergence", "experiment", "drift"):
        for option in ("--since", "--until"):
            assert main(["report", kind, "--db", str(db), f"{option}={text}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "OverflowError" not in err
    assert all(len(line) < 200 for line in err.splitlines())


def test_the_widest_legal_times_still_parse() -> None:
    assert parse_time("0001-01-01T00:00:00") is not None
    assert parse_time("9999-12-31T23:59:59Z") is not None
    assert parse_time("700000d") is not None  # about 1916 years back: still year >= 1


def test_extreme_durations_are_usage_errors(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14.10 (sibling: every duration string): ``--cuped-lookback 99999999999999d``
    raised OverflowError as an internal error."""
    from sidecar.sink import migrate

    db = tmp_path / "r.duckdb"
    con = duckdb.connect(str(db))
    migrate(con)  # the recorded tables, empty
    con.close()
    assert main(["report", "experiment", "--db", str(db),
                 "--cuped-lookback", "99999999999999d"]) == 2
    err = capsys.readouterr().err
    assert "too long a duration" in err and "Traceback" not in err
