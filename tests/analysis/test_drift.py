"""Input drift figures against scipy and the DESIGN PSI on fixed recorded requests."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.drift import analyze_drift
from analysis.load import open_source
from sidecar.sink.schema import migrate

RTOL = 1e-9
START = datetime(2024, 6, 1)


def _design_psi(expected: np.ndarray, actual: np.ndarray) -> float:
    edges = np.quantile(expected, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    bounds = np.concatenate([[-np.inf], edges, [np.inf]])

    def shares(x: np.ndarray) -> np.ndarray:
        counts = np.array([np.sum((x > bounds[i]) & (x <= bounds[i + 1])) for i in range(10)])
        return np.maximum(counts / x.size, 1e-4)

    p, s = shares(expected), shares(actual)
    return float(np.sum((s - p) * np.log(s / p)))


def _tensor(name: str, data: list[float] | None = None,
            text: list[str] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": "BYTES" if text is not None else "FP64",
            "shape": [len(data or text or [])], "data": data, "text": text}


def _requests(n: int = 600, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        late = i >= n // 2
        amount = float(np.round(rng.normal(50 + 8 * late, 10), 1))
        if i % 37 == 0:
            amount = float("nan")
        country = "FR" if late and i % 9 == 0 else ("DE" if rng.random() < 0.3 else "US")
        inputs = [_tensor("amount", [amount]),
                  _tensor("emb", [float(np.round(rng.random(), 2)), float(rng.random() + late)]),
                  _tensor("country", text=[country])]
        if i % 50 == 1 and late:
            inputs = inputs[1:]  # amount missing: counts as null
        rows.append({"request_id": f"r{i}", "ts": START + timedelta(minutes=i), "route": "/r",
                     "inputs": inputs})
    return pd.DataFrame(rows)


def _db(path: Path, frame: pd.DataFrame) -> str:
    con = duckdb.connect(str(path))
    migrate(con)
    con.register("frame", frame)
    con.execute("INSERT INTO requests BY NAME SELECT request_id, ts, route, "
                "inputs::STRUCT(name VARCHAR, datatype VARCHAR, shape BIGINT[], data DOUBLE[], "
                "text VARCHAR[])[] AS inputs FROM frame")
    con.close()
    return str(path)


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[str, pd.DataFrame]:
    frame = _requests()
    return _db(tmp_path / "drift.duckdb", frame), frame


def _feature(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in report["features"] if f["feature"] == name)


def _values(frame: pd.DataFrame, name: str, index: int = 0) -> list[Any]:
    out = []
    for inputs in frame.inputs:
        for t in inputs:
            if t["name"] == name:
                out.append((t["data"] or t["text"])[index])
    return out


def test_default_windows_split_the_span_in_half(recorded: tuple[str, pd.DataFrame]) -> None:
    path, frame = recorded
    report = analyze_drift(open_source(db=path), ranges={"amount": (20.0, 70.0)}).to_dict()
    middle = START + (frame.ts.max() - START) / 2
    assert report["reference"]["until"] == middle.isoformat()
    ref = frame[frame.ts < middle]
    cur = frame[frame.ts >= middle]
    assert report["reference"]["n"] == {"/r": len(ref)}
    amount = _feature(report, "amount")
    a_ref = np.array(_values(ref, "amount"), dtype=float)
    a_cur = np.array(_values(cur, "amount"), dtype=float)
    f_ref, f_cur = a_ref[np.isfinite(a_ref)], a_cur[np.isfinite(a_cur)]
    assert amount["kind"] == "numeric"
    assert amount["n_reference"] == f_ref.size and amount["n_current"] == f_cur.size
    assert amount["null_rate_reference"] == pytest.approx(1 - f_ref.size / len(ref), rel=RTOL)
    assert amount["null_rate_current"] == pytest.approx(1 - f_cur.size / len(cur), rel=RTOL)
    assert amount["psi"] == pytest.approx(_design_psi(f_ref, f_cur), rel=RTOL)
    ks = stats.ks_2samp(f_ref, f_cur)
    assert amount["ks_stat"] == pytest.approx(ks.statistic, rel=RTOL)
    assert amount["ks_p"] == pytest.approx(ks.pvalue, rel=RTOL)
    outside = np.mean((f_cur < 20) | (f_cur > 70))
    assert amount["range"] == [20.0, 70.0]
    assert amount["out_of_range_current"] == pytest.approx(outside, rel=RTOL)
    # auto (Evidently's rule): 300 reference values, so KS at p < 0.05 decides
    assert amount["drift_method"] == "ks" and amount["drifted"] is True
    assert "ks" in amount["flags"] and "out_of_range" in amount["flags"]
    psi = _feature(analyze_drift(open_source(db=path), method="psi").to_dict(), "amount")
    assert psi["drift_method"] == "psi" and "psi" in psi["flags"]
    json.dumps(report, allow_nan=False)


def test_vector_elements_and_categories(recorded: tuple[str, pd.DataFrame]) -> None:
    path, frame = recorded
    middle = START + timedelta(minutes=200)
    report = analyze_drift(open_source(db=path), reference=(None, middle),
                           current=(middle, None)).to_dict()
    ref, cur = frame[frame.ts < middle], frame[frame.ts >= middle]
    emb1 = _feature(report, "emb[1]")
    e_ref = np.array(_values(ref, "emb", 1))
    e_cur = np.array(_values(cur, "emb", 1))
    assert emb1["ks_stat"] == pytest.approx(stats.ks_2samp(e_ref, e_cur).statistic, rel=RTOL)
    assert emb1["psi"] == pytest.approx(_design_psi(e_ref, e_cur), rel=RTOL)
    assert _feature(report, "emb[0]")["kind"] == "numeric"
    country = _feature(report, "country")
    c_ref = pd.Series(_values(ref, "country")).value_counts()
    c_cur = pd.Series(_values(cur, "country")).value_counts()
    table = pd.concat([c_ref, c_cur], axis=1).fillna(0).to_numpy().T
    chi2, p, dof, _ = stats.chi2_contingency(table)
    assert country["kind"] == "categorical"
    assert country["chi2"] == pytest.approx(chi2, rel=RTOL)
    assert country["chi2_p"] == pytest.approx(p, rel=RTOL)
    assert country["dof"] == dof
    assert country["unseen_categories"] == ["FR"]
    assert country["unseen_share"] == pytest.approx(c_cur["FR"] / c_cur.sum(), rel=RTOL)
    assert "unseen_categories" in country["flags"]


def test_route_filter_and_span(recorded: tuple[str, pd.DataFrame]) -> None:
    con = open_source(db=recorded[0])
    assert analyze_drift(con, route="/none").message == "no request has decoded inputs"
    bounded = analyze_drift(con, since=START, until=START + timedelta(minutes=100)).to_dict()
    assert bounded["reference"]["n"]["/r"] + bounded["current"]["n"]["/r"] == 100


def test_degenerate_inputs_give_messages(tmp_path: Path) -> None:
    rows = [{"request_id": f"r{i}", "ts": START + timedelta(minutes=i), "route": "/r",
             "inputs": [_tensor("only_ref", [1.0]) if i < 5 else _tensor("only_cur", [2.0]),
                        _tensor("one_cat", text=["a"]), _tensor("all_nan", [float("nan")])]}
            for i in range(10)]
    path = _db(tmp_path / "degenerate.duckdb", pd.DataFrame(rows))
    con = duckdb.connect(path)
    con.execute("UPDATE requests SET inputs = list_transform(inputs, lambda t: CASE WHEN "
                "t.name = 'all_nan' THEN struct_pack(name := t.name, datatype := t.datatype, "
                "shape := t.shape, data := ['nan'::DOUBLE], text := t.text) ELSE t END)")
    con.close()
    report = analyze_drift(open_source(db=path)).to_dict()
    assert "reference" in _feature(report, "only_cur")["message"]
    assert "current" in _feature(report, "only_ref")["message"]
    assert _feature(report, "one_cat")["chi2"] is None
    assert "two categories" in _feature(report, "one_cat")["message"]
    nan = _feature(report, "all_nan")
    assert nan["null_rate_current"] == 1.0 and nan["psi"] is None and nan["message"]
    json.dumps(report, allow_nan=False)


def test_no_requests_or_inputs(tmp_path: Path) -> None:
    path = tmp_path / "empty.duckdb"
    con = duckdb.connect(str(path))
    migrate(con)
    con.execute("INSERT INTO requests (request_id, ts, route) VALUES ('a', now(), '/r')")
    con.close()
    report = analyze_drift(open_source(db=str(path)))
    assert report.features == () and report.message
    assert report.to_dict()["schema"] == "shadowcar.report.drift/2"
    bare = duckdb.connect()
    bare.execute("CREATE TABLE calls (x INT)")
    assert analyze_drift(bare).message == "the source has no requests table"
