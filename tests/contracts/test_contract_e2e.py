"""Contracts with real servers: observe records violations, enforce refuses them before the
model, imputation equals a request sent with the default, outputs are checked too."""

from __future__ import annotations

import json

import duckdb
import grpc
import pytest
import yaml

from sidecar._proto import inference_pb2 as pb
from sidecar.demo.models import make_demo_models, start_model_server

METHOD = "/inference.GRPCInferenceService/ModelInfer"
CONTRACT = {
    "name": "demo-score", "version": "2",
    "inputs": [{
        "name": "features", "datatype": "FP32", "shape": [-1, 8],
        "features": [{"index": 0, "name": "amount", "range": [-3, 3]}],
        "default": [0, 0, 0, 0, 0, 0, 0, 0],
    }],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2],
                 "range": [0, 1]}],
}


def _request(values: list[float] | None) -> bytes:
    req = pb.ModelInferRequest(model_name="demo")
    if values is not None:
        t = req.inputs.add(name="features", datatype="FP32", shape=[1, 8])
        t.contents.fp32_contents.extend(values)
    return req.SerializeToString()


@pytest.mark.parametrize("mode", ["observe", "enforce"])
async def test_contract_modes(mode, tmp_path, start_sidecar, channel_to) -> None:
    (tmp_path / "contract.yaml").write_text(yaml.safe_dump(CONTRACT))
    model, _ = make_demo_models()
    server = await start_model_server(model)
    db = tmp_path / f"{mode}.duckdb"
    try:
        sc = await start_sidecar(
            {"p": server.target},
            [{"match": METHOD, "primary": "p", "codec": "oip",
              "contract": {"file": str(tmp_path / "contract.yaml"), "mode": mode}}],
            db_path=db,
        )
        stub = channel_to(sc.port).unary_unary(METHOD)
        good = [0.5] * 8
        bad = [9.0] + [0.0] * 7  # amount out of its range
        assert await stub(_request(good), metadata=(("x-request-id", "good"),))
        if mode == "observe":
            assert await stub(_request(bad), metadata=(("x-request-id", "bad"),))
        else:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub(_request(bad), metadata=(("x-request-id", "bad"),))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "features.amount: range" in info.value.details()
            assert "demo-score@2" in info.value.details()
            assert server.calls == 1  # it never reached the model
            # A request without the tensor gets the declared default, byte-equal to one
            # that carried it.
            answer_imputed = await stub(_request(None), metadata=(("x-request-id", "imp"),))
            answer_default = await stub(_request([0.0] * 8))
            assert answer_imputed == answer_default
        await sc.aclose()
    finally:
        await server.aclose()
    con = duckdb.connect(str(db), read_only=True)
    rows = {r[0]: r[1:] for r in con.execute(
        "SELECT request_id, status, contract, violations, imputed FROM requests").fetchall()}
    con.close()
    assert rows["good"][1] == "demo-score@2" and rows["good"][2] is None
    status, _, violations, _ = rows["bad"]
    assert status == ("OK" if mode == "observe" else "INVALID_ARGUMENT")
    found = json.loads(violations)
    assert found[0]["field"] == "features.amount" and found[0]["rule"] == "range"
    if mode == "enforce":
        assert json.loads(rows["imp"][3]) == ["features"]
