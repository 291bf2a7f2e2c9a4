"""Renderers: JSON without NaN, terminal tables, one self-contained HTML file with SVG charts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import duckdb
import pytest

from analysis.divergence import analyze_divergence
from analysis.drift import analyze_drift
from analysis.load import open_source
from analysis.report import render
from analysis.report.json import jsonable
from sidecar.sink.schema import migrate

EXPERIMENT: dict[str, Any] = {
    "schema": "shadowcar.report.experiment/1",
    "experiments": [{
        "name": "threshold-test",
        "srm": {"p_value": 1e-5, "flag": True, "counts": {"control": 5200, "treat": 4800},
                "expected_share": {"control": 0.5, "treat": 0.5}},
        "results": [
            {"metric": "clicks", "variant": "treat", "control": "control", "n_control": 5200,
             "n_variant": 4800, "mean_control": 0.10, "mean_variant": 0.12, "abs_effect": 0.02,
             "abs_ci": [0.008, 0.032], "rel_effect": 0.2, "rel_ci": [0.08, 0.32],
             "p_value": 0.001, "p_value_holm": 0.002, "p_value_bh": 0.002, "method": "welch",
             "message": None},
            {"metric": "revenue", "variant": "treat", "control": "control", "n_control": 5200,
             "n_variant": 4800, "mean_control": 0.0, "mean_variant": 0.0, "abs_effect": 0.0,
             "abs_ci": None, "rel_effect": None, "rel_ci": None, "p_value": None,
             "p_value_holm": None, "p_value_bh": None, "method": "welch",
             "message": "zero variance"},
        ],
    }],
}


def _divergence_db(path: Path) -> str:
    con = duckdb.connect(str(path))
    migrate(con)
    con.execute("""
        INSERT INTO calls (request_id, ts, route, backend, role, served, status, latency_ms,
                           score, label)
        SELECT 'q' || i, TIMESTAMP '2024-01-01' + to_seconds(i), '/r', b, role,
               role = 'primary', 'OK', 2 + (hash(i || b) % 50) / 10.0, sc, (sc > 0.5)::VARCHAR
        FROM range(300) t(i), LATERAL (SELECT * FROM (VALUES
            ('p', 'primary', (hash(i) % 100) / 100.0),
            ('s', 'shadow', (hash(i) % 100) / 100.0 + (hash(i + 7) % 10) / 100.0))) v(b, role, sc)
    """)
    con.execute("""
        INSERT INTO requests (request_id, ts, route, inputs)
        SELECT 'q' || i, TIMESTAMP '2024-01-01' + to_seconds(i), '/r',
               [{'name': 'x', 'datatype': 'FP64', 'shape': [1],
                 'data': [(hash(i) % 100) / 10.0 + (i > 150)::INT], 'text': NULL}]
        FROM range(300) t(i)
    """)
    con.close()
    return str(path)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    path = _divergence_db(tmp_path_factory.mktemp("report") / "r.duckdb")
    con = open_source(db=path)
    return {"divergence": analyze_divergence(con).to_dict(),
            "drift": analyze_drift(con).to_dict(), "experiment": EXPERIMENT}


def test_json_is_strict_and_round_trips(reports: dict[str, dict[str, Any]]) -> None:
    for kind, report in reports.items():
        text = render(report, kind, "json")  # type: ignore[arg-type]
        assert json.loads(text) == jsonable(report)
    poisoned = {"schema": "x", "value": float("nan"), "ci": (float("inf"), 1.0)}
    assert json.loads(render(poisoned, "divergence", "json")) == {
        "schema": "x", "value": None, "ci": [None, 1.0]}


def test_html_is_self_contained_with_svg(reports: dict[str, dict[str, Any]]) -> None:
    html = render(reports["divergence"], "divergence", "html")
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", html)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count("<svg") == 3
    for title in ("Score distribution", "Paired difference", "Latency CDF"):
        assert f'data-chart="{title}' in html
    drift = render(reports["drift"], "drift", "html")
    assert "PSI per numeric feature" in drift and "<svg" in drift
    assert "http://" not in drift and "https://" not in drift


def test_experiment_html_shows_srm_first_and_forest(reports: dict[str, dict[str, Any]]) -> None:
    html = render(reports["experiment"], "experiment", "html")
    assert "SAMPLE RATIO MISMATCH" in html
    assert html.index("SAMPLE RATIO MISMATCH") < html.index("<table")
    assert 'data-chart="Relative effect with 95% CI"' in html
    assert "zero variance" in html
    # Issue 16.12: counts as words, never a Python repr.
    assert "{'" not in html and "control 5200, treat 4800" in html


def test_terminal_tables(reports: dict[str, dict[str, Any]]) -> None:
    text = render(reports["divergence"], "divergence", "table", width=200)
    assert "p → s" in text and "Distribution and operations" in text
    assert "\x1b[" not in text
    coloured = render(reports["experiment"], "experiment", "table", color=True, width=200)
    assert "\x1b[" in coloured
    plain = render(reports["experiment"], "experiment", "table", width=200)
    assert plain.index("SAMPLE RATIO MISMATCH") < plain.index("clicks")
    assert "zero variance" in plain
    drift = render(reports["drift"], "drift", "table", width=200)
    assert "Input drift per feature" in drift and " x " in drift


def test_unknown_format_and_kind(reports: dict[str, dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="format"):
        render(reports["drift"], "drift", "pdf")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        render(reports["drift"], "nope", "html")  # type: ignore[arg-type]


def test_empty_reports_render(reports: dict[str, dict[str, Any]]) -> None:
    empty = {"schema": "shadowcar.report.divergence/1", "pairs": [], "message": "no pairs"}
    for fmt in ("table", "json", "html"):
        assert "no pairs" in render(empty, "divergence", fmt)  # type: ignore[arg-type]
