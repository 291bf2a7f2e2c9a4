"""Issue 16.9: drift methods and thresholds as Evidently offers them, against scipy.

A 0.1 sd shift with 10% more spread over 500k rows was not flagged (PSI > 0.2 alone); the
default (Evidently's size-aware rule) flags it through the Wasserstein distance.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from analysis.drift import analyze_drift
from analysis.load import open_source
from sidecar.sink.schema import migrate

pytestmark = pytest.mark.slow
START = datetime(2026, 2, 1)
RTOL = 1e-9


def drift_db(path: Path, ref: np.ndarray, cur: np.ndarray,
             cats: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """One request per value: the reference in the first hour, the current in the second."""
    n_ref = ref.size
    values = np.concatenate([ref, cur])
    seconds = np.concatenate([np.linspace(0, 3599, n_ref), 3600 + np.linspace(0, 3599, cur.size)])
    frame = pd.DataFrame({"i": np.arange(values.size), "v": values, "s": seconds})
    frame["c"] = np.concatenate(cats) if cats is not None else None
    con = duckdb.connect(str(path))
    migrate(con)
    con.register("frame", frame)
    con.execute(f"""
        INSERT INTO requests (request_id, ts, route, inputs)
        SELECT 'r' || i,
               TIMESTAMP '{START.isoformat(sep=' ')}' + to_microseconds((s * 1e6)::BIGINT),
               '/r', [struct_pack(name := 'x', datatype := 'FP64', shape := [1::BIGINT],
                                  data := [v], text := NULL::VARCHAR[])]
                     || CASE WHEN c IS NULL THEN [] ELSE
                        [struct_pack(name := 'c', datatype := 'BYTES', shape := [1::BIGINT],
                                     data := NULL::DOUBLE[], text := [c])] END
        FROM frame""")
    con.close()
    return str(path)


def feature(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in report["features"] if f["feature"] == name)


def test_small_shift_over_many_rows_is_flagged_by_default(tmp_path: Path) -> None:
    """Issue 16.9: 250k + 250k rows, current shifted 0.1 sd with 10% more spread."""
    rng = np.random.default_rng(9)
    ref, cur = rng.normal(0, 1, 250_000), rng.normal(0.1, 1.1, 250_000)
    con = open_source(db=drift_db(tmp_path / "big.duckdb", ref, cur))
    report = analyze_drift(con).to_dict()
    json.dumps(report, allow_nan=False)
    x = feature(report, "x")
    wasserstein = stats.wasserstein_distance(ref, cur) / np.std(ref)
    assert x["wasserstein"] == pytest.approx(wasserstein, rel=1e-6)
    assert x["drift_method"] == "wasserstein" and x["drift_threshold"] == 0.1
    assert x["drifted"] is True and "wasserstein" in x["flags"]
    assert x["psi"] < 0.2  # the old rule: not flagged
    psi = feature(analyze_drift(con, method="psi").to_dict(), "x")
    assert psi["drifted"] is False and "psi" not in psi["flags"]
    ks = feature(analyze_drift(con, method="ks").to_dict(), "x")
    assert ks["drifted"] is True and ks["ks_p"] < 1e-100 and not ks["ks_p_is_bound"]
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    p = np.maximum(np.histogram(ref, edges)[0] / ref.size, 1e-4)
    q = np.maximum(np.histogram(cur, edges)[0] / cur.size, 1e-4)
    assert x["js_distance"] == pytest.approx(jensenshannon(p, q), rel=RTOL)
    loose = feature(analyze_drift(con, method="wasserstein", threshold=0.2).to_dict(), "x")
    assert loose["drifted"] is False and loose["drift_threshold"] == 0.2
    assert any("Evidently" in note for note in report["notes"])
    assert report["schema"] == "shadowcar.report.drift/2"


def test_small_samples_use_tests_and_categories_js(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    ref, cur = rng.normal(0, 1, 800), rng.normal(0.3, 1, 800)
    cats = (rng.choice(["a", "b", "c"], 800, p=[0.5, 0.3, 0.2]),
            rng.choice(["a", "b", "c"], 800, p=[0.3, 0.3, 0.4]))
    con = open_source(db=drift_db(tmp_path / "small.duckdb", ref, cur, cats))
    report = analyze_drift(con).to_dict()
    x, c = feature(report, "x"), feature(report, "c")
    assert x["drift_method"] == "ks" and x["drift_threshold"] == 0.05
    assert x["drift_score"] == pytest.approx(stats.ks_2samp(ref, cur).pvalue, rel=RTOL)
    assert x["drifted"] is True
    table = pd.crosstab(np.repeat([0, 1], 800), np.concatenate(cats)).to_numpy()
    assert c["drift_method"] == "chi2"
    assert c["drift_score"] == pytest.approx(stats.chi2_contingency(table)[1], rel=RTOL)
    shares = table / table.sum(axis=1, keepdims=True)
    assert c["js_distance"] == pytest.approx(jensenshannon(shares[0], shares[1]), rel=RTOL)
    js = feature(analyze_drift(con, method="jensenshannon").to_dict(), "c")
    assert js["drift_method"] == "jensenshannon" and js["drifted"] is True
    with pytest.raises(ValueError, match="drift method"):
        analyze_drift(con, method="magic")  # type: ignore[arg-type]
