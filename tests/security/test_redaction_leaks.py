"""Issue 14.4: with ``redact: {inputs: [email, salary], unit: true}`` and a data contract, no
redacted value reaches the DuckDB file, the Parquet export, logs, metric labels or error
texts; outcome unit ids are hashed with the route's key so they still join their units."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import grpc
import pytest
import yaml
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar._proto import inference_pb2 as pb
from sidecar._proto.shadowcar.v1 import feedback_pb2, feedback_pb2_grpc
from sidecar.app import Sidecar
from sidecar.codecs.oip import decode_infer_request
from sidecar.config import parse_config
from sidecar.contracts import Violation, check_inputs, hide_values, parse_contract
from tests.conftest import sidecar_config

OBSERVE = "/inference.GRPCInferenceService/ModelInfer"
ENFORCE = "/enforce.Svc/Infer"
EMAIL, SALARY, UNIT = "alice.secret@corp.example", 987654.0, "user-7-secret"
SECRETS = ("alice.secret", "987654", "user-7-secret")
KEY = "k3y"
CONTRACT = {
    "name": "hr", "version": "1",
    "inputs": [
        {"name": "email", "datatype": "BYTES", "shape": [1],
         "features": [{"index": 0, "name": "address", "categories": ["nobody@corp.example"]}]},
        {"name": "salary", "datatype": "FP64", "shape": [1],
         "features": [{"index": 0, "name": "amount", "range": [0, 500000]}]},
        {"name": "age", "datatype": "FP64", "shape": [1],
         "features": [{"index": 0, "name": "years", "range": [0, 120]}]},
    ],
}


def keyed(text: str) -> str:
    return hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest()[:32]


def _request() -> bytes:
    req = pb.ModelInferRequest(model_name="hr")
    req.inputs.add(name="email", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        EMAIL.encode())
    req.inputs.add(name="salary", datatype="FP64", shape=[1]).contents.fp64_contents.append(
        SALARY)
    req.inputs.add(name="age", datatype="FP64", shape=[1]).contents.fp64_contents.append(130)
    return req.SerializeToString()


def test_violations_of_redacted_tensors_quote_no_values() -> None:
    """Issue 14.4 (the core): violation details quote values ("e.g. ...", "min ..., max
    ..."); for redacted tensors they keep counts and bounds only."""
    found = check_inputs(parse_contract(CONTRACT), decode_infer_request(_request()))
    assert {v.tensor for v in found} == {"email", "salary", "age"}
    shown = hide_values(found, {"email", "salary"})
    text = " ".join(v.detail for v in shown)
    assert all(s not in text for s in SECRETS[:2]), text
    by_field = {v.field: v.detail for v in shown}
    assert by_field["salary.amount"] == "1 of 1 values outside [0, 500000] (values redacted)"
    assert by_field["email.address"] == "1 of 1 values not allowed (values redacted)"
    assert "min 130" in by_field["age.years"]  # not redacted: the values stay for debugging
    assert hide_values(found, ()) == tuple(found)
    assert Violation("x", "shape", "expected [1]").without_values().detail == "expected [1]"


def _all_text(con: duckdb.DuckDBPyConnection, relation: str) -> str:
    rows = con.execute(f"SELECT * FROM {relation}").fetchall()
    return repr(rows)


async def test_nothing_redacted_reaches_disk_exports_logs_or_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, echo: Any,
    channel_to: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 14.4: requests.violations held "e.g. alice.secret@corp.example" and "min 987654,
    max 987654", so did the Parquet export; outcomes.unit_id was raw while requests.unit_id
    was hashed. Also the siblings: calls.error (a backend echoing the input), the enforce
    refusal text, the outcome ingestion by HTTP and gRPC, a shadow's failure, logs, metric
    labels, /v1/stats (the breaker's and the backend's last error) and spans."""
    monkeypatch.setenv("SHADOWCAR_REDACTION_KEY", KEY)
    (tmp_path / "hr.yaml").write_text(yaml.safe_dump(CONTRACT))
    backend, shadow = await echo(), await echo()
    db, export = tmp_path / "leak.duckdb", tmp_path / "export"
    redact = {"inputs": ["email", "salary"], "unit": True}
    route = {"primary": "p", "codec": "oip", "unit": {"metadata": "x-user-id"}, "redact": redact,
             "shadows": [{"backend": "s"}],
             "experiment": {"name": "e", "variants": [{"name": "only", "backend": "p",
                                                       "weight": 100}]}}
    caplog.set_level(logging.DEBUG)
    data = sidecar_config(
        db, {"p": backend.target, "s": shadow.target},
        [{**route, "match": OBSERVE, "contract": {"file": str(tmp_path / "hr.yaml")}},
         {**route, "match": ENFORCE,
          "contract": {"file": str(tmp_path / "hr.yaml"), "mode": "enforce"}}],
        storage={"path": str(db), "flush_interval_ms": 20, "record_bytes": True,
                 "export": {"dir": str(export), "every_s": 3600}},
    )
    spans = InMemorySpanExporter()
    sc = Sidecar(parse_config(data), span_exporter=spans)
    await sc.start()
    channel = channel_to(sc.port)
    # The backend fails with details that echo the request, as models do.
    echoing = (("x-user-id", UNIT), ("x-echo-status", "UNAVAILABLE"),
               ("x-echo-details", f"bad email {EMAIL} for salary {SALARY:g}"))
    with pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary(OBSERVE)(_request(), metadata=echoing, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await channel.unary_unary(ENFORCE)(_request(), metadata=echoing[:1], timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = refused.value.details() or ""
    assert "salary.amount: range" in details and "values redacted" in details
    assert "min 130" in details  # the unredacted input keeps its values
    events = [{"event_id": "h1", "unit_id": UNIT, "metric": "hired", "value": 1}]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{sc.admin.port}/v1/outcomes",
                             json={"events": events}) as resp:
            assert resp.status == 200 and (await resp.json())["accepted"] == 1
    stub = feedback_pb2_grpc.FeedbackStub(channel)
    answer = await stub.RecordOutcomes(feedback_pb2.RecordOutcomesRequest(events=[
        feedback_pb2.OutcomeEvent(event_id="g1", unit_id=UNIT, metric="hired", value=1)]))
    assert answer.accepted == 1
    for _ in range(500):  # the shadow's failure is recorded off the caller's path
        if sc.backends["s"].breaker.snapshot()["last_error"]:
            break
        await asyncio.sleep(0.02)
    for name in ("p", "s"):  # the breakers keep (and would log) the recorded form only
        assert sc.backends[name].breaker.snapshot()["last_error"]["message"].startswith(
            "redacted:")
    metrics = sc.metrics.render() + json.dumps(sc.stats(), default=str)
    await sc.aclose()
    finished = spans.get_finished_spans()
    assert any(span.status.description for span in finished)
    metrics += repr([(span.name, span.status.description, dict(span.attributes or {}))
                     for span in finished])

    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SHOW TABLES").fetchall()]
        stored = {t: _all_text(con, t) for t in tables}
        violations = con.execute(
            "SELECT route, violations FROM requests ORDER BY route").fetchall()
        units = con.execute("SELECT DISTINCT unit_id FROM requests WHERE unit_id IS NOT NULL"
                            ).fetchall()
        joined = con.execute(
            "SELECT count(*) FROM outcomes o JOIN requests r USING (unit_id)").fetchone()
        errors = con.execute("SELECT error FROM calls").fetchall()
    finally:
        con.close()
    for table, text in stored.items():
        for secret in SECRETS:
            assert secret not in text, (table, secret)
    assert all(v is not None and "values redacted" in v for _, v in violations)
    assert units == [(keyed(UNIT),)] and joined is not None and joined[0] >= 2
    echoed = f"redacted:{keyed(f'bad email {EMAIL} for salary {SALARY:g}')}"
    assert errors == [(echoed,), (echoed,)]  # the primary's and the shadow's
    exported = duckdb.connect()
    try:
        for table in ("requests", "calls", "outcomes"):
            files = f"{export}/table={table}/*/*.parquet"
            text = _all_text(exported, f"read_parquet('{files}', hive_partitioning=true)")
            assert len(text) > 10
            for secret in SECRETS:
                assert secret not in text, (table, secret)
    finally:
        exported.close()
    for secret in SECRETS:  # logs; metric labels, /v1/stats, spans
        assert secret not in caplog.text and secret not in metrics
