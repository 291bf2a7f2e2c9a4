"""analyze_experiments end to end through DuckDB: recorded schema and analyst tables.

Each reference is computed from unit-level arrays built here in pandas/numpy, then
run through statsmodels; the report must agree to rtol 1e-9.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttest_ind

from analysis.experiment import REPORT_SCHEMA, ExperimentReport, analyze_experiments
from analysis.significance import ratio_test
from analysis.stats import PairStats
from sidecar.sink.schema import migrate

RTOL = 1e-9
T0 = datetime(2026, 3, 1, 12, 0, 0)
ROW_KEYS = {
    "metric", "variant", "control", "n_control", "n_variant", "mean_control", "mean_variant",
    "abs_effect", "abs_ci", "rel_effect", "rel_ci", "p_value", "p_value_holm", "p_value_bh",
    "method", "message",
}


def close(a: Any, b: Any) -> None:
    assert a is not None
    assert a == pytest.approx(float(b), rel=RTOL)


def config_json(name: str, variants: list[tuple[str, float | None]]) -> str:
    vs = [{"name": v, "backend": f"b-{v}", **({"weight": w} if w is not None else {})}
          for v, w in variants]
    return json.dumps({"routes": [{"match": "/inference.GRPCInferenceService/ModelInfer",
                                   "experiment": {"name": name, "variants": vs}}]})


def check_json(report: ExperimentReport) -> dict[str, Any]:
    d = report.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["schema"] == REPORT_SCHEMA
    for exp in d["experiments"]:
        assert {"name", "srm", "results"} <= set(exp)
        assert {"p_value", "flag", "counts", "expected_share"} <= set(exp["srm"])
        for row in exp["results"]:
            assert ROW_KEYS <= set(row)
            for key in ("abs_ci", "rel_ci"):
                assert row[key] is None or (isinstance(row[key], list) and len(row[key]) == 2)
    return d


def row(report: ExperimentReport, metric: str, variant: str, exp: int = 0) -> dict[str, Any]:
    found = [r.to_dict() for r in report.experiments[exp].results
             if r.metric == metric and r.variant == variant]
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------- recorded schema


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A DuckDB file in the recorded schema: 3 variants, +2.0 revenue planted in 'treat'."""
    rng = np.random.default_rng(42)
    n_units = 3000
    units = pd.DataFrame({
        "unit_id": [f"u{i}" for i in range(n_units)],
        "variant": rng.choice(["control", "treat", "treat2"], n_units, p=[0.5, 0.25, 0.25]),
    })
    units["n_req"] = rng.integers(1, 4, n_units)
    req = units.loc[units.index.repeat(units["n_req"])].reset_index(drop=True)
    req["request_id"] = [f"r{i}" for i in range(len(req))]
    req["ts"] = [T0 + timedelta(seconds=int(s)) for s in rng.integers(0, 86400, len(req))]
    req["experiment"] = "thr"
    req["exposed"] = True
    noise = pd.DataFrame({  # not exposed, or not in an experiment: never counted
        "unit_id": ["ghost1", "ghost2", "u0"], "variant": ["treat", None, "treat"],
        "request_id": ["g1", "g2", "g3"], "ts": [T0] * 3,
        "experiment": ["thr", None, "thr"], "exposed": [False, True, False],
    })
    req = pd.concat([req, noise], ignore_index=True)

    # revenue: 0-2 rows per unit, some linked only by request_id
    first_req = req[req["exposed"]].groupby("unit_id")["request_id"].first()
    rev = units.loc[units.index.repeat(rng.integers(0, 3, n_units))].reset_index(drop=True)
    rev["value"] = rng.exponential(10.0, len(rev)) + np.where(rev["variant"] == "treat", 2.0, 0)
    rev["metric"] = "revenue"
    rev["request_id"] = rev["unit_id"].map(first_req)
    by_request = rng.random(len(rev)) < 0.3
    rev["unit_id"] = rev["unit_id"].where(~by_request, None)
    conv = units.sample(frac=0.4, random_state=1).copy()
    conv["value"] = (rng.random(len(conv)) < np.where(conv["variant"] == "treat2", 0.6, 0.5))
    conv["value"] = conv["value"].astype(float)
    conv["metric"] = "converted"
    conv["request_id"] = None
    ghost = pd.DataFrame({"unit_id": ["ghost1"], "request_id": [None], "metric": ["revenue"],
                          "value": [1e6]})
    outcomes = pd.concat([rev, conv, ghost], ignore_index=True)
    outcomes["event_id"] = [f"e{i}" for i in range(len(outcomes))]
    outcomes["ts"] = T0 + timedelta(days=1, hours=1)  # after every exposure

    path = tmp_path_factory.mktemp("recorded") / "shadowcar.duckdb"
    con = duckdb.connect(str(path))
    migrate(con)
    con.execute("INSERT INTO configs VALUES ('old', ?, ?)",
                [T0 - timedelta(days=2), config_json("thr", [("treat", 1), ("control", 1)])])
    con.execute("INSERT INTO configs VALUES ('new', ?, ?)",
                [T0 - timedelta(days=1),
                 config_json("thr", [("control", 50), ("treat", 25), ("treat2", 25)])])
    con.register("req_df", req[["request_id", "ts", "unit_id", "experiment", "variant",
                                "exposed"]])
    con.execute("INSERT INTO requests (request_id, ts, unit_id, experiment, variant, exposed) "
                "SELECT * FROM req_df")
    con.register("out_df", outcomes[["event_id", "unit_id", "request_id", "metric", "value",
                                     "ts"]])
    con.execute("INSERT INTO outcomes (event_id, unit_id, request_id, metric, value, ts) "
                "SELECT * FROM out_df")
    con.close()

    # Reference unit values: the sum of each unit's rows, 0 without rows.
    rev_unit = rev.assign(unit_id=rev["unit_id"].fillna(
        rev["request_id"].map(req.set_index("request_id")["unit_id"])))
    values = {}
    for metric, frame in (("revenue", rev_unit), ("converted", conv)):
        sums = frame.groupby("unit_id")["value"].sum()
        values[metric] = units.assign(value=units["unit_id"].map(sums).fillna(0.0))
    return {"path": path, "units": units, "values": values}


def open_ro(path: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(path), read_only=True)


def test_recorded_finds_planted_effect(recorded: dict[str, Any]) -> None:
    con = open_ro(recorded["path"])
    report = analyze_experiments(con)
    d = check_json(report)
    assert [e["name"] for e in d["experiments"]] == ["thr"]
    exp = d["experiments"][0]
    units = recorded["units"]
    counts = units["variant"].value_counts().to_dict()
    assert exp["srm"]["counts"] == counts
    assert exp["srm"]["expected_share"] == {"control": 0.5, "treat": 0.25, "treat2": 0.25}
    ref = sps.chisquare([counts["control"], counts["treat"], counts["treat2"]],
                        np.array([0.5, 0.25, 0.25]) * len(units))
    close(exp["srm"]["p_value"], ref.pvalue)
    assert exp["control"] == "control" and exp["variants"] == ["control", "treat", "treat2"]

    rev = recorded["values"]["revenue"]
    a = rev.loc[rev["variant"] == "control", "value"].to_numpy()
    b = rev.loc[rev["variant"] == "treat", "value"].to_numpy()
    r = row(report, "revenue", "treat")
    assert (r["n_control"], r["n_variant"]) == (a.size, b.size)
    close(r["mean_control"], a.mean())
    close(r["abs_effect"], b.mean() - a.mean())
    close(r["p_value"], ttest_ind(b, a, usevar="unequal")[1])
    assert r["abs_effect"] > 0 and r["abs_ci"][0] > 0 and r["p_value"] < 1e-4
    assert r["method"] == "welch"
    # 0/1 metric: Welch reported, the z-test beside it
    conv = recorded["values"]["converted"]
    c = row(report, "converted", "treat2")
    ca = conv.loc[conv["variant"] == "control", "value"].to_numpy()
    cb = conv.loc[conv["variant"] == "treat2", "value"].to_numpy()
    close(c["p_value"], ttest_ind(cb, ca, usevar="unequal")[1])
    assert c["p_value_ztest"] is not None

    # Holm and BH over every row of the experiment
    rows = report.experiments[0].results
    assert len(rows) == 4
    ps = [x.comparison.p_value for x in rows]
    for got, ref_h, ref_b in zip(rows, multipletests(ps, method="holm")[1],
                                 multipletests(ps, method="fdr_bh")[1], strict=True):
        close(got.p_value_holm, ref_h)
        close(got.p_value_bh, ref_b)

    frame = report.to_frame()
    assert len(frame) == 4 and {"experiment", "abs_ci_low", "srm_flag"} <= set(frame.columns)
    con.close()


def test_recorded_weights_override_and_unweighted_variant(recorded: dict[str, Any]) -> None:
    with open_ro(recorded["path"]) as con:
        report = analyze_experiments(con, weights={"control": 2, "treat": 1})
    srm = report.experiments[0].srm
    assert srm.p_value is None and "'treat2'" in (srm.message or "")
    assert len(report.experiments[0].results) == 4  # still reported
    check_json(report)


def test_recorded_control_override_and_unknown(recorded: dict[str, Any]) -> None:
    with open_ro(recorded["path"]) as con:
        over = analyze_experiments(con, control="treat")
        unknown = analyze_experiments(con, control="nope")
    assert {r.variant for r in over.experiments[0].results} == {"control", "treat2"}
    assert row(over, "revenue", "control")["abs_effect"] < 0
    exp = unknown.experiments[0]
    assert exp.results == () and "'nope'" in (exp.message or "")
    assert exp.srm.p_value is not None
    check_json(unknown)


def test_recorded_sequential_and_ratio(recorded: dict[str, Any]) -> None:
    with open_ro(recorded["path"]) as con:
        report = analyze_experiments(con, sequential=True,
                                     ratios={"rev_per_conv": ("revenue", "converted")})
    r = row(report, "revenue", "treat")
    assert r["method"] == "welch_sequential" and r["abs_ci"][0] > 0
    fixed = analyze_experiments(open_ro(recorded["path"]))
    f = row(fixed, "revenue", "treat")
    assert r["abs_ci"][1] - r["abs_ci"][0] > f["abs_ci"][1] - f["abs_ci"][0]
    ratio = row(report, "rev_per_conv", "treat")
    assert ratio["method"] == "ratio_delta_sequential" and ratio["kind"] == "ratio"
    check_json(report)


def test_recorded_window_and_empty_database(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    migrate(con)
    assert analyze_experiments(con).experiments == ()
    rows = [(f"r{i}", T0 + timedelta(days=i % 2), f"u{i}", "exp", ["control", "treat"][i % 4 // 2],
             True) for i in range(40)]
    con.executemany("INSERT INTO requests (request_id, ts, unit_id, experiment, variant, exposed)"
                    " VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.executemany("INSERT INTO outcomes (event_id, unit_id, metric, value, ts) "
                    "VALUES (?, ?, 'm', ?, ?)",
                    [(f"e{i}", f"u{i}", float(i % 7), T0 + timedelta(days=i % 2, hours=1))
                     for i in range(40)])
    report = analyze_experiments(con, since=T0 + timedelta(hours=12))
    r = row(report, "m", "treat")
    assert r["n_control"] + r["n_variant"] == 20
    assert report.experiments[0].srm.counts == {"control": 10, "treat": 10}
    before = analyze_experiments(con, until=T0 + timedelta(hours=12))
    assert sum(before.experiments[0].srm.counts.values()) == 20
    # the bounds every report takes: ISO text and ages ("36500d" reaches back past T0)
    iso = analyze_experiments(con, since=(T0 + timedelta(hours=12)).isoformat())
    assert iso.experiments[0].srm.counts == {"control": 10, "treat": 10}
    aged = analyze_experiments(con, since="36500d")
    assert sum(aged.experiments[0].srm.counts.values()) == 40
    con.close()


def test_recorded_first_config_variant_is_control(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "c.duckdb"))
    migrate(con)
    con.execute("INSERT INTO configs VALUES ('v', ?, ?)",
                [T0, config_json("e", [("zeta", 1), ("alpha", 1), ("empty", 1)])])
    con.executemany("INSERT INTO requests (request_id, ts, unit_id, experiment, variant, exposed)"
                    " VALUES (?, ?, ?, 'e', ?, true)",
                    [(f"r{i}", T0, f"u{i}", ["zeta", "alpha"][i % 2]) for i in range(40)])
    con.executemany("INSERT INTO outcomes (event_id, unit_id, metric, value) "
                    "VALUES (?, ?, 'm', ?)", [(f"e{i}", f"u{i}", float(i)) for i in range(40)])
    report = analyze_experiments(con)
    exp = report.experiments[0]
    assert exp.control == "zeta" and exp.variants == ("zeta", "alpha", "empty")
    empty = row(report, "m", "empty")
    assert empty["n_variant"] == 0 and "variant has no units" in empty["message"]
    assert empty["p_value"] is None and empty["p_value_holm"] is None
    assert exp.srm.counts["empty"] == 0 and exp.srm.flag
    assert "sample ratio mismatch" in row(report, "m", "alpha")["message"]
    check_json(report)
    con.close()


# ------------------------------------------------------------ analyst table


def analyst_units(n: int = 2000, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pre = rng.gamma(2.0, 5.0, n)
    variant = rng.choice(["a_ctl", "b_new"], n)
    value = 0.8 * pre + rng.normal(0, 3, n) + np.where(variant == "b_new", 1.0, 0.0)
    return pd.DataFrame({"unit_id": np.arange(n), "variant": variant, "value": value,
                         "pre_value": pre})


def long_format(units: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each unit's value and pre_value split across two rows (the table sums them)."""
    first = units.assign(value=units["value"] * 0.25, pre_value=units["pre_value"] * 0.5)
    second = units.assign(value=units["value"] * 0.75, pre_value=units["pre_value"] * 0.5)
    return pd.concat([first, second], ignore_index=True).assign(metric=metric)[
        ["unit_id", "variant", "metric", "value", "pre_value"]]


def test_parquet_table_cuped_equals_ols(tmp_path: Path) -> None:
    units = analyst_units()
    path = tmp_path / "input.parquet"
    long_format(units, "spend").to_parquet(path)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW experiment_input AS SELECT * FROM read_parquet('{path}')")
    report = analyze_experiments(con, source="table", name="pricing")
    exp = report.experiments[0]
    assert exp.name == "pricing" and exp.control == "a_ctl"  # first by name
    r = row(report, "spend", "b_new")
    treat = (units["variant"] == "b_new").to_numpy(float)
    fit = sm.OLS(units["value"].to_numpy(),
                 np.column_stack([np.ones(len(units)), treat, units["pre_value"]])).fit()
    assert r["method"] == "cuped"
    close(r["abs_effect"], fit.params[1])
    close(r["theta"], fit.params[2])
    assert r["variance_reduction"] > 0.5 and r["abs_ci"][0] > 0
    assert r["n_control"] + r["n_variant"] == len(units)
    plain = analyze_experiments(con, source="table", cuped=False)
    p = row(plain, "spend", "b_new")
    a = units.loc[units["variant"] == "a_ctl", "value"].to_numpy()
    b = units.loc[units["variant"] == "b_new", "value"].to_numpy()
    close(p["p_value"], ttest_ind(b, a, usevar="unequal")[1])
    assert p["method"] == "welch"
    check_json(report)


def test_csv_table_without_pre_value(tmp_path: Path) -> None:
    units = analyst_units(500, seed=12)
    path = tmp_path / "input.csv"
    long_format(units, "clicks").drop(columns="pre_value").to_csv(path, index=False)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW experiment_input AS SELECT * FROM read_csv_auto('{path}')")
    report = analyze_experiments(con, source="table", cuped=True, control="b_new")
    r = row(report, "clicks", "a_ctl")
    assert r["method"] == "welch" and r["abs_effect"] < 0
    assert "pre_value" in (report.experiments[0].message or "")
    a = units.loc[units["variant"] == "b_new", "value"].to_numpy()
    b = units.loc[units["variant"] == "a_ctl", "value"].to_numpy()
    close(r["p_value"], ttest_ind(b, a, usevar="unequal")[1])
    close(r["abs_effect"], b.mean() - a.mean())


def test_table_edge_cases_give_messages() -> None:
    frame = pd.DataFrame([
        # metric 'flat': zero variance; 'zero': control mean 0; 'nan': a NaN value
        *[(u, "control", "flat", 1.0) for u in range(4)],
        *[(u, "treat", "flat", 1.0) for u in range(4, 8)],
        *[(u, "control", "zero", 0.0) for u in range(4)],
        *[(u, "treat", "zero", float(u)) for u in range(4, 8)],
        (0, "control", "nan", float("nan")), (1, "control", "nan", 2.0),
        (2, "control", "nan", 3.0), (5, "treat", "nan", 4.0), (6, "treat", "nan", 1.0),
        (8, "lonely", "flat", 1.0),               # a variant with one unit
        (9, "control", "flat", 1.0), (9, "treat", "flat", 1.0),  # in two variants
    ], columns=["unit_id", "variant", "metric", "value"])
    con = duckdb.connect()
    con.register("experiment_input", frame)
    report = analyze_experiments(con, source="table")
    exp = report.experiments[0]
    assert exp.excluded_units == 1 and "several variants" in (exp.message or "")
    flat = row(report, "flat", "treat")
    assert flat["p_value"] is None and "zero variance" in flat["message"]
    zero = row(report, "zero", "treat")
    assert zero["p_value"] is not None and zero["rel_effect"] is None
    assert "control mean is 0" in zero["message"]
    nan = row(report, "nan", "treat")
    assert "non-finite" in nan["message"] and nan["p_value"] is not None
    # Issue 16.1: unit 0's only row is NaN: it leaves the metric instead of counting as 0
    assert nan["mean_control"] == pytest.approx(5.0 / 3) and nan["n_control"] == 3
    assert "every value was non-finite" in nan["message"] and "control 1" in nan["message"]
    lonely = row(report, "flat", "lonely")
    assert lonely["n_variant"] == 1 and "at least 2" in lonely["message"]
    assert exp.srm.counts == {"control": 4, "lonely": 1, "treat": 4}
    check_json(report)


def test_winsorize_equals_numpy_clipping() -> None:
    rng = np.random.default_rng(13)
    n = 1000
    frame = pd.DataFrame({"unit_id": np.arange(n), "variant": rng.choice(["control", "t"], n),
                          "metric": "rev", "value": rng.pareto(1.5, n)})
    frame = frame[frame.index % 10 != 0]  # units without rows count as 0 before clipping
    units = pd.DataFrame({"unit_id": np.arange(n)}).merge(
        frame[["unit_id", "variant"]], how="left", on="unit_id")
    con = duckdb.connect()
    con.register("experiment_input", frame)
    report = analyze_experiments(con, source="table", winsorize=0.95)
    vals = frame.set_index("unit_id")["value"]
    present = units.dropna(subset=["variant"]).copy()
    present["value"] = present["unit_id"].map(vals).fillna(0.0)
    lo, hi = np.quantile(present["value"], [0.05, 0.95])
    clipped = present["value"].clip(lo, hi)
    a = clipped[present["variant"] == "control"].to_numpy()
    b = clipped[present["variant"] == "t"].to_numpy()
    r = row(report, "rev", "t")
    close(r["mean_control"], a.mean())
    close(r["p_value"], ttest_ind(b, a, usevar="unequal")[1])
    with pytest.raises(ValueError, match="winsorize"):
        analyze_experiments(con, source="table", winsorize=0.3)


def test_ratio_metric_through_sql() -> None:
    rng = np.random.default_rng(14)
    n = 1500
    sessions = rng.poisson(3, n) + 1.0
    variant = rng.choice(["control", "t"], n)
    clicks = rng.binomial(sessions.astype(int), np.where(variant == "t", 0.3, 0.25)).astype(float)
    frame = pd.concat([
        pd.DataFrame({"unit_id": np.arange(n), "variant": variant, "metric": "sessions",
                      "value": sessions}),
        pd.DataFrame({"unit_id": np.arange(n), "variant": variant, "metric": "clicks",
                      "value": clicks}),
    ])
    con = duckdb.connect()
    con.register("experiment_input", frame)
    report = analyze_experiments(con, source="table",
                                 ratios={"ctr": ("clicks", "sessions"), "bad": ("clicks", "x")})
    r = row(report, "ctr", "t")
    c, t = variant == "control", variant == "t"
    ref = ratio_test(PairStats.of(clicks[c], sessions[c]), PairStats.of(clicks[t], sessions[t]))
    close(r["abs_effect"], ref.abs_effect)
    close(r["p_value"], ref.p_value)
    close(r["abs_ci"][0], ref.abs_ci[0])  # type: ignore[index]
    assert r["abs_effect"] > 0 and r["numerator"] == "clicks"
    bad = row(report, "bad", "t")
    assert bad["p_value"] is None and "'x'" in bad["message"]
    assert len(report.experiments[0].results) == 4
    check_json(report)


def test_table_with_no_rows() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE experiment_input (unit_id INT, variant VARCHAR, metric VARCHAR,"
                " value DOUBLE)")
    report = analyze_experiments(con, source="table")
    exp = report.experiments[0]
    assert exp.results == () and exp.message
    assert exp.srm.message == "no units"
    check_json(report)


def test_table_missing_columns_is_a_clear_error() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE experiment_input (unit_id INT, variant VARCHAR, value DOUBLE)")
    with pytest.raises(ValueError, match="metric"):
        analyze_experiments(con, source="table")
