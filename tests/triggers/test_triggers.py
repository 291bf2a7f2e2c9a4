"""Each trigger kind fires on planted data and stays quiet on clean data (real DuckDB files)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from pydantic import TypeAdapter, ValidationError

from analysis.load import open_source
from sidecar.sink.schema import migrate
from sidecar.triggers import (
    TriggerConfig,
    TriggerResult,
    cross_check_triggers,
    evaluate_triggers,
)

NOW = datetime(2024, 6, 10, 12)
TRIGGERS = TypeAdapter(tuple[TriggerConfig, ...])
CONFIG = {"backends": [
    {"name": "old", "version": "1", "provenance": {"trained_at": "2024-01-02"}},
    {"name": "fresh", "version": "2", "provenance": {"trained_at": "2024-06-01",
                                                     "owner": "risk"}},
    {"name": "unknown-age", "version": "3", "provenance": None},
]}


def _insert(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    con.register("frame", frame)
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame").fetchall()
    con.unregister("frame")


def _requests(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for route, shift in (("/clean", 0.0), ("/drifted", 25.0)):
        for i in range(800):
            current = i >= 400
            ts = NOW - timedelta(hours=48) + timedelta(minutes=3.6 * i)
            amount = float(rng.normal(50 + shift * current, 10))
            rows.append({"request_id": f"{route}{i}", "ts": ts, "route": route, "inputs": [
                {"name": "amount", "datatype": "FP64", "shape": [1], "data": [amount],
                 "text": None}]})
    return pd.DataFrame(rows)


def _quality_calls(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = 400
    y = (rng.random(n) < 0.4).astype(float)
    good = np.clip(0.4 + 0.35 * (y - 0.4) + rng.normal(0, 0.15, n), 0.01, 0.99)
    bad = rng.uniform(0.01, 0.99, n)
    ids = [f"q{i}" for i in range(n)]
    ts = [NOW - timedelta(hours=3) + timedelta(seconds=20 * i) for i in range(n)]
    calls = pd.concat([
        pd.DataFrame({"request_id": ids, "ts": ts, "route": "/q", "backend": name,
                      "backend_version": "1", "role": role, "served": role == "primary",
                      "status": "OK", "score": score})
        for name, role, score in (("good", "primary", good), ("bad", "shadow", bad))])
    outcomes = pd.DataFrame({"event_id": ids, "request_id": ids, "metric": "label",
                             "value": y, "ts": NOW})
    return calls, outcomes


def _divergence_calls(rng: np.random.Generator) -> pd.DataFrame:
    n = 300
    ids = [f"d{i}" for i in range(n)]
    ts = [NOW - timedelta(hours=2) + timedelta(seconds=10 * i) for i in range(n)]
    base = rng.uniform(0, 1, n)
    twin = base + rng.normal(0, 0.001, n)
    rogue = np.where(rng.random(n) < 0.3, 1 - base, base)
    frames = []
    for name, role, score in (("a", "primary", base), ("b", "shadow", twin),
                              ("c", "shadow", rogue)):
        frames.append(pd.DataFrame({
            "request_id": ids, "ts": ts, "route": "/d", "backend": name,
            "backend_version": "1", "role": role, "served": role == "primary", "status": "OK",
            "score": score, "label": np.where(score > 0.5, "1", "0"),
            "output": [[1 - s, s] for s in score]}))
    return pd.concat(frames)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    rng = np.random.default_rng(42)
    path = tmp_path_factory.mktemp("triggers") / "recorded.duckdb"
    con = duckdb.connect(str(path))
    migrate(con)
    con.execute("INSERT INTO configs VALUES ('c1', ?, ?)",
                [NOW - timedelta(days=1), json.dumps(CONFIG)]).fetchall()
    _insert(con, "requests", _requests(rng))
    calls, outcomes = _quality_calls(rng)
    _insert(con, "calls", pd.concat([calls, _divergence_calls(rng)]))
    _insert(con, "outcomes", outcomes)
    con.close()
    source = open_source(db=str(path))
    yield source
    source.close()


def _run(con: duckdb.DuckDBPyConnection, items: list[dict[str, Any]],
         config: Any = None) -> dict[str, TriggerResult]:
    results = evaluate_triggers(con, TRIGGERS.validate_python(items), config, NOW)
    return {r.name: r for r in results}


def test_age(recorded: duckdb.DuckDBPyConnection) -> None:
    items = [{"name": n, "kind": "age", "backend": b, "max_age_days": 90}
             for n, b in (("stale", "old"), ("ok", "fresh"), ("blind", "unknown-age"),
                          ("ghost", "nope"))]
    for config in (CONFIG, json.dumps(CONFIG), None):  # None reads the configs table
        results = _run(recorded, items, config)
        assert results["stale"].fired and results["stale"].evidence["age_days"] == 160
        assert not results["ok"].fired and results["ok"].evidence["age_days"] == 9
        assert not results["blind"].fired and "no provenance" in results["blind"].message
        assert not results["ghost"].fired and "not in the config" in results["ghost"].message
    aware = evaluate_triggers(recorded, TRIGGERS.validate_python(items[:1]), CONFIG,
                              NOW.replace(tzinfo=UTC))
    assert aware[0].fired


def test_drift(recorded: duckdb.DuckDBPyConnection) -> None:
    common = {"kind": "drift", "features": ["amount"], "psi_max": 0.25, "ks_p_min": 1e-4,
              "window_h": 24}
    results = _run(recorded, [{**common, "name": "clean", "route": "/clean"},
                              {**common, "name": "drifted", "route": "/drifted"}])
    drifted, clean = results["drifted"], results["clean"]
    assert drifted.fired and "amount PSI" in drifted.message
    assert drifted.evidence["features"]["amount"]["n_current"] == 400
    assert not clean.fired and clean.evidence["features"]["amount"]["psi"] < 0.25
    event = drifted.as_event()
    assert event["kind"] == "trigger" and event["trigger_kind"] == "drift"
    json.dumps(event, allow_nan=False)


def test_quality(recorded: duckdb.DuckDBPyConnection) -> None:
    common = {"kind": "quality", "bound": {"auc_min": 0.7}, "window_h": 6}
    results = _run(recorded, [{**common, "name": "bad", "model": "bad"},
                              {**common, "name": "good", "model": "good"},
                              {**common, "name": "brier", "model": "bad",
                               "bound": {"brier_max": 0.2}},
                              {**common, "name": "few", "model": "bad", "window_h": 1,
                               "route": "/q", "min_n": 100}])
    assert results["bad"].fired and "auc" in results["bad"].message
    assert not results["good"].fired and results["good"].evidence["models"][0]["auc"] > 0.7
    assert results["brier"].fired
    few = results["few"]  # the last hour holds 40 labelled requests: too few to judge
    assert not few.fired and few.evidence["models"][0]["n"] == 40
    assert few.message == "fewer than 100 labelled requests"


def test_divergence(recorded: duckdb.DuckDBPyConnection) -> None:
    common = {"kind": "divergence", "route": "/d", "max_disagreement": 0.1,
              "max_mean_abs_diff": 0.05, "window_h": 6}
    results = _run(recorded, [{**common, "name": "twin", "shadow": "b"},
                              {**common, "name": "rogue", "shadow": "c"},
                              {**common, "name": "absent", "shadow": "zz"}])
    assert not results["twin"].fired and results["twin"].message == "within bounds"
    assert results["rogue"].fired and "disagreement" in results["rogue"].message
    assert results["rogue"].evidence["pairs"][0]["n"] == 300
    assert not results["absent"].fired


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="exactly one of auc_min"):
        TRIGGERS.validate_python([{"name": "q", "kind": "quality", "model": "m",
                                   "bound": {"auc_min": 0.7, "mae_max": 3}}])
    with pytest.raises(ValidationError, match="psi_max or ks_p_min"):
        TRIGGERS.validate_python([{"name": "d", "kind": "drift", "route": "/r"}])
    with pytest.raises(ValidationError, match="max_disagreement or max_mean_abs_diff"):
        TRIGGERS.validate_python([{"name": "d", "kind": "divergence", "route": "/r",
                                   "shadow": "s"}])
    with pytest.raises(ValidationError):
        TRIGGERS.validate_python([{"name": "x", "kind": "weather"}])
    triggers = TRIGGERS.validate_python([
        {"name": "a", "kind": "age", "backend": "m", "max_age_days": 30},
        {"name": "a", "kind": "divergence", "route": "/nope", "shadow": "s",
         "max_disagreement": 0.1},
    ])
    problems = cross_check_triggers(triggers, backends={"m", "s"}, routes={"/r"})
    assert problems == [("triggers[1].name", "duplicate trigger name 'a'"),
                        ("triggers[1].route", "unknown route '/nope' (known: /r)")]
