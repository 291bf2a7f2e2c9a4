"""MLServer behind the sidecar, called by the Triton client: real servers, real clients.

Two MLServer processes serve the model name ``iris`` (OIP requests carry the model name, so
the shadow must answer to it too): A a logistic regression as primary, B a decision tree as
shadow. The Triton gRPC client calls the sidecar and MLServer A directly; the answers must
match, and the recorded pairs must decode to each model's scikit-learn predictions.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.resources
import json
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from grpc_tools import protoc

from analysis import analyze_divergence, open_source
from sidecar.codecs.descriptor import DescriptorCodec
from tests.interop.conftest import HERE, ROOT, StartMLServer, interop_missing, run_interop

_MISSING = interop_missing()
pytestmark = [
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.subprocess,
    pytest.mark.timeout(180),
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
]

MODEL = "iris"
INFER = "/inference.GRPCInferenceService/ModelInfer"
#: MLServer computes one row at a time, scikit-learn in the trainer a batch: BLAS may
#: differ in the last bits.
RTOL = 1e-9


async def test_mlserver_through_the_sidecar_with_the_triton_client(
    tmp_path: Path, start_mlserver: StartMLServer, start_sidecar: Any
) -> None:
    started = time.monotonic()
    timings: dict[str, float] = {}
    models = tmp_path / "models"
    await run_interop(str(HERE / "_train.py"), str(models))
    timings["train"] = time.monotonic() - started
    samples = json.loads((models / "samples.json").read_text())
    expected = {k: np.asarray(v) for k, v in json.loads(
        (models / "expected.json").read_text()).items()}

    server_a, server_b = await start_mlserver(models / "a"), await start_mlserver(models / "b")
    await asyncio.gather(server_a.wait_ready(MODEL), server_b.wait_ready(MODEL))
    timings["mlserver_ready"] = time.monotonic() - started

    db = tmp_path / "interop.duckdb"
    sidecar = await start_sidecar(
        {"mls-a": server_a.target, "mls-b": server_b.target},
        [
            {"match": INFER, "primary": "mls-a", "codec": "oip", "timeout_ms": 10_000,
             "shadows": [{"backend": "mls-b", "timeout_ms": 10_000}]},
            {"match": "/inference.GRPCInferenceService/*", "primary": "mls-a"},
        ],
        db_path=db,
        storage={"path": str(db), "flush_interval_ms": 50, "record_bytes": True},
    )
    samples_file = str(models / "samples.json")
    through, direct = await asyncio.gather(
        run_interop(str(HERE / "_client.py"), f"127.0.0.1:{sidecar.port}", MODEL,
                    samples_file, "sc"),
        run_interop(str(HERE / "_client.py"), server_a.target, MODEL, samples_file, "direct"),
    )
    timings["clients"] = time.monotonic() - started
    via_sidecar, via_direct = json.loads(through), json.loads(direct)

    # The sidecar hands back MLServer's own answers, bit for bit after float parsing.
    assert via_sidecar == via_direct
    assert via_sidecar["live"] and via_sidecar["ready"] and via_sidecar["model_ready"]
    assert via_sidecar["metadata"]["name"] == MODEL
    np.testing.assert_allclose(via_sidecar["probabilities"], expected["a"], rtol=RTOL)

    await sidecar.aclose()  # flushes the sink after the shadows end
    con = duckdb.connect(str(db), read_only=True)
    try:
        _check_bytes(con, expected, tmp_path)
        _check_recorded(con, samples, expected)
    finally:
        con.close()
    _check_divergence(db, expected)
    timings["total"] = time.monotonic() - started
    print("interop timings (s from test start):", {k: round(v, 1) for k, v in timings.items()})


def _check_bytes(con: duckdb.DuckDBPyConnection, expected: dict[str, Any], tmp: Path) -> None:
    """MLServer's recorded response bytes, read with the descriptor codec from our .proto."""
    out = tmp / "inference.pb"
    assert protoc.main([
        "protoc", f"-I{ROOT / 'protos'}",
        f"-I{importlib.resources.files('grpc_tools') / '_proto'}",
        f"--descriptor_set_out={out}", "--include_imports", str(ROOT / "protos/inference.proto"),
    ]) == 0
    codec = DescriptorCodec(out)
    rows = con.execute(
        "SELECT request_id, backend, response_bytes FROM calls "
        "WHERE method = ? AND request_id LIKE 'sc-%'", [INFER]
    ).fetchall()
    assert len(rows) == 2 * len(expected["a"])
    for request_id, backend, raw in rows:
        doc = codec.decode_response_json(INFER, raw)
        assert doc["model_name"] == MODEL
        assert [o["name"] for o in doc["outputs"]] == ["predict_proba"]
        # MLServer answers raw requests with raw_output_contents (and an empty ``contents``).
        (blob,) = doc["raw_output_contents"]
        values = np.frombuffer(base64.b64decode(blob), dtype="<f8")
        row, model = int(request_id.removeprefix("sc-")), backend.removeprefix("mls-")
        np.testing.assert_allclose(values, expected[model][row], rtol=RTOL)


def _check_recorded(
    con: duckdb.DuckDBPyConnection, samples: list[list[float]], expected: dict[str, Any]
) -> None:
    requests = con.execute(
        "SELECT request_id, status, inputs[1].data FROM requests "
        "WHERE method = ? AND request_id LIKE 'sc-%'", [INFER]
    ).fetchall()
    assert len(requests) == len(samples)
    for request_id, status, data in requests:
        row = int(request_id.removeprefix("sc-"))
        assert status == "OK"
        assert data == samples[row]  # the Triton client's raw FP64 input, decoded

    calls = con.execute(
        "SELECT request_id, role, backend, status, output, score, label, outputs[1].name "
        "FROM calls WHERE method = ? AND request_id LIKE 'sc-%'", [INFER]
    ).fetchall()
    by_role: dict[str, dict[int, tuple[Any, ...]]] = {"primary": {}, "shadow": {}}
    errors = {r[0] for r in con.execute(
        "SELECT DISTINCT error FROM calls WHERE method = ? AND error IS NOT NULL", [INFER]
    ).fetchall()}
    # MLServer sets an empty ``contents`` beside raw_output_contents; the OIP codec must
    # accept that (an empty contents message holds no typed values).
    assert not errors, f"the OIP codec rejected MLServer's responses: {errors}"
    for request_id, role, backend, status, output, score, label, name in calls:
        by_role[role][int(request_id.removeprefix("sc-"))] = (
            backend, status, output, score, label, name)
    for role, backend, model in (("primary", "mls-a", "a"), ("shadow", "mls-b", "b")):
        assert sorted(by_role[role]) == list(range(len(samples))), role
        for row, (got_backend, status, output, score, label, name) in by_role[role].items():
            assert (got_backend, status, name) == (backend, "OK", "predict_proba")
            np.testing.assert_allclose(output, expected[model][row], rtol=RTOL)
            assert score == pytest.approx(expected[model][row][-1], rel=RTOL)
            assert label == str(int(np.argmax(expected[model][row])))

    # Metadata and health calls pass through on the wildcard route and are recorded too.
    methods = dict(con.execute(
        "SELECT method, count(*) FROM calls WHERE role = 'primary' AND status = 'OK' "
        "AND method <> ? GROUP BY method", [INFER]
    ).fetchall())
    for method in ("ServerLive", "ServerReady", "ModelReady", "ModelMetadata"):
        assert methods.get(f"/inference.GRPCInferenceService/{method}", 0) >= 1, methods


def _check_divergence(db: Path, expected: dict[str, Any]) -> None:
    con = open_source(db=str(db))
    try:
        report = analyze_divergence(con, route=INFER)
    finally:
        con.close()
    (pair,) = report.pairs
    assert (pair.primary, pair.shadow, pair.n) == ("mls-a", "mls-b", len(expected["a"]))
    agree = np.mean(np.argmax(expected["a"], 1) == np.argmax(expected["b"], 1))
    assert pair.classes is not None and pair.classes.agreement == pytest.approx(agree)
