"""Issue 17 (analysis names models): a backend asked for another OIP model name is shown as
``backend@version (model)``; the divergence report pairs primary and shadow per route, and a
per-model route (``match: {method, model}``) is a route of its own."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd

from analysis.divergence import analyze_divergence
from analysis.load import open_source
from analysis.models import backend_labels, label
from analysis.report.divergence_page import pair_name
from sidecar.config import parse_config
from sidecar.config.load import canonical_json
from sidecar.sink.schema import migrate

INFER = "/inference.GRPCInferenceService/ModelInfer"
FRAUD, CREDIT = f"{INFER};model=fraud-lr", f"{INFER};model=credit"


def _db(path: Path) -> str:
    config = parse_config({
        "admin": {"listen": None},
        "backends": [
            {"name": "lr", "version": "1", "target": "127.0.0.1:1"},
            {"name": "gbm", "version": "2", "target": "127.0.0.1:1", "model": "fraud-gbm"},
            {"name": "rf", "version": "3", "target": "127.0.0.1:2", "model": "credit-rf"},
            {"name": "rf2", "version": "4", "target": "127.0.0.1:2", "model": "credit-rf2"},
        ],
        "routes": [
            {"match": {"method": INFER, "model": "fraud-lr"}, "primary": "lr", "codec": "oip",
             "shadows": [{"backend": "gbm"}]},
            {"match": {"method": INFER, "model": "credit"}, "primary": "rf", "codec": "oip",
             "shadows": [{"backend": "rf2"}, {"backend": "gbm"}]},
        ]}).config
    rows = []
    base = pd.Timestamp("2026-12-01")
    for i in range(20):
        route, primary, shadows = ((FRAUD, "lr", ["gbm"]) if i % 2 else
                                   (CREDIT, "rf", ["rf2", "gbm"]))
        for backend, role in [(primary, "primary"), *((s, "shadow") for s in shadows)]:
            score = (i % 5) / 5 + (0.01 if role == "shadow" else 0)
            rows.append({"request_id": f"r{i}", "ts": base + pd.Timedelta(seconds=i),
                         "route": route, "method": INFER, "backend": backend,
                         "backend_version": "x", "role": role, "served": role == "primary",
                         "status": "OK", "latency_ms": 2.0, "score": score,
                         "output": [1 - score, score], "label": str(int(score > 0.5)),
                         "config_version": "v1"})
    con = duckdb.connect(str(path))
    migrate(con)
    con.register("frame", pd.DataFrame(rows))
    con.execute("INSERT INTO calls BY NAME SELECT * FROM frame")
    con.execute("INSERT INTO configs VALUES ('v1', TIMESTAMP '2026-11-30', ?)",
                [canonical_json(config)])
    con.close()
    return str(path)


def test_labels_name_the_model() -> None:
    assert label("gbm", "2", "fraud-gbm") == "gbm@2 (fraud-gbm)"
    assert label("lr", "1", None) == "lr"


def test_divergence_pairs_per_route_and_model_with_labels(tmp_path: Path) -> None:
    path = _db(tmp_path / "m.duckdb")
    con = open_source(db=path)
    try:
        assert backend_labels(con) == {"gbm": "gbm@2 (fraud-gbm)", "rf": "rf@3 (credit-rf)",
                                       "rf2": "rf2@4 (credit-rf2)"}
        report = analyze_divergence(con).to_dict()
    finally:
        con.close()
    pairs = {(p["route"], p["primary"], p["shadow"]): p for p in report["pairs"]}
    assert set(pairs) == {(FRAUD, "lr", "gbm"), (CREDIT, "rf", "rf2"), (CREDIT, "rf", "gbm")}
    assert all(p["n"] == 10 for p in pairs.values())
    credit = pairs[(CREDIT, "rf", "rf2")]
    assert (credit["primary_label"], credit["shadow_label"]) == (
        "rf@3 (credit-rf)", "rf2@4 (credit-rf2)")
    assert pair_name(credit) == "rf@3 (credit-rf) → rf2@4 (credit-rf2)"
    assert pair_name(pairs[(FRAUD, "lr", "gbm")]) == "lr → gbm@2 (fraud-gbm)"


def test_no_configs_table_means_plain_names(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "empty.duckdb"))
    try:
        assert backend_labels(con) == {}
        con.execute("CREATE TABLE configs (config_version VARCHAR, ts TIMESTAMP, "
                    "config_json VARCHAR)")
        con.execute("INSERT INTO configs VALUES ('v', now(), 'not json'), ('w', now(), NULL)")
        assert backend_labels(con) == {}
    finally:
        con.close()
    assert json.dumps(label("a", None, "m")) == '"a (m)"'
