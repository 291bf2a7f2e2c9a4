"""MLServer behind the sidecar, called by the Triton client: real servers, real clients.

Issue 17 (done when): MLServer A serves two scikit-learn models, ``fraud-lr`` and
``fraud-gbm``; MLServer B serves a third, ``fraud-tree``. One sidecar fronts them with a
route per model: ``fraud-lr`` served by A and mirrored to A's ``fraud-gbm`` and B's
``fraud-tree`` (each shadow asked under its own name), ``fraud-gbm`` served by A and mirrored
to ``fraud-tree``. The Triton gRPC client calls the sidecar and MLServer A directly: the
answers are equal byte for byte, the metadata and health calls work through the sidecar,
the shadows are recorded with outputs, and the divergence report pairs each model.
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
    pytest.mark.timeout(240),
    pytest.mark.skipif(_MISSING is not None, reason=_MISSING or ""),
]

INFER = "/inference.GRPCInferenceService/ModelInfer"
LR, GBM, TREE = "fraud-lr", "fraud-gbm", "fraud-tree"
ROUTE = {LR: f"{INFER};model={LR}", GBM: f"{INFER};model={GBM}"}
#: backend -> the model it is asked for
MODEL_OF = {"lr": LR, "gbm": GBM, "tree": TREE}
#: route model -> (primary backend, shadow backends)
TOPOLOGY = {LR: ("lr", ("gbm", "tree")), GBM: ("gbm", ("tree",))}
#: MLServer computes one row at a time, scikit-learn in the trainer a batch: BLAS may
#: differ in the last bits.
RTOL = 1e-9


async def test_mlserver_models_through_the_sidecar_with_the_triton_client(
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
    await asyncio.gather(server_a.wait_ready(LR), server_a.wait_ready(GBM),
                         server_b.wait_ready(TREE))
    timings["mlserver_ready"] = time.monotonic() - started

    db = tmp_path / "interop.duckdb"
    backends = [
        {"name": "lr", "version": "1", "target": server_a.target},
        {"name": "gbm", "version": "2", "target": server_a.target, "model": GBM},
        {"name": "tree", "version": "3", "target": server_b.target, "model": TREE},
    ]
    routes = [
        {"match": {"method": INFER, "model": model}, "primary": primary, "codec": "oip",
         "timeout_ms": 10_000,
         "shadows": [{"backend": s, "timeout_ms": 10_000} for s in shadows]}
        for model, (primary, shadows) in TOPOLOGY.items()
    ]
    sidecar = await start_sidecar(
        {}, routes, backends_override=backends, db_path=db,
        storage={"path": str(db), "flush_interval_ms": 50, "record_bytes": True},
    )
    samples_file = str(models / "samples.json")
    sidecar_target = f"127.0.0.1:{sidecar.port}"
    runs = await asyncio.gather(*(
        run_interop(str(HERE / "_client.py"), target, model, samples_file, prefix)
        for model in (LR, GBM)
        for target, prefix in ((sidecar_target, f"sc-{model}"),
                               (server_a.target, f"direct-{model}"))
    ))
    timings["clients"] = time.monotonic() - started
    for model, (through, direct) in zip((LR, GBM), (runs[0:2], runs[2:4]), strict=True):
        via_sidecar, via_direct = json.loads(through), json.loads(direct)
        # A model no route serves is the sidecar's NOT_FOUND naming it (MLServer itself
        # says UNKNOWN): it never reaches a backend.
        assert via_sidecar.pop("missing_model_ready") == "StatusCode.NOT_FOUND"
        via_direct.pop("missing_model_ready")
        # The sidecar hands back MLServer's own answers, byte for byte (re-serialized by
        # the client, deterministically), and the metadata and health answers too.
        assert via_sidecar == via_direct
        assert via_sidecar["live"] and via_sidecar["ready"] and via_sidecar["model_ready"]
        assert via_sidecar["metadata"]["name"] == model
        np.testing.assert_allclose(via_sidecar["probabilities"], expected[model], rtol=RTOL)

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


def _row(request_id: str) -> tuple[str, int]:
    """(caller's model, row) of an x-request-id ``sc-MODEL-ROW``."""
    head, _, row = request_id.removeprefix("sc-").rpartition("-")
    return head, int(row)


def _check_bytes(con: duckdb.DuckDBPyConnection, expected: dict[str, Any], tmp: Path) -> None:
    """MLServer's recorded response bytes, read with the descriptor codec from our .proto:
    each backend answered under the model name it was asked for."""
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
    assert len(rows) == 5 * len(expected[LR])  # 3 calls per fraud-lr row, 2 per fraud-gbm
    for request_id, backend, raw in rows:
        doc = codec.decode_response_json(INFER, raw)
        model = MODEL_OF[backend]
        assert doc["model_name"] == model
        (blob,) = doc["raw_output_contents"]
        values = np.frombuffer(base64.b64decode(blob), dtype="<f8")
        np.testing.assert_allclose(values, expected[model][_row(request_id)[1]], rtol=RTOL)


def _check_recorded(
    con: duckdb.DuckDBPyConnection, samples: list[list[float]], expected: dict[str, Any]
) -> None:
    requests = con.execute(
        "SELECT request_id, route, status, inputs[1].data FROM requests "
        "WHERE method = ? AND request_id LIKE 'sc-%'", [INFER]
    ).fetchall()
    assert len(requests) == 2 * len(samples)
    for request_id, route, status, data in requests:
        model, row = _row(request_id)
        assert (route, status) == (ROUTE[model], "OK")
        assert data == samples[row]  # the Triton client's raw FP64 input, decoded

    errors = {r[0] for r in con.execute(
        "SELECT DISTINCT error FROM calls WHERE method = ? AND error IS NOT NULL", [INFER]
    ).fetchall()}
    assert not errors, f"calls failed: {errors}"
    calls = con.execute(
        "SELECT request_id, route, role, backend, status, output, label "
        "FROM calls WHERE method = ? AND request_id LIKE 'sc-%'", [INFER]
    ).fetchall()
    seen: dict[tuple[str, str], set[int]] = {}
    for request_id, route, role, backend, status, output, label in calls:
        model, row = _row(request_id)
        primary, shadows = TOPOLOGY[model]
        assert route == ROUTE[model] and status == "OK"
        assert (role, backend) == ("primary", primary) or (
            role == "shadow" and backend in shadows)
        # Every shadow answered under its own model name, and its outputs are recorded.
        np.testing.assert_allclose(output, expected[MODEL_OF[backend]][row], rtol=RTOL)
        assert label == str(int(np.argmax(expected[MODEL_OF[backend]][row])))
        seen.setdefault((model, backend), set()).add(row)
    rows = set(range(len(samples)))
    assert seen == {(LR, "lr"): rows, (LR, "gbm"): rows, (LR, "tree"): rows,
                    (GBM, "gbm"): rows, (GBM, "tree"): rows}
    # Metadata and health calls pass through unrecorded: only inference is a request.
    others = con.execute("SELECT count(*) FROM calls WHERE method <> ?", [INFER]).fetchone()
    assert others == (0,)


def _check_divergence(db: Path, expected: dict[str, Any]) -> None:
    con = open_source(db=str(db))
    try:
        report = analyze_divergence(con).to_dict()
    finally:
        con.close()
    pairs = {(p["route"], p["primary"], p["shadow"]): p for p in report["pairs"]}
    assert set(pairs) == {(ROUTE[LR], "lr", "gbm"), (ROUTE[LR], "lr", "tree"),
                          (ROUTE[GBM], "gbm", "tree")}
    for (route, primary, shadow), pair in pairs.items():
        p, s = expected[MODEL_OF[primary]], expected[MODEL_OF[shadow]]
        assert pair["n"] == len(p), route
        agree = np.mean(np.argmax(p, 1) == np.argmax(s, 1))
        assert pair["classes"]["agreement"] == pytest.approx(agree)
    assert pairs[(ROUTE[LR], "lr", "gbm")]["shadow_label"] == f"gbm@2 ({GBM})"
    assert pairs[(ROUTE[GBM], "gbm", "tree")]["primary_label"] == f"gbm@2 ({GBM})"
