"""A recorded DuckDB file with something to show in every report kind (tests and screenshots).

One fraud route with a primary (fraud-v7), a candidate shadow (fraud-v8) and a replica of
the primary (the noise floor), decoded JSON answers (the fields report), labelled outcomes
(the quality report), inputs that drift halfway through (the drift report); one ranking
route running an A/B experiment with a revenue outcome (the experiment report).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from sidecar.sink.schema import migrate

__all__ = ["CANARY", "FRAUD", "KINDS", "RANK", "build_showcase"]

FRAUD = "/fraud.Model/Predict"
RANK = "/rank.Model/Score"
CANARY = "/score.Model/Rank"
KINDS = ("divergence", "experiment", "drift", "quality", "fields")
T0 = datetime(2026, 1, 5)

_CONFIG = {"routes": [
    {"match": FRAUD, "primary": "fraud-v7",
     "shadows": [{"backend": "fraud-v8"},
                 {"backend": "fraud-v7-replica", "replica": True, "replica_of": "fraud-v7"}]},
    {"match": RANK, "primary": "rank-a",
     "experiment": {"name": "ranker-ab", "variants": [
         {"name": "control", "backend": "rank-a", "weight": 50},
         {"name": "treat", "backend": "rank-b", "weight": 50}]}},
    {"match": CANARY, "primary": "score-v1",
     "canary": {"stable": "score-v1", "candidate": "score-v2", "steps": [10, 50, 100]}},
]}


def _fraud(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    amount = rng.lognormal(3.0, 1.0, n)
    age = rng.normal(40, 12, n)
    later = np.arange(n) >= n // 2
    amount = np.where(later, amount * 1.6, amount)  # the inputs drift halfway through
    risk = 1 / (1 + np.exp(-(np.log(amount) - 3.2) * 1.5 + (age - 40) / 30))
    label = (rng.random(n) < risk).astype(float)
    v7 = np.clip(risk + rng.normal(0, 0.08, n), 0.001, 0.999)
    v8 = np.clip(risk + rng.normal(0.03, 0.12, n), 0.001, 0.999)
    ts = [T0 + timedelta(seconds=30 * i) for i in range(n)]
    ids = [f"f{i}" for i in range(n)]
    requests = pd.DataFrame({"request_id": ids, "ts": ts, "route": FRAUD, "amount": amount,
                             "age": age})
    frames = []
    for backend, version, role, score, base in (
            ("fraud-v7", "7.0.1", "primary", v7, 6.0), ("fraud-v8", "8.0.0", "shadow", v8, 9.0),
            ("fraud-v7-replica", "7.0.1", "shadow", v7, 6.2)):
        decision = np.where(score > 0.5, "deny", "approve")
        frames.append(pd.DataFrame({
            "request_id": ids, "ts": ts, "route": FRAUD, "backend": backend,
            "backend_version": version, "role": role, "served": role == "primary",
            "status": "OK", "latency_ms": base + rng.gamma(2.0, 1.5, n), "score": score,
            "label": decision,
            "response_json": [json.dumps({"score": round(float(s), 6), "decision": d,
                                         "reason": "amount" if s > 0.7 else "none"})
                              for s, d in zip(score, decision, strict=True)]}))
    calls = pd.concat(frames, ignore_index=True)
    outcomes = pd.DataFrame({"event_id": [f"l{i}" for i in range(n)], "unit_id": None,
                             "request_id": ids, "metric": "label", "value": label,
                             "ts": [t + timedelta(minutes=5) for t in ts]})
    return requests, calls, outcomes


def _experiment(rng: np.random.Generator, units: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    variant = rng.choice(["control", "treat"], units)
    first = [T0 + timedelta(seconds=int(s)) for s in rng.integers(0, 86400, units)]
    requests = pd.DataFrame({"request_id": [f"x{i}" for i in range(units)], "ts": first,
                             "route": RANK, "unit_id": [f"u{i}" for i in range(units)],
                             "experiment": "ranker-ab", "variant": variant, "exposed": True})
    revenue = rng.exponential(10.0, units) + np.where(variant == "treat", 1.5, 0.0)
    clicks = (rng.random(units) < np.where(variant == "treat", 0.31, 0.30)).astype(float)
    rows = []
    for metric, values in (("revenue", revenue), ("clicked", clicks)):
        rows.append(pd.DataFrame({
            "event_id": [f"{metric}{i}" for i in range(units)], "unit_id": requests["unit_id"],
            "request_id": None, "metric": metric, "value": values,
            "ts": [t + timedelta(minutes=10) for t in first]}))
    return requests, pd.concat(rows, ignore_index=True)


def _canary(rng: np.random.Generator, units: int) -> tuple[pd.DataFrame, pd.DataFrame,
                                                           pd.DataFrame]:
    """Two canary steps (10 %, then 50 % of units on score-v2); the candidate errs more."""
    rows, outcomes = [], []
    for step, (share, start) in enumerate(((0.1, T0), (0.5, T0 + timedelta(hours=12)))):
        for u in range(units):
            arm = "canary" if rng.random() < share else "stable"
            ts = start + timedelta(seconds=int(rng.integers(0, 40000)))
            bad = rng.random() < (0.04 if arm == "canary" else 0.01)
            rows.append({"request_id": f"c{step}-{u}", "ts": ts, "route": CANARY,
                         "unit_id": f"cu{step}-{u}", "experiment": "canary", "variant": arm,
                         "exposed": True, "status": "UNAVAILABLE" if bad else "OK",
                         "latency_ms": float(rng.gamma(3.0, 2.0) + (1.0 if arm == "canary"
                                                                      else 0.0))})
            outcomes.append({"event_id": f"cv{step}-{u}", "unit_id": f"cu{step}-{u}",
                             "request_id": None, "metric": "converted",
                             "value": float(rng.random() < 0.2),
                             "ts": ts + timedelta(minutes=3)})
    states = pd.DataFrame({"ts": [T0, T0 + timedelta(hours=12)], "route": CANARY,
                           "canary_key": "k", "state": "running", "step_index": [0, 1]})
    return pd.DataFrame(rows), pd.DataFrame(outcomes), states


def build_showcase(path: Path, *, n: int = 2000, units: int = 4000, seed: int = 7) -> Path:
    """Write the showcase DuckDB file at ``path`` and return it."""
    rng = np.random.default_rng(seed)
    f_req, f_calls, f_out = _fraud(rng, n)
    x_req, x_out = _experiment(rng, units)
    c_req, c_out, c_states = _canary(rng, units // 2)
    con = duckdb.connect(str(path))
    try:
        migrate(con)
        con.execute("INSERT INTO configs VALUES ('cfg1', ?, ?)",
                    [T0 - timedelta(days=1), json.dumps(_CONFIG)])
        con.register("f_req", f_req)
        con.execute("""
            INSERT INTO requests (request_id, ts, route, method, status, inputs)
            SELECT request_id, ts, route, route, 'OK',
                   [{'name': 'amount', 'datatype': 'FP64', 'shape': [1], 'data': [amount],
                     'text': NULL},
                    {'name': 'age', 'datatype': 'FP64', 'shape': [1], 'data': [age],
                     'text': NULL}]
            FROM f_req""")
        con.register("x_req", x_req)
        con.execute("INSERT INTO requests (request_id, ts, route, method, status, unit_id, "
                    "experiment, variant, exposed) SELECT request_id, ts, route, route, 'OK', "
                    "unit_id, experiment, variant, exposed FROM x_req")
        con.register("c_req", c_req)
        con.execute("INSERT INTO requests (request_id, ts, route, method, status, unit_id, "
                    "experiment, variant, exposed, latency_ms) SELECT request_id, ts, route, "
                    "route, status, unit_id, experiment, variant, exposed, latency_ms FROM c_req")
        con.register("c_states", c_states)
        con.execute("INSERT INTO canary_state (ts, route, canary_key, state, step_index) "
                    "SELECT ts, route, canary_key, state, step_index FROM c_states")
        con.register("f_calls", f_calls)
        con.execute("INSERT INTO calls (request_id, ts, route, method, backend, backend_version, "
                    "role, served, status, latency_ms, score, label, response_json) "
                    "SELECT request_id, ts, route, route, backend, backend_version, role, "
                    "served, status, latency_ms, score, label, response_json FROM f_calls")
        outcomes = pd.concat([f_out, x_out, c_out], ignore_index=True)
        con.register("outcomes_df", outcomes)
        con.execute("INSERT INTO outcomes (event_id, unit_id, request_id, metric, value, ts) "
                    "SELECT event_id, unit_id, request_id, metric, value, ts FROM outcomes_df")
    finally:
        con.close()
    return path
