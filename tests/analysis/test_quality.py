"""Model quality on outcomes against references computed here, and CI coverage by simulation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from analysis.load import open_source
from analysis.quality import (
    analyze_quality,
    auc_delong,
    paired_auc_delong,
)
from sidecar.sink.schema import migrate

START = datetime(2024, 6, 1)
RTOL = 1e-9


def _insert(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    con.register("frame", frame)
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame").fetchall()
    con.unregister("frame")


def _write_db(path: Path, calls: pd.DataFrame, outcomes: pd.DataFrame) -> str:
    con = duckdb.connect(str(path))
    migrate(con)
    _insert(con, "calls", calls)
    _insert(con, "outcomes", outcomes)
    con.close()
    return str(path)


def _binary_data(n: int = 400, seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    y = (rng.random(n) < p).astype(float)
    primary = np.round(np.clip(p + rng.normal(0, 0.15, n), 0, 1), 2)  # rounding makes ties
    shadow = np.round(np.clip(p + rng.normal(0, 0.05, n), 0, 1), 2)
    return {"y": y, "primary": primary, "shadow": shadow}


@pytest.fixture
def binary_db(tmp_path: Path) -> Iterator[tuple[duckdb.DuckDBPyConnection, dict[str, Any]]]:
    data = _binary_data()
    n = data["y"].size
    ids = [f"r{i}" for i in range(n)]
    ts = [START + timedelta(minutes=i) for i in range(n)]  # 400 minutes: 7 hourly windows
    common = {"request_id": ids, "ts": ts, "route": "/fraud", "status": "OK"}
    calls = pd.concat([
        pd.DataFrame({**common, "backend": "v7", "backend_version": "7.0", "role": "primary",
                      "served": True, "score": data["primary"]}),
        pd.DataFrame({**common, "backend": "v8", "backend_version": "8.0", "role": "shadow",
                      "served": False, "score": data["shadow"]}),
        # noise the analysis must ignore: a failed call, a request without outcome
        pd.DataFrame({"request_id": ["r0", "x1"], "ts": [START, START], "route": "/fraud",
                      "status": ["UNAVAILABLE", "OK"], "backend": "v8", "backend_version": "8.0",
                      "role": "shadow", "served": False, "score": [0.99, 0.5]}),
    ])
    outcomes = pd.DataFrame({
        "event_id": [f"e{i}" for i in range(n)], "request_id": ids, "metric": "label",
        "value": data["y"], "ts": [t + timedelta(hours=2) for t in ts]})
    # a later correction of r1 wins; another metric and a non-0/1 label are left out
    flipped = 1.0 - data["y"][1]
    data["y"][1] = flipped
    extra = pd.DataFrame({"event_id": ["fix", "click", "bad"], "request_id": ["r1", "r2", "x9"],
                          "metric": ["label", "click", "label"], "value": [flipped, 1.0, 3.0],
                          "ts": [START + timedelta(days=1), START, START]})
    path = _write_db(tmp_path / "q.duckdb", calls, pd.concat([outcomes, extra]))
    con = open_source(db=path)
    yield con, {**data, "ts": np.array(ts, dtype="datetime64[us]")}
    con.close()


def _brute_delong(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """DeLong's variance from its definition: the O(m n) kernel matrix."""
    pos, neg = scores[y == 1], scores[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(psi.mean()), float(np.var(v10, ddof=1) / pos.size + np.var(v01, ddof=1) / neg.size)


def _ece(p: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for k in range(10):
        inside = (p >= k / 10) & ((p < (k + 1) / 10) if k < 9 else (p <= 1))
        if inside.any():
            total += inside.sum() / p.size * abs(y[inside].mean() - p[inside].mean())
    return total


def _model(report: dict[str, Any], backend: str) -> dict[str, Any]:
    return next(m for m in report["models"] if m["backend"] == backend)


def test_binary_metrics_match_references(binary_db: Any) -> None:
    con, data = binary_db
    report = analyze_quality(con, metric="label", kind="binary").to_dict()
    assert report["schema"] == "shadowcar.report.quality/1"
    assert report["params"]["invalid_outcomes"] == 1
    y = data["y"]
    for backend, key, roles in (("v7", "primary", ["primary"]), ("v8", "shadow", ["shadow"])):
        p = data[key]
        model = _model(report, backend)
        assert model["n"] == y.size and model["roles"] == roles
        assert model["positives"] == int(y.sum())
        u = stats.mannwhitneyu(p[y == 1], p[y == 0]).statistic
        assert model["auc"] == pytest.approx(u / (y.sum() * (y.size - y.sum())), rel=RTOL)
        _, var = _brute_delong(p, y)
        assert model["auc_se"] == pytest.approx(np.sqrt(var), rel=1e-7)
        clipped = np.clip(p, 1e-15, 1 - 1e-15)
        ll = -(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
        assert model["log_loss"] == pytest.approx(ll.mean(), rel=RTOL)
        half = 1.959963984540054 * ll.std(ddof=1) / np.sqrt(y.size)
        assert model["log_loss_ci"] == pytest.approx([ll.mean() - half, ll.mean() + half])
        brier = (p - y) ** 2
        assert model["brier"] == pytest.approx(brier.mean(), rel=RTOL)
        assert model["ece"] == pytest.approx(_ece(p, y), rel=1e-9)
        assert sum(b["n"] for b in model["reliability"]) == y.size
        assert model["message"] is None
    json.dumps(report, allow_nan=False)


def test_paired_tests_match_references(binary_db: Any) -> None:
    con, data = binary_db
    report = analyze_quality(con, kind="binary").to_dict()
    tests = {c["metric"]: c for c in report["comparisons"]}
    assert set(tests) == {"log_loss", "brier", "auc"}
    y, pp, ps = data["y"], data["primary"], data["shadow"]
    brier_ref = stats.ttest_rel((ps - y) ** 2, (pp - y) ** 2)
    assert tests["brier"]["statistic"] == pytest.approx(brier_ref.statistic, rel=1e-9)
    assert tests["brier"]["p_value"] == pytest.approx(brier_ref.pvalue, rel=1e-6)
    assert tests["brier"]["primary"] == "v7@7.0" and tests["brier"]["shadow"] == "v8@8.0"
    # the paired DeLong z from the kernel-matrix definition
    pos, neg = y == 1, y == 0
    comps = []
    for s in (pp, ps):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        comps.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    s10 = np.cov(np.vstack([comps[0][1], comps[1][1]]))
    s01 = np.cov(np.vstack([comps[0][2], comps[1][2]]))
    cov = s10 / pos.sum() + s01 / neg.sum()
    z = (comps[1][0] - comps[0][0]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert tests["auc"]["statistic"] == pytest.approx(z, rel=1e-7)
    assert tests["auc"]["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-6)
    assert tests["auc"]["diff"] == pytest.approx(comps[1][0] - comps[0][0], rel=1e-9)
    assert tests["auc"]["p_value"] < 0.05  # the shadow's scores are less noisy


def test_windows_split_the_requests(binary_db: Any) -> None:
    con, data = binary_db
    report = analyze_quality(con, window="1h")
    rows = [m for m in report.windows if m.backend == "v7"]
    assert len(rows) == 7 and sum(m.n for m in rows) == data["y"].size
    first = rows[0]
    inside = data["ts"] < np.datetime64(START + timedelta(hours=1))
    y, p = data["y"][inside], data["primary"][inside]
    u = stats.mannwhitneyu(p[y == 1], p[y == 0]).statistic
    assert first.auc == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), rel=RTOL)
    since = analyze_quality(con, since=START + timedelta(hours=6))
    assert {m.n for m in since.models} == {400 - 360}


def test_rendering(binary_db: Any) -> None:
    con, _ = binary_db
    from analysis.report import render

    report = analyze_quality(con, window="1h").to_dict()
    text = render(report, "quality", "table", width=200)
    assert "v8@8.0" in text and "paired DeLong" in text
    html = render(report, "quality", "html")
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    assert html.count("<svg") == 2 and "Reliability" in html and "http://" not in html


def test_regression_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    n = 250
    truth = rng.normal(100, 20, n)
    preds = {"a": truth + rng.normal(0, 5, n), "b": truth + rng.normal(1, 4, n)}
    ids = [f"r{i}" for i in range(n)]
    calls = pd.concat([
        pd.DataFrame({"request_id": ids, "ts": START, "route": "/spend", "backend": name,
                      "backend_version": "1", "role": role, "served": role == "primary",
                      "status": "OK", "output": [[float(v)] for v in preds[name]]})
        for name, role in (("a", "primary"), ("b", "shadow"))])
    outcomes = pd.DataFrame({"event_id": ids, "request_id": ids, "metric": "spend",
                             "value": truth, "ts": START})
    con = open_source(db=_write_db(tmp_path / "r.duckdb", calls, outcomes))
    report = analyze_quality(con, metric="spend", kind="regression").to_dict()
    con.close()
    for name in ("a", "b"):
        err = preds[name] - truth
        model = _model(report, name)
        assert model["mae"] == pytest.approx(np.abs(err).mean(), rel=RTOL)
        assert model["rmse"] == pytest.approx(np.sqrt((err ** 2).mean()), rel=RTOL)
        half = 1.959963984540054 * np.abs(err).std(ddof=1) / np.sqrt(n)
        assert model["mae_ci"] == pytest.approx([np.abs(err).mean() - half,
                                                 np.abs(err).mean() + half])
        assert model["auc"] is None
    tests = {c["metric"]: c for c in report["comparisons"]}
    ref = stats.ttest_rel(np.abs(preds["b"] - truth), np.abs(preds["a"] - truth))
    assert tests["mae"]["statistic"] == pytest.approx(ref.statistic, rel=1e-9)
    assert tests["mae"]["p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
    assert set(tests) == {"mae", "squared_error"}


def test_degenerate_inputs(tmp_path: Path) -> None:
    calls = pd.DataFrame({"request_id": ["a", "b", "c"], "ts": START, "route": "/r",
                          "backend": ["m", "m", "solo"], "backend_version": "1",
                          "role": "primary", "served": True, "status": "OK",
                          "score": [0.2, 1.7, 0.4]})
    outcomes = pd.DataFrame({"event_id": ["1", "2", "3"], "request_id": ["a", "b", "c"],
                             "metric": "label", "value": [1.0, 1.0, 0.0], "ts": START})
    con = open_source(db=_write_db(tmp_path / "d.duckdb", calls, outcomes))
    report = analyze_quality(con).to_dict()
    m, solo = _model(report, "m"), _model(report, "solo")
    assert m["auc"] is None and "one class" in m["message"]
    assert m["log_loss"] is None and "outside [0, 1]" in m["message"]
    assert solo["n"] == 1 and solo["brier_ci"] is None and "fewer than two" in solo["message"]
    json.dumps(report, allow_nan=False)
    empty = analyze_quality(con, metric="nothing")
    assert empty.models == () and "no successful call answered" in (empty.message or "")
    con.close()
    bare = duckdb.connect()
    assert "no calls or outcomes" in (analyze_quality(bare).message or "")


def test_delong_helpers_small_cases() -> None:
    assert auc_delong(np.array([0.1, 0.2]), np.array([1, 1])) == (None, None)
    auc, se = auc_delong(np.array([0.9, 0.1, 0.4]), np.array([1, 0, 0]))
    assert auc == 1.0 and se is None
    a, b, se = paired_auc_delong(np.arange(6.0), np.arange(6.0), np.array([0, 0, 0, 1, 1, 1]))
    assert a == b == 1.0 and se is None


def _true_values(lo: float, hi: float) -> dict[str, float]:
    """Population AUC, Brier and log loss when p ~ U(lo, hi), y ~ Bernoulli(p), score = p."""
    width = hi - lo
    e_p, e_p2 = (lo + hi) / 2, (lo * lo + lo * hi + hi * hi) / 3
    entropy = integrate.quad(lambda p: -(p * np.log(p) + (1 - p) * np.log(1 - p)), lo, hi)[0]
    z1, z0 = e_p, 1 - e_p  # class weights

    def neg_cdf(x: float) -> float:
        return ((x - lo) - (x * x - lo * lo) / 2) / width / z0

    auc = integrate.quad(lambda x: x / width / z1 * neg_cdf(x), lo, hi)[0]
    return {"auc": auc, "brier": e_p - e_p2, "log_loss": entropy / width}


@pytest.mark.slow
def test_interval_coverage_by_simulation(tmp_path: Path) -> None:
    sims, n, lo, hi = 500, 200, 0.05, 0.95
    rng = np.random.default_rng(2024)
    p = rng.uniform(lo, hi, (sims, n))
    y = (rng.random((sims, n)) < p).astype(float)
    ids = np.char.add("r", np.arange(sims * n).astype(str))
    routes = np.repeat([f"/sim{k:03d}" for k in range(sims)], n)
    calls = pd.DataFrame({"request_id": ids, "ts": START, "route": routes, "backend": "m",
                          "backend_version": "1", "role": "primary", "served": True,
                          "status": "OK", "score": p.ravel()})
    outcomes = pd.DataFrame({"event_id": ids, "request_id": ids, "metric": "label",
                             "value": y.ravel(), "ts": START})
    con = open_source(db=_write_db(tmp_path / "sim.duckdb", calls, outcomes))
    report = analyze_quality(con)
    con.close()
    assert len(report.models) == sims
    truth = _true_values(lo, hi)
    for name, value in truth.items():
        cis = [getattr(m, f"{name}_ci") for m in report.models]
        covered = np.mean([ci[0] <= value <= ci[1] for ci in cis])
        assert 0.92 <= covered <= 0.98, (name, covered)
