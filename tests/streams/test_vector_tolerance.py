"""Issue 20.7: out of tolerance on vector outputs compares whole vectors, element-wise, and
counts a length mismatch; score_index picks only the scalar score."""

from __future__ import annotations

from pathlib import Path

import duckdb

from analysis.divergence import analyze_divergence
from analysis.load import open_source
from sidecar.sink import migrate

ROUTE = "/gen.v1.Gen/Score"
SAME = [0.2, 0.5, 0.3]
#: (shadow vector, how many pairs): the primary answers SAME every time
SHADOWS = [
    (SAME, 3),
    ([0.9, 0.5, 0.3], 3),       # the first element differs, the last (the score) does not
    ([0.0, 0.2, 0.5, 0.3], 2),  # one more element: compared items would shift
    ([0.2, 0.5, 0.9], 2),       # the last element differs: the only case seen before
]


def test_whole_vectors_are_compared(tmp_path: Path) -> None:
    db = tmp_path / "v.duckdb"
    con = duckdb.connect(str(db))
    migrate(con)
    i = 0
    for vector, count in SHADOWS:
        for _ in range(count):
            for role, backend, output in (("primary", "p", SAME), ("shadow", "s", vector)):
                con.execute(
                    "INSERT INTO calls (request_id, ts, route, method, backend, role, served, "
                    "status, output, score, config_version) VALUES "
                    "(?, now()::TIMESTAMP, ?, ?, ?, ?, ?, 'OK', ?, ?, 'v1')",
                    [f"r{i}", ROUTE, ROUTE, backend, role, role == "primary", output,
                     output[-1]]).fetchall()
            i += 1
    con.close()
    src = open_source(db=str(db))
    try:
        report = analyze_divergence(src, route=ROUTE).to_dict()
    finally:
        src.close()
    (pair,) = report["pairs"]
    # before: 2 of 10 (only output[-1] compared), with the 4-element vectors matched by
    # their last items; now every vector that differs anywhere, lengths included
    assert pair["vectors"] == {"n": 10, "out_of_tolerance": 7, "length_mismatch": 2}
    assert pair["numeric"]["out_of_tolerance"] == 0.7
    assert abs(pair["numeric"]["max_abs"] - 0.6) < 1e-12  # the scalar score's figures are unchanged
    assert any("whole vectors" in note for note in report["notes"])
