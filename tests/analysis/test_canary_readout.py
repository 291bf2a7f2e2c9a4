"""Issue 16.5: canaries read per step, stable against candidate, each unit in the arm of its
first exposure within the step. References are per-unit arrays built here in pandas."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from analysis.canary_readout import METHOD, analyze_canaries
from analysis.experiment import analyze_experiments
from analysis.significance import ratio_test, welch_test
from analysis.stats import PairStats, SampleStats
from sidecar.sink.schema import migrate
from tests.analysis.test_engines import assert_same

T0 = datetime(2026, 6, 1)
ROUTE = "/inference.GRPCInferenceService/ModelInfer"
CONFIG = {"routes": [{"match": ROUTE, "primary": "fraud-v7",
                      "canary": {"stable": "fraud-v7", "candidate": "fraud-v8",
                                 "steps": [10, 50, 100]}}]}
RTOL = 1e-9


def canary_db(path: Path) -> tuple[duckdb.DuckDBPyConnection, pd.DataFrame, pd.DataFrame]:
    """Two steps (10% then 50%); in step 1 some stable units move to the candidate; the
    candidate fails more often and is slower in step 1."""
    rng = np.random.default_rng(55)
    rows = []
    for step, share, start in ((0, 0.1, T0), (1, 0.5, T0 + timedelta(hours=1))):
        for u in range(400):
            bucket = (u * 7919 % 1000) / 1000
            for k in range(int(rng.integers(1, 5))):
                ts = start + timedelta(seconds=int(rng.integers(0, 3500)))
                # in step 1, a quarter of the units first seen on stable move on a later call
                moved = step == 1 and 0.5 <= bucket < 0.6 and k > 0
                arm = "canary" if bucket < share or moved else "stable"
                fail = rng.random() < (0.15 if arm == "canary" and step == 1 else 0.03)
                latency = rng.gamma(4, 3) * (1.3 if arm == "canary" else 1.0)
                rows.append((f"r{step}-{u}-{k}", ts, ROUTE, f"u{u}", "canary", arm, True,
                             "UNAVAILABLE" if fail else "OK", float(latency), "v1", step))
    requests = pd.DataFrame(rows, columns=["request_id", "ts", "route", "unit_id", "experiment",
                                           "variant", "exposed", "status", "latency_ms",
                                           "config_version", "step"])
    outcomes = pd.DataFrame({
        "event_id": [f"e{i}" for i in range(len(requests))],
        "unit_id": requests["unit_id"], "metric": "converted",
        "value": (rng.random(len(requests)) < 0.2).astype(float),
        "ts": requests["ts"] + timedelta(seconds=30)})
    con = duckdb.connect(str(path))
    migrate(con)
    con.execute("INSERT INTO configs VALUES ('v1', ?, ?)", [T0 - timedelta(days=1),
                                                           json.dumps(CONFIG)])
    con.executemany("INSERT INTO canary_state (ts, route, state, step_index) VALUES (?, ?, ?, ?)",
                    [(T0, ROUTE, "running", 0), (T0 + timedelta(hours=1), ROUTE, "running", 1)])
    con.register("req_df", requests.drop(columns="step"))
    con.execute("INSERT INTO requests BY NAME SELECT * FROM req_df")
    con.register("out_df", outcomes)
    con.execute("INSERT INTO outcomes BY NAME SELECT * FROM out_df")
    return con, requests, outcomes


def reference_units(requests: pd.DataFrame, outcomes: pd.DataFrame, step: int) -> pd.DataFrame:
    req = requests[requests["step"] == step].sort_values("ts")
    units = req.groupby("unit_id").agg(
        arm=("variant", "first"), t0=("ts", "min"), n_req=("request_id", "size"),
        n_err=("status", lambda s: float((s != "OK").sum())), lat=("latency_ms", "sum"))
    end = T0 + timedelta(hours=1) if step == 0 else datetime(9999, 12, 31)
    out = outcomes.merge(units[["t0"]], left_on="unit_id", right_index=True)
    out = out[(out["ts"] >= out["t0"]) & (out["ts"] < end)]
    units["converted"] = out.groupby("unit_id")["value"].sum().reindex(units.index,
                                                                        fill_value=0.0)
    return units


def test_canary_steps_stable_against_candidate(tmp_path: Path) -> None:
    """Issue 16.5: before, the canary read as a one-variant experiment ("counts
    {'canary': 48}", an empty table); now each step compares the arms."""
    con, requests, outcomes = canary_db(tmp_path / "canary.duckdb")
    report = analyze_canaries(con)
    assert report is not None
    d = report.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["method"] == METHOD and METHOD in d["notes"]
    (route,) = d["routes"]
    assert (route["route"], route["stable"], route["candidate"]) == (ROUTE, "fraud-v7",
                                                                    "fraud-v8")
    assert [s["index"] for s in route["steps"]] == [0, 1]
    assert [s["share"] for s in route["steps"]] == [10.0, 50.0]
    for step in route["steps"]:
        units = reference_units(requests, outcomes, step["index"])
        stable, cand = units[units["arm"] == "stable"], units[units["arm"] == "canary"]
        assert step["units"] == {"stable": len(stable), "candidate": len(cand)}
        assert step["requests"] == {"stable": int(stable["n_req"].sum()),
                                    "candidate": int(cand["n_req"].sum())}
        results = {r["metric"]: r for r in step["results"]}
        err = ratio_test(PairStats.of(stable["n_err"], stable["n_req"]),
                         PairStats.of(cand["n_err"], cand["n_req"]))
        assert results["error_rate"]["abs_effect"] == pytest.approx(err.abs_effect, rel=RTOL)
        assert results["error_rate"]["p_value"] == pytest.approx(err.p_value, rel=RTOL)
        lat = ratio_test(PairStats.of(stable["lat"], stable["n_req"]),
                         PairStats.of(cand["lat"], cand["n_req"]))
        assert results["latency_ms_mean"]["abs_effect"] == pytest.approx(lat.abs_effect,
                                                                          rel=RTOL)
        conv = welch_test(SampleStats.of(stable["converted"]), SampleStats.of(cand["converted"]))
        assert results["converted"]["p_value"] == pytest.approx(conv.p_value, rel=RTOL)
        assert results["converted"]["mean_control"] == pytest.approx(conv.mean_control,
                                                                     rel=RTOL)
    moved = route["steps"][1]
    assert moved["switched_units"] > 0  # counted once, in the arm of first exposure
    assert moved["results"][0]["abs_effect"] > 0.05 and moved["results"][0]["p_value"] < 0.01
    assert moved["latency_ms"]["candidate"]["p50"] > moved["latency_ms"]["stable"]["p50"]

    # The experiment report carries the readout and no longer reads "canary" as one.
    exp = analyze_experiments(con)
    assert exp.experiments == ()
    assert exp.to_dict()["canaries"]["routes"][0]["route"] == ROUTE


@pytest.mark.parametrize("path", ["sql", "ibis"])
def test_without_canary_state_the_span_is_one_step(tmp_path: Path, path: str) -> None:
    """Without recorded canary state the span is one step, with its latency quantiles (the
    step's NULL index failed the quantiles' join: p50 and p99 were null)."""
    from analysis.canary_engine import analyze_canaries_engine
    from analysis.engine import duckdb_engine

    con, requests, _ = canary_db(tmp_path / "plain.duckdb")
    con.execute("DELETE FROM canary_state")
    report = (analyze_canaries(con) if path == "sql"
              else analyze_canaries_engine(duckdb_engine(con)))
    assert report is not None
    (step,) = report.routes[0].steps
    assert step.index is None and "one step" in (step.message or "")
    assert sum(step.units.values()) == requests["unit_id"].nunique()
    first = requests.sort_values("ts").groupby("unit_id")["variant"].first()
    arm = requests["unit_id"].map(first)
    for variant, name in (("stable", "stable"), ("canary", "candidate")):
        want = np.quantile(requests.loc[arm == variant, "latency_ms"], [0.5, 0.99])
        got = step.latency_ms[name]
        assert [got["p50"], got["p99"]] == pytest.approx(want.tolist(), rel=1e-12)
    empty = duckdb.connect()
    migrate(empty)
    assert analyze_canaries(empty) is None


def huge_mean_canary(path: Path, base: float) -> tuple[duckdb.DuckDBPyConnection, pd.DataFrame]:
    """One step; each unit one request and one outcome of ``base + N(0, 1)`` (the candidate
    0.05 higher); the latencies are per-request draws. Returns the requests with values."""
    rng = np.random.default_rng(23)
    n = 4000
    arm = np.where(rng.random(n) < 0.3, "canary", "stable")
    ts = [T0 + timedelta(seconds=int(s)) for s in rng.integers(0, 3000, n)]
    requests = pd.DataFrame({
        "request_id": [f"r{u}" for u in range(n)], "ts": ts, "route": ROUTE,
        "unit_id": [f"u{u}" for u in range(n)], "experiment": "canary", "variant": arm,
        "exposed": True, "status": "OK", "latency_ms": rng.gamma(4, 3, n),
        "config_version": "v1"})
    value = base + rng.normal(0, 1, n) + np.where(arm == "canary", 0.05, 0.0)
    outcomes = pd.DataFrame({"event_id": [f"e{u}" for u in range(n)],
                             "unit_id": requests["unit_id"], "metric": "revenue",
                             "value": value, "ts": requests["ts"] + timedelta(seconds=30)})
    con = duckdb.connect(str(path))
    migrate(con)
    con.execute("INSERT INTO configs VALUES ('v1', ?, ?)", [T0 - timedelta(days=1),
                                                           json.dumps(CONFIG)])
    con.execute("INSERT INTO canary_state (ts, route, state, step_index) VALUES (?, ?, ?, ?)",
                [T0, ROUTE, "running", 0])
    con.register("req_df", requests)
    con.execute("INSERT INTO requests BY NAME SELECT * FROM req_df")
    con.register("out_df", outcomes)
    con.execute("INSERT INTO outcomes BY NAME SELECT * FROM out_df")
    return con, requests.assign(value=value)


@pytest.mark.parametrize("path", ["sql", "ibis"])
def test_canary_outcomes_keep_their_digits_and_latency_quantiles_are_numpys(
        tmp_path: Path, path: str) -> None:
    """Issue 19.3's class in the canary readout: an outcome of 1e7 + N(0, 1) gets scipy's
    Welch standard error and effect to 1e-9 (raw sums lost about 2e-2 of its variance),
    on the SQL path and on the engine path; and each arm's latency p50/p99 are numpy's
    linear quantiles, read at order statistics (``quantile_cont`` held an arm's every
    request)."""
    from scipy import stats as sps

    from analysis.canary_engine import analyze_canaries_engine
    from analysis.engine import duckdb_engine

    base = 1e7
    con, requests = huge_mean_canary(tmp_path / "huge.duckdb", base)
    report = (analyze_canaries(con) if path == "sql"
              else analyze_canaries_engine(duckdb_engine(con)))
    assert report is not None
    (step,) = report.routes[0].steps
    results = {r.metric: r.comparison for r in step.results}
    a = requests.loc[requests.variant == "stable", "value"].to_numpy()
    b = requests.loc[requests.variant == "canary", "value"].to_numpy()
    revenue = results["revenue"]
    assert revenue.se == pytest.approx(float(np.hypot(sps.sem(a), sps.sem(b))), rel=RTOL)
    assert revenue.abs_effect == pytest.approx((b - base).mean() - (a - base).mean(), rel=RTOL)
    assert revenue.mean_control == pytest.approx(a.mean(), rel=1e-15)
    for variant, arm in (("stable", "stable"), ("canary", "candidate")):
        lat = requests.loc[requests.variant == variant, "latency_ms"].to_numpy()
        want = np.quantile(lat, [0.5, 0.99])
        got = step.latency_ms[arm]
        assert [got["p50"], got["p99"]] == pytest.approx(want.tolist(), rel=1e-12)


def test_canary_units_read_in_passes_give_the_same_readout(tmp_path: Path) -> None:
    """The canary readout's per-unit work past the memory limit runs in passes over shares of
    the unit ids (the experiment report's rule; one pass held every unit of a fleet's
    canary): a unit's requests and outcomes fall in one pass, so the per-arm sums, the
    latency quantiles and the outcome metric of three passes are the one-pass readout's,
    units that switched arm included."""
    con, _, _ = canary_db(tmp_path / "passes.duckdb")
    statements: list[str] = []

    class Recording:
        def __getattr__(self, name: str) -> object:
            return getattr(con, name)

        def execute(self, sql: str, *args: object) -> object:
            statements.append(str(sql))
            return con.execute(sql, *args)

    one = analyze_canaries(con)
    three = analyze_canaries(Recording(), passes=3)  # type: ignore[arg-type]
    assert one is not None and three is not None
    assert sum("% 3 = " in s for s in statements) >= 3  # three passes, each on its share
    assert not any("quantile_cont" in s for s in statements)
    want, got = one.to_dict(), three.to_dict()
    assert want["routes"][0]["steps"][1]["switched_units"] > 0
    assert_same(want, got)
    assert not con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()
