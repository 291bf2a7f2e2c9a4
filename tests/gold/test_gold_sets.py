"""Gold sets: pass, regression (exit 1), bad files (exit 2 naming the line), capture round trip."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidecar.demo import (
    ModelServerHandle,
    build_infer_request,
    make_demo_models,
    start_model_server,
)
from sidecar.gold import GoldFileError, allocate, load_cases
from sidecar.gold.cli import main as gold_main

ROUTE = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
async def models() -> AsyncIterator[dict[str, ModelServerHandle]]:
    primary, retrained = make_demo_models()
    servers = {"primary": await start_model_server(primary),
               "retrained": await start_model_server(retrained)}
    yield servers
    for server in servers.values():
        await server.aclose()


def write_set(path: Path, models: dict[str, ModelServerHandle], n: int = 6) -> list[dict[str, Any]]:
    model = models["primary"].model
    rng = np.random.default_rng(3)
    cases = []
    for i, row in enumerate(rng.standard_normal((n, 8)).astype(np.float32)):
        probs = model.predict_proba(row.reshape(1, -1)).astype(np.float32).ravel()
        expected: dict[str, Any] = {"output": [float(v) for v in probs]}
        if i % 2:
            expected["label"] = str(int(np.argmax(probs)))
        cases.append({
            "id": f"case-{i}",
            "request_json": {"model_name": "demo", "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [1, 8],
                 "data": [float(v) for v in row]}]},
            "expected": expected, "atol": 1e-6, "rtol": 1e-5,
        })
    path.write_text("\n".join(json.dumps(c) for c in cases) + "\n", encoding="utf-8")
    return cases


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich folds cells in a narrow terminal


async def gold(*argv: str) -> int:
    return await asyncio.to_thread(gold_main, list(argv))


async def test_a_passing_set_exits_0_and_is_recorded(
    models: dict[str, ModelServerHandle], tmp_path: Path, capsys: Any
) -> None:
    gold_set, record = tmp_path / "set.jsonl", tmp_path / "gold.duckdb"
    write_set(gold_set, models)
    code = await gold("run", "--set", str(gold_set), "--target", models["primary"].target,
                      "--record", str(record), "--backend-name", "fraud-v7",
                      "--backend-version", "7")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "6 passed, 0 regressions, 0 errors" in out
    con = duckdb.connect(str(record), read_only=True)
    calls = con.execute(
        "SELECT count(*), count(DISTINCT request_id), min(role), min(backend), "
        "count(label), count(output) FROM calls"
    ).fetchall()
    verdicts = con.execute("SELECT verdict, count(*) FROM gold_results GROUP BY 1").fetchall()
    con.close()
    assert calls == [(6, 6, "gold", "fraud-v7", 6, 6)]
    assert verdicts == [("pass", 6)]


async def test_a_regression_exits_1_with_a_table(
    models: dict[str, ModelServerHandle], tmp_path: Path, capsys: Any
) -> None:
    gold_set = tmp_path / "set.jsonl"
    cases = write_set(gold_set, models)
    body = build_infer_request("demo", cases[0]["request_json"]["inputs"][0]["data"])
    cases.append({"id": "wrong-label", "request_b64": base64.b64encode(body).decode(),
                  "expected": {"label": "7"}})
    gold_set.write_text("\n".join(json.dumps(c) for c in cases) + "\n", encoding="utf-8")
    assert await gold("run", "--set", str(gold_set), "--target",
                      models["primary"].target) == 1
    out = capsys.readouterr().out
    assert "wrong-label" in out and "regression" in out and "6 passed, 1 regressions" in out
    # The retrained model answers differently beyond the tolerance.
    assert await gold("run", "--set", str(gold_set), "--target",
                      models["retrained"].target) == 1
    assert "max |diff|" in capsys.readouterr().out
    # A dead target: every case is an error, also exit 1.
    assert await gold("run", "--set", str(gold_set), "--target", "127.0.0.1:1",
                      "--timeout-ms", "300") == 1
    assert "7 errors" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("lines", "where", "message"),
    [
        (['{"id": "a", "request_b64": "AA==", "expected": {"label": "1"}}', "{not json"],
         "line 2", "not valid JSON"),
        (['{"id": "a", "request_b64": "AA==", "expected": {"label": "1"}}', "",
          '{"id": "b", "request_b64": "AA=="}'], "line 3", "expected"),
        (['{"id": "a", "request_b64": "AA==", "expected": {"label": "1"}}',
          '{"id": "a", "request_b64": "AA==", "expected": {"label": "1"}}'],
         "line 2", "duplicate id"),
        (['{"id": "a", "request_json": {"inputs": [{"name": "x", "datatype": "FP32", '
          '"shape": [1, 3], "data": [1, 2]}]}, "expected": {"output": [1]}}'],
         "line 1", "needs 3 values"),
        (['{"id": "a", "request_b64": "AA==", "expected": {"label": "1"}, "tol": 1}'],
         "line 1", "unknown key"),
        (['{"id": "a", "request_b64": "AA==", "request_json": {}, "expected": {"label": "1"}}'],
         "line 1", "exactly one"),
        (['{"id": "a", "request_b64": "AA==", "expected": {"output": ["x"]}}'],
         "line 1", "numbers only"),
    ],
)
def test_a_malformed_file_exits_2_naming_the_line(
    tmp_path: Path, capsys: Any, lines: list[str], where: str, message: str
) -> None:
    gold_set = tmp_path / "bad.jsonl"
    gold_set.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert gold_main(["run", "--set", str(gold_set), "--target", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert f"bad.jsonl: {where}:" in err and message in err


def test_missing_and_empty_files_exit_2(tmp_path: Path, capsys: Any) -> None:
    assert gold_main(["run", "--set", str(tmp_path / "none.jsonl"), "--target", "h:1"]) == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert gold_main(["run", "--set", str(empty), "--target", "h:1"]) == 2
    assert "no cases" in capsys.readouterr().err


async def test_a_parquet_set_runs_like_json_lines(
    models: dict[str, ModelServerHandle], tmp_path: Path
) -> None:
    cases = write_set(tmp_path / "set.jsonl", models, n=4)
    table = pa.table({
        "id": [c["id"] for c in cases],
        "request_json": [json.dumps(c["request_json"]) for c in cases],
        "expected": [json.dumps(c["expected"]) for c in cases],
        "atol": [1e-6] * 4,
    })
    pq.write_table(table, tmp_path / "set.parquet")
    assert len(load_cases(str(tmp_path / "set.parquet"))) == 4
    assert await gold("run", "--set", str(tmp_path / "set.parquet"), "--target",
                      models["primary"].target) == 0
    bad = table.set_column(2, "expected", pa.array(["{}", "{", "{}", "{}"]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(GoldFileError, match="row 1"):
        load_cases(str(tmp_path / "bad.parquet"))


def test_allocation_keeps_rare_labels() -> None:
    assert allocate({"0": 1000, "1": 5}, 100) == {"1": 5, "0": 95}
    assert allocate({"a": 30, "b": 30, "c": 30}, 30) == {"a": 10, "b": 10, "c": 10}
    assert allocate({"a": 2, "b": 3}, 100) == {"a": 2, "b": 3}


async def test_capture_then_run_against_the_same_model_passes(
    models: dict[str, ModelServerHandle], start_sidecar: Any, channel_to: Any, tmp_path: Path,
    capsys: Any,
) -> None:
    db = tmp_path / "traffic.duckdb"
    sc = await start_sidecar(
        {"fraud-v7": models["primary"].target},
        [{"match": ROUTE, "primary": "fraud-v7", "codec": "oip"}],
        db_path=db, storage={"path": str(db), "flush_interval_ms": 50, "record_bytes": True},
    )
    stub = channel_to(sc.port).unary_unary(ROUTE)
    rng = np.random.default_rng(5)
    for i, row in enumerate(rng.standard_normal((60, 8))):
        await stub(build_infer_request("demo", row, raw=bool(i % 2)), timeout=5)
    await sc.aclose()

    gold_set = tmp_path / "captured.jsonl"
    assert await gold("capture", "--from", str(db), "--route", ROUTE, "--n", "20",
                      "-o", str(gold_set)) == 0
    assert "captured 20 of 60" in capsys.readouterr().out
    cases = [json.loads(line) for line in gold_set.read_text().splitlines()]
    labels = [c["expected"]["label"] for c in cases]
    assert len(cases) == 20 and set(labels) == {"0", "1"}
    assert min(labels.count("0"), labels.count("1")) >= 5  # stratified, not proportional
    assert all(c["meta"]["review"] == "pending" for c in cases)
    assert await gold("run", "--set", str(gold_set), "--target",
                      models["primary"].target) == 0
    assert await gold("run", "--set", str(gold_set), "--target",
                      models["retrained"].target) == 1
    again = tmp_path / "again.jsonl"
    assert await gold("capture", "--from", str(db), "--route", ROUTE, "--n", "20",
                      "-o", str(again)) == 0
    assert again.read_text() == gold_set.read_text()  # the same seed, the same sample
