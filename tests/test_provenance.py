"""Provenance validation and the model listing over a real recorded DuckDB file."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import duckdb
import pytest
from pydantic import ValidationError

from analysis.load import open_source
from sidecar.provenance import ModelProvenance, models_listing
from sidecar.sink.schema import migrate

PROVENANCE = {
    "training_data_window": {"start": "2024-01-01", "end": "2024-03-31"},
    "code_version": "git:4f2a9c1",
    "parameters": {"max_depth": 6, "eta": 0.1},
    "evaluation": {"auc": 0.912, "dataset": "holdout-2024q1"},
    "owner": "risk-ml",
    "trained_at": "2024-04-02",
}


def _config(v8_provenance: dict[str, object] | None) -> str:
    backends: list[dict[str, object]] = [
        {"name": "fraud-v7", "version": "7.0.1", "target": "a:1", "provenance": PROVENANCE},
        {"name": "fraud-v8", "version": "8.0.0", "target": "b:1", "provenance": v8_provenance},
    ]
    return json.dumps({"backends": backends, "routes": []})


def test_provenance_model() -> None:
    model = ModelProvenance.model_validate(PROVENANCE)
    assert model.trained_at == date(2024, 4, 2)
    assert model.training_data_window is not None
    assert model.training_data_window.end == date(2024, 3, 31)
    with pytest.raises(ValidationError, match="end is before start"):
        ModelProvenance.model_validate(
            {"training_data_window": {"start": "2024-02-01", "end": "2024-01-01"}})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ModelProvenance.model_validate({"trainer": "x"})
    assert ModelProvenance().parameters == {}


def test_models_listing(tmp_path: Path) -> None:
    path = tmp_path / "rec.duckdb"
    con = duckdb.connect(str(path))
    migrate(con)
    con.execute("INSERT INTO configs VALUES ('c1', '2024-05-01 00:00', ?), "
                "('c2', '2024-05-03 00:00', ?)",
                [_config(None), _config({"owner": "risk-ml", "trained_at": "2024-04-20"})]
                ).fetchall()
    rows = [
        ("r1", "2024-05-01 10:00", "fraud-v7", "7.0.1", "primary", True),
        ("r2", "2024-05-02 10:00", "fraud-v7", "7.0.1", "primary", True),
        ("r1", "2024-05-01 10:00", "fraud-v8", "8.0.0", "shadow", False),
        ("r3", "2024-05-04 09:00", "fraud-v8", "8.0.0", "canary", True),
        ("r4", "2024-05-04 11:00", "fraud-v6", "6.2", "fallback", True),
    ]
    for request_id, ts, backend, version, role, served in rows:
        con.execute("INSERT INTO calls (request_id, ts, backend, backend_version, role, served) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [request_id, ts, backend, version, role, served]).fetchall()
    con.close()
    source = open_source(db=str(path))
    listing = models_listing(source)
    source.close()
    assert [(m["backend"], m["version"]) for m in listing] == [
        ("fraud-v6", "6.2"), ("fraud-v7", "7.0.1"), ("fraud-v8", "8.0.0")]
    v6, v7, v8 = listing
    assert v6["provenance"] is None and v6["config_versions"] == []
    assert v6["roles"]["fallback"]["calls"] == 1
    assert v7["provenance"]["code_version"] == "git:4f2a9c1"
    assert v7["provenance"]["trained_at"] == "2024-04-02"
    assert v7["config_versions"] == ["c1", "c2"]
    assert v7["configured_first"] == datetime(2024, 5, 1)
    assert v7["calls"] == 2 and set(v7["roles"]) == {"primary"}
    assert v7["first_seen"] == datetime(2024, 5, 1, 10)
    assert v7["last_seen"] == datetime(2024, 5, 2, 10)
    assert v8["provenance"]["trained_at"] == "2024-04-20"  # the latest config's provenance
    assert v8["roles"]["shadow"] == {"calls": 1, "served": 0,
                                     "first_seen": datetime(2024, 5, 1, 10),
                                     "last_seen": datetime(2024, 5, 1, 10)}
    assert v8["roles"]["canary"]["served"] == 1
    assert v8["last_seen"] == datetime(2024, 5, 4, 9)


def test_listing_of_an_empty_source() -> None:
    assert models_listing(duckdb.connect()) == []
