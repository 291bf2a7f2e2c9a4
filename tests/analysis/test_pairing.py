"""Issue 16 items 6-8 on divergence: a replica is paired only with the backend it copies,
each route's newest config version by default, every null with its reason, tiny p-values as
a bound, and the sign conventions in the report itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from analysis.divergence import analyze_divergence
from analysis.field_diff import analyze_field_diff
from analysis.load import open_source
from sidecar.config import parse_config
from sidecar.errors import ConfigError
from sidecar.sink.schema import migrate
from tests.conftest import sidecar_config

ROUTE = "/inference.GRPCInferenceService/ModelInfer"


def experiment_calls(n: int = 600, seed: int = 3, versions: bool = False) -> pd.DataFrame:
    """An A/B route: gbm (primary) or lr (variant) serves; every request is mirrored to
    the candidate nn and to lr-replica, a second copy of lr."""
    rng = np.random.default_rng(seed)
    rows = []
    base = pd.Timestamp("2026-01-01")
    version = {"gbm": "g1", "lr": "l1", "lr-replica": "l1", "nn": "n1"}
    for i in range(n):
        served = "lr" if i % 2 else "gbm"
        truth = float(rng.random())
        scores = {"gbm": truth, "lr": truth + float(rng.normal(0, 0.2)),
                  "nn": truth + float(rng.normal(0.05, 0.1))}
        scores["lr-replica"] = scores["lr"] + float(rng.normal(0, 1e-4))
        for backend, role in ((served, "primary" if served == "gbm" else "variant"),
                              ("nn", "shadow"), ("lr-replica", "shadow")):
            rows.append({"request_id": f"q{i}", "ts": base + pd.Timedelta(seconds=i),
                         "route": ROUTE, "backend": backend, "role": role,
                         "served": role != "shadow", "status": "OK", "latency_ms": 5.0,
                         "score": scores[backend], "config_version": "c1",
                         "backend_version": version[backend] if versions else None,
                         "response_json": json.dumps({"s": round(scores[backend], 1)})})
    return pd.DataFrame(rows)


def make_db(path: Path, frame: pd.DataFrame, replica_of: str | None) -> str:
    shadow: dict[str, Any] = {"backend": "lr-replica", "replica": True}
    if replica_of:
        shadow["replica_of"] = replica_of
    config = {"routes": [{"match": ROUTE, "primary": "gbm",
                          "shadows": [{"backend": "nn"}, shadow]}]}
    con = duckdb.connect(str(path))
    migrate(con)
    con.register("frame", frame)
    con.execute("INSERT INTO calls BY NAME SELECT * FROM frame")
    con.execute("INSERT INTO configs VALUES ('c1', TIMESTAMP '2025-12-31', ?)",
                [json.dumps(config)])
    con.close()
    return str(path)


def pairs_of(report: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p["primary"], p["shadow"]) for p in report["pairs"]}


@pytest.mark.parametrize(("replica_of", "versions"), [("lr", False), (None, True)])
def test_replica_is_compared_only_with_what_it_copies(tmp_path: Path, replica_of: str | None,
                                                      versions: bool) -> None:
    """Issue 16.6: experiments produced "gbm -> lr-replica (replica)" and a wrong floor."""
    path = make_db(tmp_path / "ab.duckdb", experiment_calls(versions=versions), replica_of)
    report = analyze_divergence(open_source(db=path)).to_dict()
    json.dumps(report, allow_nan=False)
    assert pairs_of(report) == {("gbm", "nn"), ("lr", "nn"), ("lr", "lr-replica")}
    assert "replica lr-replica was mirrored on 300 request(s) served by gbm" in report["message"]
    by = {(p["primary"], p["shadow"]): p for p in report["pairs"]}
    floor = by[("lr", "nn")]["noise_floor"]
    assert floor["backends"] == ["lr-replica"] and floor["mae"] < 1e-3
    assert by[("gbm", "nn")]["noise_floor"] is None
    assert "no pairs with gbm" in by[("gbm", "nn")]["null_reasons"]["noise_floor"]
    assert "is the replica" in by[("lr", "lr-replica")]["null_reasons"]["noise_floor"]
    fields = analyze_field_diff(open_source(db=path)).to_dict()
    assert ("gbm", "lr-replica") not in {(p["primary"], p["shadow"]) for p in fields["pairs"]}
    gbm_nn = next(p for p in fields["pairs"] if (p["primary"], p["shadow"]) == ("gbm", "nn"))
    assert gbm_nn["replica"] is None  # no floor borrowed from another primary's replica


def test_replica_of_must_name_a_backend(tmp_path: Path) -> None:
    data = sidecar_config(tmp_path / "x.duckdb", {"a": "127.0.0.1:1", "b": "127.0.0.1:2"},
                          [{"match": ROUTE, "primary": "a",
                            "shadows": [{"backend": "b", "replica": True, "replica_of": "zz"}]}])
    with pytest.raises(ConfigError, match="replica_of"):
        parse_config(data)
    data["routes"][0]["shadows"][0]["replica_of"] = "a"
    parse_config(data)


def test_nulls_have_reasons_and_tiny_p_is_a_bound(tmp_path: Path) -> None:
    """Issue 16.8: js_divergence, noise_floor and identical were null without a word and
    ks_p underflowed to 0.0; the sign conventions were only in docs/report-json.md."""
    rng = np.random.default_rng(8)
    n = 20_000  # above SCIPY_MAX_N: the merged KS path, whose p underflows
    rows = []
    for i in range(n):
        p = float(rng.normal(0, 1))
        for backend, role, score in (("a", "primary", p), ("b", "shadow", p + 3.0)):
            rows.append({"request_id": f"q{i}", "ts": pd.Timestamp("2026-01-01"),
                         "route": ROUTE, "backend": backend, "role": role,
                         "served": role == "primary", "status": "OK", "latency_ms": 1.0,
                         "score": score})
    path = tmp_path / "shift.duckdb"
    con = duckdb.connect(str(path))
    migrate(con)
    con.register("frame", pd.DataFrame(rows))
    con.execute("INSERT INTO calls BY NAME SELECT * FROM frame")
    con.close()
    report = analyze_divergence(open_source(db=str(path))).to_dict()
    (pair,) = report["pairs"]
    assert pair["distribution"]["ks_p"] == 1e-300 and pair["distribution"]["ks_p_is_bound"]
    reasons = pair["null_reasons"]
    assert set(reasons) == {"classes", "js_divergence", "noise_floor", "identical"}
    assert "no replica shadow" in reasons["noise_floor"]
    assert "output vectors" in reasons["js_divergence"]
    assert "response hash" in reasons["identical"]
    assert any("d = shadow - primary" in note for note in report["notes"])
    assert report["schema"] == "shadowcar.report.divergence/2"


def test_divergence_takes_the_newest_config_version(tmp_path: Path) -> None:
    """Issue 16.7 for divergence: calls of an older config version are left out by default."""
    old = experiment_calls(n=200, seed=4).assign(config_version="c0",
                                                 ts=lambda f: f["ts"] - pd.Timedelta(days=1))
    old["request_id"] = "old-" + old["request_id"]
    frame = pd.concat([old, experiment_calls()], ignore_index=True)
    path = make_db(tmp_path / "v.duckdb", frame, "lr")
    con = open_source(db=path)
    report = analyze_divergence(con).to_dict()
    nn = next(p for p in report["pairs"] if (p["primary"], p["shadow"]) == ("gbm", "nn"))
    assert nn["n"] == 300
    assert report["versions"]["routes"][ROUTE] == {"kept": ["c1"], "left_out": ["c0"]}
    both = analyze_divergence(con, all_versions=True).to_dict()
    nn = next(p for p in both["pairs"] if (p["primary"], p["shadow"]) == ("gbm", "nn"))
    assert nn["n"] == 400
    only_old = analyze_divergence(con, version="c0").to_dict()
    assert {p["n"] for p in only_old["pairs"]} == {100}
    fields = analyze_field_diff(con).to_dict()
    assert fields["versions"]["routes"][ROUTE] == {"kept": ["c1"], "left_out": ["c0"]}
    assert {p["n"] for p in fields["pairs"]} == {300}
    assert {p["n"] for p in analyze_field_diff(con, all_versions=True).to_dict()["pairs"]} == {
        400}
