"""Issue 19 (drift row): the drift report's one scan of the tensors against SQL's UNNEST.

The report used to unnest every tensor element into a table (10M rows at 1M requests x 10
features); it now reads the requests once as Arrow batches and splits elements into
features with numpy (analysis/drift_scan.py). The reference here is that UNNEST, run by
DuckDB: every feature's finite values per window, its valid counts, category counts and
requests per route must be the same, on irregular tensors (varying widths, missing names,
null and non-finite elements, null tensors, text beside numbers, two routes, overlapping
windows) and on regular ones (the matrix fast path), across batch boundaries.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from analysis.distribution import compare_distributions
from analysis.drift import analyze_drift
from analysis.drift_scan import WINDOWS, scan_features
from analysis.drift_shift import sorted_histogram, sorted_shift
from analysis.load import open_source, sql_timestamp
from sidecar.sink.schema import migrate

START = datetime(2024, 3, 1)


def _tensor(name: str | None, data: list[float | None] | None = None,
            text: list[str | None] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": "FP64", "shape": [len(data or text or [])],
            "data": data, "text": text}


def _irregular(i: int, rng: np.random.Generator) -> list[dict[str, Any] | None] | None:
    """Every kind of tensor the recorder can write, mixed from request to request."""
    if i % 41 == 0:
        return None  # no decoded inputs
    if i % 43 == 0:
        return []
    width = 2 if i % 3 else 4  # y[2], y[3] exist in a third of the requests only
    out: list[dict[str, Any] | None] = [
        _tensor("x", [float(rng.normal()), float(np.round(rng.normal(), 1)),
                      float(rng.integers(0, 3))]),
        _tensor("y", [float(rng.normal(i / 100)) for _ in range(width)]),
    ]
    if i % 5 == 0:
        out.append(_tensor("x", [float(rng.normal(3))]))  # one element: feature "x"
    if i % 7 == 0:
        out.append(_tensor("z", [None, float("nan"), float("inf"), 1.5]))
    if i % 11 == 0:
        out.append(_tensor(None, [1.0, 2.0]))  # a nameless tensor
    if i % 13 == 0:
        out.append(None)
    out.append(_tensor("c", text=[["a", "b", "c"][i % 3] if i % 17 else None]))
    if i % 2:
        out.append(_tensor("both", [float(i % 4)], ["ignored"]))  # numbers win over text
    if i % 19 == 0:
        out.append(_tensor("c2", data=[], text=["p", "q"]))
    return out


def _regular(i: int, rng: np.random.Generator) -> list[dict[str, Any] | None]:
    v = rng.normal(size=5)
    if i % 9 == 0:
        v[i % 5] = np.nan
    return [_tensor("a", v[:3].tolist()), _tensor("b", [float(v[3])]),
            _tensor("d", [float(v[4])])]


def _db(path: Path, shape: Any, n: int = 600) -> str:
    rng = np.random.default_rng(19)
    con = duckdb.connect(str(path))
    migrate(con)
    tensor = pa.struct([("name", pa.string()), ("datatype", pa.string()),
                        ("shape", pa.list_(pa.int64())), ("data", pa.list_(pa.float64())),
                        ("text", pa.list_(pa.string()))])
    frame = pa.table({
        "request_id": [f"r{i}" for i in range(n)],
        "ts": [START + timedelta(seconds=i) for i in range(n)],
        # one route for the regular tensors: every batch is then one matrix
        "route": ["/a" if i % 4 or shape is _regular else "/b" for i in range(n)],
        "inputs": pa.array([shape(i, rng) for i in range(n)], type=pa.list_(tensor)),
    })
    con.register("frame", frame)
    con.execute("INSERT INTO requests BY NAME SELECT * FROM frame")
    con.close()
    return str(path)


def _unnested(con: duckdb.DuckDBPyConnection, ref: tuple[datetime, datetime],
              cur: tuple[datetime, datetime]) -> dict[tuple[Any, ...], Any]:
    """The reference: every element as a row (SQL UNNEST), grouped per feature and window."""
    windows = (f"(VALUES ('reference', {sql_timestamp(ref[0])}, {sql_timestamp(ref[1])}), "
               f"('current', {sql_timestamp(cur[0])}, {sql_timestamp(cur[1])})) w(win, lo, hi)")
    rows = con.execute(f"""
        WITH req AS (
            SELECT r.route, w.win, r.inputs FROM requests r JOIN {windows}
              ON r.ts >= w.lo AND r.ts < w.hi WHERE r.inputs IS NOT NULL
        ), tens AS (SELECT route, win, unnest(inputs) AS t FROM req),
        num AS (SELECT route, win, t.name AS tname, len(t.data) AS width,
                       unnest(t.data) AS v, unnest(range(len(t.data))) AS i
                FROM tens WHERE len(t.data) > 0),
        cat AS (SELECT route, win, t.name AS tname, len(t.text) AS width,
                       unnest(t.text) AS c, unnest(range(len(t.text))) AS i
                FROM tens WHERE len(t.text) > 0 AND (t.data IS NULL OR len(t.data) = 0))
        SELECT route, CASE WHEN width = 1 THEN tname ELSE tname || '[' || i || ']' END,
               'numeric', win, v, NULL FROM num
        UNION ALL
        SELECT route, CASE WHEN width = 1 THEN tname ELSE tname || '[' || i || ']' END,
               'categorical', win, NULL, c FROM cat
    """).fetchall()
    out: dict[tuple[Any, ...], Any] = {}
    for route, feature, kind, win, v, c in rows:
        entry = out.setdefault((route, feature, kind), {w: ([], Counter()) for w in WINDOWS})
        if kind == "numeric" and v is not None and np.isfinite(v):
            entry[win][0].append(v)
        elif kind == "categorical" and c is not None:
            entry[win][1][c] += 1
    return out


@pytest.mark.parametrize("shape", [_irregular, _regular])
@pytest.mark.parametrize("batch_rows", [7, 128, 100_000])
def test_scan_matches_unnest(tmp_path: Path, shape: Any, batch_rows: int) -> None:
    con = open_source(db=_db(tmp_path / "scan.duckdb", shape))
    # overlapping windows: requests 250-349 are in both
    ref = (START, START + timedelta(seconds=350))
    cur = (START + timedelta(seconds=250), START + timedelta(days=1))
    expected = _unnested(con, ref, cur)
    found = scan_features(con, "TRUE", ref, cur, batch_rows=batch_rows)
    assert set(found.features) == set(expected)
    for key, feature in found.features.items():
        for w, win in enumerate(WINDOWS):
            values, categories = expected[key][win]
            if key[2] == "numeric":
                assert feature.valid[w] == len(values)
                assert np.array_equal(feature.values(w), np.sort(np.array(values, dtype=float)))
            else:
                assert feature.valid[w] == sum(categories.values())
                assert {k: v[w] for k, v in feature.categories.items() if v[w]} == categories
    n = con.execute(f"""
        SELECT route, count(*) FILTER (WHERE ts >= {sql_timestamp(ref[0])}
                                       AND ts < {sql_timestamp(ref[1])}),
               count(*) FILTER (WHERE ts >= {sql_timestamp(cur[0])}
                                AND ts < {sql_timestamp(cur[1])})
        FROM requests WHERE inputs IS NOT NULL GROUP BY ALL""").fetchall()
    assert found.n_requests == {"reference": {r: a for r, a, _ in n},
                                "current": {r: b for r, _, b in n}}
    # as SQL's ORDER BY route, feature: a nameless tensor's feature last in its route
    assert [(f.route, f.feature) for f in found.ordered()] == sorted(
        ((k[0], k[1]) for k in expected), key=lambda k: (k[0], k[1] is None, k[1] or ""))


def test_report_figures_are_those_of_the_unnested_values(tmp_path: Path) -> None:
    """The report's figures come from the scanned values: the same as compare_distributions
    of the UNNEST's values, to the last bits (only the summation order of np.std differs)."""
    con = open_source(db=_db(tmp_path / "fig.duckdb", _irregular, n=24_000))
    report = analyze_drift(con, all_versions=True).to_dict()
    ref = (START, datetime.fromisoformat(report["reference"]["until"]))
    cur = (ref[1], datetime.fromisoformat(report["current"]["until"]))
    expected = _unnested(con, ref, cur)
    checked = 0
    for f in report["features"]:
        if f["kind"] != "numeric" or f["message"]:
            continue
        values = expected[(f["route"], f["feature"], "numeric")]
        a, b = (np.array(values[w][0], dtype=float) for w in WINDOWS)
        shift = compare_distributions(a, b)
        for name in ("psi", "ks_stat", "ks_p", "wasserstein"):
            assert f[name] == pytest.approx(getattr(shift, name), rel=1e-12, abs=1e-300), name
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("case", ["normal", "ties", "integers", "constant", "both_constant",
                                  "small"])
def test_sorted_figures_are_numpys_and_scipys(case: str) -> None:
    """The figures of sorted samples by binary search (analysis/drift_shift.py) are exactly
    compare_distributions' and numpy.histogram's: same bins, same arithmetic."""
    rng = np.random.default_rng(7)
    a, b = {
        "normal": (rng.normal(size=60_000), rng.normal(0.1, 1.1, size=45_000)),
        "ties": (np.round(rng.normal(size=30_000), 1), np.round(rng.normal(size=20_001), 1)),
        "integers": (rng.integers(0, 5, 25_000).astype(float),
                     rng.integers(0, 6, 12_000).astype(float)),
        "constant": (np.full(20_000, 3.0), rng.normal(size=15_000)),
        "both_constant": (np.full(20_000, 3.0), np.full(11_000, 3.0)),
        "small": (rng.normal(size=500), rng.normal(size=700)),
    }[case]
    a, b = np.sort(a), np.sort(b)
    assert sorted_shift(a, b) == compare_distributions(a, b)
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins="sturges")
    for side in (a, b):
        assert np.array_equal(sorted_histogram(side, edges), np.histogram(side, edges)[0])
