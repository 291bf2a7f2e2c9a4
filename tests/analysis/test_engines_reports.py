"""Issue 19.1/19.2: the reports that ran on DuckDB only give the same figures through Spark.

The showcase recording, extended with a classifier route recording output vectors, a stream
route recording its messages and a regression route, is exported by the sidecar's own
exporter; the quality, fields, experiment (its canary readout) and divergence (output
vectors, streams) reports are run with ``--engine duckdb`` and with ``--engine spark``
(local mode) on that one export, and every number of their JSON must agree to 1e-9
relative.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from analysis.cli import main
from analysis.engine import duckdb_engine, spark_engine
from analysis.load import open_source
from tests.analysis.conftest import export_fleet
from tests.analysis.report_data import T0, build_showcase
from tests.analysis.test_engines import assert_same

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

VEC = "/vec.Model/Classify"
CHAT = "/chat.Model/Stream"
PRICE = "/price.Model/Predict"


def _vector_calls(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """A 3-class classifier and its shadow: probability vectors, a few of another length,
    with a zero, negative (no Jensen-Shannon) or missing (an empty answer)."""
    rows = []
    for i in range(n):
        p = rng.dirichlet([2.0, 1.0, 1.0])
        # the same answer, a difference within tolerance, a small and a large one
        s = np.clip(p + rng.normal(0, (0.0, 1e-7, 0.02, 0.2)[i % 4], 3), 0, None)
        if i % 17 == 0:
            s = s[:2]  # another length: out of tolerance as a whole vector
        if i % 13 == 0:
            p[2] = 0.0
        if i % 29 == 0:
            s = s - 1.0  # not a probability vector
        ts = T0 + timedelta(seconds=40 * i)
        for backend, role, out in (("vec-a", "primary", p), ("vec-b", "shadow", s)):
            empty = role == "shadow" and i % 31 == 5
            rows.append({
                "request_id": f"v{i}", "ts": ts, "route": VEC, "backend": backend,
                "backend_version": "1", "role": role, "served": role == "primary",
                "status": "OK", "latency_ms": float(5 + rng.gamma(2.0, 1.0)),
                "score": None if empty else float(out[0]),
                "label": None if empty else str(int(np.argmax(out))),
                "output": None if empty else [float(x) for x in out],
                "response_json": None if empty else _vector_json(i, role, out)})
    return pd.DataFrame(rows)


def _vector_json(i: int, role: str, out: np.ndarray) -> str:
    """A decoded answer with lists (of numbers, of objects, an element lacking a key),
    nulls, a number that is a string on one side, booleans, a 20-digit integer and a key
    with a space: what the fields report steps through."""
    shadow = role == "shadow"
    top = [{"cls": f"c{k}", "p": round(float(x), 6)} for k, x in enumerate(out)]
    if shadow and i % 9 == 0:
        del top[-1]["p"]
    doc: dict[str, Any] = {
        "probs": [round(float(x), 6) for x in out], "top": top,
        "note": None if i % 5 else ("late" if shadow and i % 10 == 0 else "ok"),
        "mixed": "1" if shadow and i % 8 == 0 else 1, "flag": bool(i % 3 == 0),
        "big": 12345678901234567890 + (1 if shadow and i % 11 == 0 else 0),
        "dec": 0.1 + (1e-9 if shadow else 0.0), "a b": {"c": i % 4}}
    if i % 6 == 0:
        doc["extra"] = [[1, 2], [3]] if shadow else [[1, 2], [4]]
    return json.dumps(doc)


def _stream_calls(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A streaming route: each call's response messages (scores, a label, JSON), some
    streams cut (the shadow did not end OK) or of another length."""
    calls, messages = [], []
    for i in range(n):
        ts = T0 + timedelta(seconds=90 * i)
        length = 3 + i % 5
        base = rng.random(length)
        for backend, role in (("chat-a", "primary"), ("chat-b", "shadow")):
            shadow = role == "shadow"
            status = "CANCELLED" if shadow and i % 11 == 3 else "OK"
            count = length + (1 if shadow and i % 7 == 2 else 0)
            calls.append({"request_id": f"s{i}", "ts": ts, "route": CHAT, "backend": backend,
                          "backend_version": "1", "role": role, "served": not shadow,
                          "status": status, "latency_ms": float(20 + rng.gamma(2.0, 3.0)),
                          "score": None, "label": None, "output": None,
                          "response_json": None})
            for k in range(count):
                # a shadow's message differs now and then, at any place in its stream
                noisy = shadow and rng.random() < 0.3
                value = float(base[k % length] + (rng.normal(0, 0.05) if noisy else 0.0))
                plain = k == length - 1 and i % 3 == 0  # JSON only: compared as text
                token = "end" if plain else f"t{k}"
                if shadow and plain and i % 6 == 0:
                    token = "END"
                messages.append({
                    "request_id": f"s{i}", "ts": ts + timedelta(milliseconds=10 * k),
                    "route": CHAT, "method": CHAT, "backend": backend, "role": role,
                    "direction": "response", "idx": k, "offset_ms": 10.0 * k, "size": 20,
                    "message_json": json.dumps({"token": token, "p": round(value, 4),
                                                "meta": {"n": k}}),
                    "output": None if plain else ([value, 1 - value] if i % 4 == 0 else None),
                    "score": None if plain else value,
                    "label": None if plain else ("hi" if value > 0.5 else "lo"),
                    "key": None})
        messages.append({"request_id": f"s{i}", "ts": ts, "route": CHAT, "method": CHAT,
                         "backend": None, "role": "caller", "direction": "request", "idx": 0,
                         "offset_ms": 0.0, "size": 5, "message_json": "{}", "output": None,
                         "score": None, "label": None, "key": None})
    return pd.DataFrame(calls), pd.DataFrame(messages)


def _regression(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A price model and its shadow (one-element outputs) with price outcomes."""
    truth = rng.lognormal(3.0, 0.5, n)
    rows, outcomes = [], []
    for i in range(n):
        ts = T0 + timedelta(seconds=60 * i)
        for backend, role, noise in (("price-a", "primary", 2.0), ("price-b", "shadow", 3.0)):
            value = float(truth[i] + rng.normal(0, noise))
            rows.append({"request_id": f"p{i}", "ts": ts, "route": PRICE, "backend": backend,
                         "backend_version": "2", "role": role, "served": role == "primary",
                         "status": "OK" if i % 50 else "INTERNAL", "latency_ms": 3.0,
                         "score": value, "label": None, "output": [value],
                         "response_json": json.dumps({"price": round(value, 2)})})
        outcomes.append({"event_id": f"pr{i}", "unit_id": None, "request_id": f"p{i}",
                         "metric": "price", "value": float(truth[i]),
                         "ts": ts + timedelta(hours=1)})
    return pd.DataFrame(rows), pd.DataFrame(outcomes)


def build_reports_data(path: Path) -> Path:
    """The showcase file with output vectors, recorded streams and a regression route."""
    build_showcase(path)
    rng = np.random.default_rng(19)
    vec = _vector_calls(rng, 240)
    chat, messages = _stream_calls(rng, 40)
    price, price_out = _regression(rng, 300)
    calls = pd.concat([vec, chat, price], ignore_index=True)
    con = duckdb.connect(str(path))
    try:
        con.register("more_calls", calls)
        con.execute("""
            INSERT INTO calls (request_id, ts, route, method, backend, backend_version, role,
                               served, status, latency_ms, score, label, output, response_json)
            SELECT request_id, ts, route, route, backend, backend_version, role, served, status,
                   latency_ms, score, label, output::DOUBLE[], response_json FROM more_calls""")
        con.register("more_messages", messages)
        con.execute("""
            INSERT INTO stream_messages (request_id, ts, route, method, backend, role,
                direction, idx, offset_ms, size, message_json, output, score, label, key)
            SELECT request_id, ts, route, method, backend, role, direction, idx, offset_ms,
                   size, message_json, output::DOUBLE[], score, label, key
            FROM more_messages""")
        con.register("more_outcomes", price_out)
        con.execute("INSERT INTO outcomes (event_id, unit_id, request_id, metric, value, ts) "
                    "SELECT event_id, unit_id, request_id, metric, value, ts "
                    "FROM more_outcomes")
    finally:
        con.close()
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extended showcase exported as the fleet layout by the real exporter."""
    root = tmp_path_factory.mktemp("fleet_reports")
    return export_fleet(build_reports_data(root / "showcase.duckdb"), root)


def _strip(report: dict[str, Any]) -> dict[str, Any]:
    report = json.loads(json.dumps(report))
    report.get("params", {}).pop("engine", None)
    report.get("settings", {}).pop("engine", None)
    return report


def _cli(fleet: Path, out: Path, kind: str, engine: str, *extra: str) -> dict[str, Any]:
    target = out / f"{kind}-{engine}-{abs(hash(extra))}.json"
    code = main(["report", kind, "--parquet", str(fleet), "--engine", engine,
                 "--format", "json", "-o", str(target), *extra])
    assert code == 0, f"report {kind} --engine {engine} exited {code}"
    result: dict[str, Any] = json.loads(target.read_text())
    return result


def test_divergence_vectors_and_streams_equal_on_both_engines(fleet: Path, spark: Any) -> None:
    """Issue 19.1 (divergence, items 4 and 5): output vectors (Jensen-Shannon, whole-vector
    tolerance, answers made of a vector only) and streams compared message by message give
    DuckDB's figures through the Ibis path on DuckDB and on Spark, whole and by segment."""
    from analysis.divergence import analyze_divergence
    from analysis.divergence_engine import analyze_divergence_engine

    con = open_source(parquet=str(fleet))
    engines = [duckdb_engine(con), spark_engine(spark, parquet=str(fleet))]
    for options in ({}, {"segment": "status", "atol": 0.01, "rtol": 0.0},
                    {"route": CHAT, "all_versions": True}):
        ours = analyze_divergence(con, **options).to_dict()  # type: ignore[arg-type]
        by_route = {p["route"]: p for p in ours["pairs"]}
        if not options:
            assert by_route[VEC]["js_divergence"] is not None
            assert by_route[VEC]["vectors"]["length_mismatch"] > 0
            assert by_route[VEC]["incomplete"] > 0
            streams = by_route[CHAT]["streams"]
            assert streams["streams"]["cut"] and streams["streams"]["length_mismatch"]
            assert streams["messages"]["differ"] > 0
        for engine in engines:
            theirs = analyze_divergence_engine(engine, **options).to_dict()  # type: ignore[arg-type]
            assert_same(ours, theirs)


def test_cli_divergence_with_vectors_and_streams_spark_equals_duckdb(
        fleet: Path, tmp_path: Path, spark: Any) -> None:
    """Issue 19.2: `report divergence --engine spark` no longer refuses output vectors or
    recorded streams: it writes `--engine duckdb`'s JSON, figure for figure."""
    ours = _cli(fleet, tmp_path, "divergence", "duckdb")
    theirs = _cli(fleet, tmp_path, "divergence", "spark")
    assert {p["route"] for p in ours["pairs"]} >= {VEC, CHAT}
    assert_same(_strip(ours), _strip(theirs))


def test_canary_readout_equal_on_both_engines(fleet: Path, spark: Any) -> None:
    """Issue 19.1 (item 3): the canary readout's row work (steps from state changes, the
    range join standing for DuckDB's ASOF join, first exposure per step, per-arm delta-method
    sums, exact latency quantiles, outcome sums in a window) gives DuckDB's readout through
    the Ibis path on DuckDB and on Spark; the experiment report carries it on Spark."""
    from analysis.canary_engine import analyze_canaries_engine
    from analysis.canary_readout import analyze_canaries
    from analysis.experiment import analyze_experiments

    con = open_source(parquet=str(fleet))
    engines = [duckdb_engine(con), spark_engine(spark, parquet=str(fleet))]
    for options in ({}, {"window": timedelta(minutes=2), "all_versions": True},
                    {"since": "2026-01-05T06:00", "alpha": 0.01}):
        ours = analyze_canaries(con, **options)  # type: ignore[arg-type]
        assert ours is not None and ours.routes[0].steps[0].results
        for engine in engines:
            theirs = analyze_canaries_engine(engine, **options)  # type: ignore[arg-type]
            assert theirs is not None
            assert_same(ours.to_dict(), theirs.to_dict())
    ours_x = analyze_experiments(con).to_dict()
    theirs_x = analyze_experiments(None, engine=engines[1]).to_dict()
    assert ours_x["canaries"]["routes"]
    assert_same(_strip(ours_x), _strip(theirs_x))


def test_cli_experiment_with_canaries_spark_equals_duckdb(fleet: Path, tmp_path: Path,
                                                          spark: Any) -> None:
    """Issue 19.2: `report experiment --engine spark` on a source with canary requests no
    longer exits 2: it writes `--engine duckdb`'s JSON, canary readout included."""
    ours = _cli(fleet, tmp_path, "experiment", "duckdb")
    theirs = _cli(fleet, tmp_path, "experiment", "spark")
    assert ours["canaries"]["routes"][0]["steps"]
    assert_same(_strip(ours), _strip(theirs))


def test_quality_equal_on_both_engines(fleet: Path, spark: Any) -> None:
    """Issue 19.1 (item 1): the quality report's row work (latest outcome per request, losses,
    calibration bins, time windows, paired t-tests) and its AUC with DeLong's interval and
    paired DeLong test (V10/V01 from running counts over the scores, centred sums in the
    engine) give DuckDB's figures through the Ibis path on DuckDB and on Spark."""
    from analysis.quality import analyze_quality
    from analysis.quality_engine import analyze_quality_engine

    con = open_source(parquet=str(fleet))
    engines = [duckdb_engine(con), spark_engine(spark, parquet=str(fleet))]
    for options in ({}, {"window": "7h"}, {"window": "1d", "since": "2026-01-05T03:00"},
                    {"kind": "regression", "metric": "price", "window": "2h"},
                    {"kind": "regression", "metric": "price", "route": PRICE}):
        ours = analyze_quality(con, **options).to_dict()  # type: ignore[arg-type]
        assert ours["models"] and ours["comparisons"]
        if not options:
            assert ours["models"][0]["auc_se"] is not None and ours["models"][0]["reliability"]
            assert any(c["method"] == "paired DeLong" and c["p_value"] is not None
                       for c in ours["comparisons"])
        for engine in engines:
            theirs = analyze_quality_engine(engine, **options).to_dict()  # type: ignore[arg-type]
            assert_same(ours, theirs)


def test_cli_quality_spark_equals_duckdb(fleet: Path, tmp_path: Path, spark: Any) -> None:
    """Issue 19.2: `report quality --engine spark` no longer exits 2: it writes `--engine
    duckdb`'s JSON, figure for figure (binary and regression)."""
    for extra in ((), ("--quality-kind", "regression", "--metric", "price")):
        ours = _cli(fleet, tmp_path, "quality", "duckdb", *extra)
        theirs = _cli(fleet, tmp_path, "quality", "spark", *extra)
        assert ours["models"]
        assert_same(_strip(ours), _strip(theirs))


def test_fields_equal_on_both_engines(fleet: Path, spark: Any) -> None:
    """Issue 19.1 (item 2): the fields report through Spark (the merged structure from
    schema_of_variant_agg, values by variant_get over list steps, JSON text and numeric
    tolerance) gives DuckDB's counts, rates and replica tests: lists of numbers and of
    objects, nulls, a number against a string, a key with a space, stream messages."""
    from analysis.field_diff import analyze_field_diff
    from analysis.fields_engine import analyze_field_diff_engine, spark_structure

    assert spark_structure("OBJECT<`a b`: ARRAY<OBJECT<c: DECIMAL(3,2)>>, d: VOID>") == {
        "a b": [{"c": "DECIMAL(3,2)"}], "d": "VOID"}
    con = open_source(parquet=str(fleet))
    engine = spark_engine(spark, parquet=str(fleet))
    for options in ({}, {"fields": ["top[].p", "score", "a b.c", "meta.n"], "atol": 0.01},
                    {"route": CHAT, "ignore": ["meta.*"]}, {"all_versions": True, "max_fields": 3},
                    {"route": VEC, "rtol": 0.0, "atol": 0.0, "alpha": 0.2}):
        ours = analyze_field_diff(con, **options).to_dict()  # type: ignore[arg-type]
        if not options:
            vec = next(p for p in ours["pairs"] if p["route"] == VEC)
            differ = {f["path"]: f["differ"] for f in vec["fields"]}
            assert differ["top[].cls"] and differ["mixed"] and differ["note"] and differ["extra[]"]
            assert any(f["p_value"] is not None for p in ours["pairs"] for f in p["fields"])
        assert_same(ours, analyze_field_diff_engine(engine, **options).to_dict())  # type: ignore[arg-type]


def test_cli_fields_spark_equals_duckdb(fleet: Path, tmp_path: Path, spark: Any) -> None:
    """Issue 19.2: `report fields --engine spark` no longer exits 2: it writes `--engine
    duckdb`'s JSON, figure for figure."""
    ours = _cli(fleet, tmp_path, "fields", "duckdb")
    theirs = _cli(fleet, tmp_path, "fields", "spark")
    assert {p["route"] for p in ours["pairs"]} >= {VEC, CHAT}
    assert_same(_strip(ours), _strip(theirs))


def test_cli_fields_spark_refuses_a_quoted_key(tmp_path: Path, spark: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19.2: a JSON key with a quote cannot be written in a Spark variant path: the
    fields report on Spark exits 2 naming it instead of other numbers."""
    where = tmp_path / "fleet" / "table=calls" / "date=2026-01-01"
    where.mkdir(parents=True)
    pd.DataFrame({"request_id": ["a", "a"], "ts": pd.to_datetime(["2026-01-01"] * 2),
                  "route": "/m", "backend": ["p", "s"], "role": ["primary", "shadow"],
                  "status": "OK", "response_json": ['{"it\'s": 1}', '{"it\'s": 2}']}).to_parquet(
        where / "part.parquet")
    code = main(["report", "fields", "--parquet", str(tmp_path / "fleet"), "--engine", "spark"])
    assert code == 2
    assert "it's" in capsys.readouterr().err


def test_cli_spark_job_failure_is_a_clear_error(fleet: Path, tmp_path: Path, spark: Any,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A Spark job that fails (here a Parquet file that is not Parquet; a JVM out of heap
    the same way) is one line and exit 3, not a Python traceback with Java's stack
    (what a 10M-unit winsorized report on a 600MB heap printed before)."""
    import shutil

    from analysis.cli import spark_failure

    broken = tmp_path / "broken"
    shutil.copytree(fleet, broken)
    victim = next((broken / "table=requests").rglob("*.parquet"))
    victim.write_bytes(b"PAR1 not really parquet PAR1")
    code = main(["report", "experiment", "--parquet", str(broken), "--engine", "spark",
                 "--format", "json", "-o", str(tmp_path / "out.json")])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.startswith("report experiment: Spark could not analyse the source: ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out.json").exists()
    heap = spark_failure(RuntimeError("Job aborted\njava.lang.OutOfMemoryError: Java heap space"))
    assert "--memory-limit" in heap and "--spark-master" in heap
