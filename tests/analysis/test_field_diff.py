"""Field-level difference rates on fixed decoded responses, a replica noise floor, and a
seeded check that a candidate no noisier than its replica is rarely flagged."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from statsmodels.stats.proportion import proportions_ztest

from analysis.field_diff import SCHEMA, analyze_field_diff

ROUTE = "/demo.v1.Scorer/Score"


def _con(rows: list[tuple[str, str, str, str, Any]], *, replica: str | None = "rep",
         status: dict[int, str] | None = None, ignore_fields: list[str] | None = None,
         ) -> duckdb.DuckDBPyConnection:
    """A connection with ``calls`` (request_id, route, backend, role, status, response_json)."""
    status = status or {}
    con = duckdb.connect()
    table = pa.table({
        "request_id": [r[0] for r in rows],
        "route": [r[1] for r in rows],
        "backend": [r[2] for r in rows],
        "role": [r[3] for r in rows],
        "status": [status.get(i, "OK") for i in range(len(rows))],
        "response_json": [r[4] if isinstance(r[4], str | None) else json.dumps(r[4])
                          for r in rows],
    })
    con.register("_rows", table)
    con.execute("CREATE TABLE calls AS SELECT * FROM _rows").fetchall()
    con.unregister("_rows")
    shadows = [{"backend": "cand"}] + ([{"backend": replica, "replica": True}] if replica else [])
    route: dict[str, Any] = {"match": ROUTE, "primary": "prim", "shadows": shadows}
    if ignore_fields is not None:
        route["ignore_fields"] = ignore_fields
    config = {"routes": [route]}
    con.execute("CREATE TABLE configs (config_version VARCHAR, ts TIMESTAMP, config_json VARCHAR)"
                ).fetchall()
    con.execute("INSERT INTO configs VALUES ('v1', now()::TIMESTAMP, ?)", [json.dumps(config)]
                ).fetchall()
    return con


def _doc(label: str, score: float, items: list[float], meta: str = "m") -> dict[str, Any]:
    return {"label": label, "score": score, "items": [{"score": v} for v in items],
            "probs": [score, 1 - score], "meta": {"id": meta}}


def _fixed() -> list[tuple[str, str, str, str, Any]]:
    """200 requests: the candidate flips 20 labels and moves 10 scores out of tolerance, the
    replica flips 2 labels; meta.id differs on every shadow call (ignored in some tests)."""
    rows: list[tuple[str, str, str, str, Any]] = []
    for i in range(200):
        rid = f"r{i}"
        base = _doc("cat", 0.5, [0.1, 0.2], meta=rid)
        cand = _doc("dog" if i < 20 else "cat", 0.6 if 20 <= i < 30 else 0.5 + 1e-7,
                    [0.1, 0.2], meta="x")
        rep = _doc("dog" if i >= 198 else "cat", 0.5, [0.1, 0.2], meta="y")
        rows += [(rid, ROUTE, "prim", "primary", base), (rid, ROUTE, "cand", "shadow", cand),
                 (rid, ROUTE, "rep", "shadow", rep)]
    return rows


def _fields(report: Any, shadow: str) -> dict[str, Any]:
    (pair,) = [p for p in report.pairs if p.shadow == shadow]
    return {f.path: f for f in pair.fields}


def test_fixed_rates_and_noise_floor() -> None:
    report = analyze_field_diff(_con(_fixed()), ignore=["meta.*"])
    assert report.message is None
    assert [(p.shadow, p.is_replica, p.replica, p.n, p.replica_n) for p in report.pairs] == [
        ("cand", False, "rep", 200, 200), ("rep", True, None, 200, None)]
    cand = _fields(report, "cand")
    assert list(cand) == ["label", "probs", "score", "items[].score"]
    assert (cand["label"].differ, cand["label"].diff_rate, cand["label"].replica_rate) == (
        20, 0.1, 0.01)
    assert cand["score"].diff_rate == cand["probs"].diff_rate == 0.05  # 1e-7 is within atol
    assert cand["items[].score"].diff_rate == 0.0 and cand["items[].score"].present == 200
    assert cand["label"].flag is True and cand["score"].flag is True
    assert cand["items[].score"].flag is False and cand["items[].score"].p_value is None
    _, p_label = proportions_ztest([20, 2], [200, 200], alternative="larger")
    assert cand["label"].p_value == pytest.approx(p_label, rel=1e-9)
    low, high = cand["label"].diff_ci
    assert low < 0.1 < high
    rep = _fields(report, "rep")
    assert rep["label"].diff_rate == 0.01
    assert rep["label"].replica_rate is None and rep["label"].flag is None


def test_without_a_replica_there_is_no_flag() -> None:
    rows = [r for r in _fixed() if r[2] != "rep"]
    report = analyze_field_diff(_con(rows, replica=None), ignore=["meta.*"])
    (pair,) = report.pairs
    assert pair.replica is None and pair.replica_n is None
    assert all(f.flag is None and f.replica_rate is None for f in pair.fields)
    assert _fields(report, "cand")["label"].diff_rate == 0.1


def test_ignore_globs_and_every_leaf_found() -> None:
    everything = _fields(analyze_field_diff(_con(_fixed())), "cand")
    assert set(everything) == {"label", "score", "items[].score", "probs", "meta.id"}
    assert everything["meta.id"].diff_rate == 1.0
    fewer = _fields(analyze_field_diff(_con(_fixed()), ignore=["*.id", "prob?"]), "cand")
    assert set(fewer) == {"label", "score", "items[].score"}
    # Without ``ignore`` the route's configured ignore_fields apply; ``ignore=[]`` overrides.
    configured = _con(_fixed(), ignore_fields=["meta.*", "score"])
    assert set(_fields(analyze_field_diff(configured), "cand")) == {
        "label", "items[].score", "probs"}
    assert len(_fields(analyze_field_diff(configured, ignore=[]), "cand")) == 5


def test_given_fields_resolve_lists_and_report_missing_ones() -> None:
    report = analyze_field_diff(_con(_fixed()), fields=["items.score", "label", "nope.x"])
    cand = _fields(report, "cand")
    assert set(cand) == {"items.score", "label", "nope.x"}
    assert cand["items.score"].present == 200
    assert (cand["nope.x"].present, cand["nope.x"].diff_rate) == (0, 0.0)


@pytest.mark.parametrize(
    ("primary", "shadow", "differs"),
    [
        ({"v": 1}, {"v": 1.0}, False),
        ({"v": 100.0}, {"v": 100.09}, False),  # within 1e-6 + 1e-3 * 100
        ({"v": 100.0}, {"v": 100.2}, True),
        ({"v": 1}, {"v": "1"}, True),  # a string is not a number
        ({"v": "a"}, {"v": "a"}, False),
        ({"v": True}, {"v": False}, True),
        ({"v": [1, 2]}, {"v": [1, 2, 3]}, True),
        ({"v": [1, 2]}, {"v": [1, 2]}, False),
        ({"v": 1}, {}, True),
        ({"w": 1}, {"w": 1}, False),  # v missing on both sides is equal
        ({"v": 12345678901234567890}, {"v": 12345678901234567890}, False),
    ],
)
def test_one_pair_comparison(primary: Any, shadow: Any, differs: bool) -> None:
    rows = [("r", ROUTE, "prim", "primary", primary), ("r", ROUTE, "cand", "shadow", shadow)]
    report = analyze_field_diff(_con(rows, replica=None), fields=["v"])
    assert _fields(report, "cand")["v"].differ == int(differs)


def test_failed_calls_bad_json_and_other_roles_are_not_pairs() -> None:
    rows = _fixed()[:30]  # 10 requests
    rows += [("x", ROUTE, "prim", "primary", "{bad json"), ("x", ROUTE, "cand", "shadow", {})]
    rows += [("y", ROUTE, "prim", "fallback", {}), ("y", ROUTE, "cand", "shadow", {})]
    report = analyze_field_diff(_con(rows, status={1: "UNAVAILABLE"}))
    by_shadow = {p.shadow: p.n for p in report.pairs}
    assert by_shadow == {"cand": 9, "rep": 10}


def test_degenerate_sources_give_messages() -> None:
    con = duckdb.connect()
    assert analyze_field_diff(con).message == "the source has no calls table"
    con.execute("CREATE TABLE calls (request_id VARCHAR, role VARCHAR, status VARCHAR)"
                ).fetchall()
    assert "no response_json" in (analyze_field_diff(con).message or "")
    only_primary = _con([("r", ROUTE, "prim", "primary", {"a": 1})])
    report = analyze_field_diff(only_primary)
    assert report.pairs == () and "no primary/shadow pair" in (report.message or "")


def test_json_form() -> None:
    report = analyze_field_diff(_con(_fixed()), route=ROUTE, ignore=["meta.*"])
    data = report.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["schema"] == SCHEMA == "shadowcar.report.fields/1"
    pair = data["pairs"][0]
    assert {"route", "primary", "shadow", "replica", "n", "fields"} <= set(pair)
    field = pair["fields"][0]
    assert {"path", "diff_rate", "diff_ci", "replica_rate", "flag"} <= set(field)
    assert field["path"] == "label" and isinstance(field["diff_ci"], list)
    assert analyze_field_diff(_con(_fixed()), route="/other/Route").pairs == ()


def test_candidate_as_noisy_as_its_replica_is_rarely_flagged() -> None:
    """120 fields, each differing with p = 0.05 for both candidate and replica, n = 1500:
    at alpha 0.01 about 1.2 false flags are expected; more than 6 would be a broken test."""
    rng = np.random.default_rng(20240611)
    fields, n = 120, 1500
    rows: list[tuple[str, str, str, str, Any]] = []
    flips = {b: rng.random((n, fields)) < 0.05 for b in ("cand", "rep")}
    for i in range(n):
        rows.append((f"r{i}", ROUTE, "prim", "primary", {f"f{k}": 0 for k in range(fields)}))
        for backend, flip in flips.items():
            rows.append((f"r{i}", ROUTE, backend, "shadow",
                         {f"f{k}": int(flip[i, k]) for k in range(fields)}))
    report = analyze_field_diff(_con(rows))
    cand = _fields(report, "cand")
    assert len(cand) == fields
    flagged = sum(bool(f.flag) for f in cand.values())
    assert flagged <= 6
    for k in (0, 57, 119):
        assert cand[f"f{k}"].differ == int(flips["cand"][:, k].sum())
        assert cand[f"f{k}"].replica_rate == pytest.approx(flips["rep"][:, k].mean())
