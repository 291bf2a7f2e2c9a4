"""Issue 17 through a running sidecar: per-backend model names (shadows, fallbacks,
experiment variants, canary candidates, the serving primary) and routes per model, with
real OIP servers on loopback and the recorded DuckDB rows."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar._proto import inference_pb2 as pb
from sidecar._proto import inference_pb2_grpc as pb_grpc
from tests.server.oip_fake import FakeOip, start_fake

INFER = "/inference.GRPCInferenceService/ModelInfer"


def _request(model: str, version: str = "", rid: str = "") -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model, model_version=version, id=rid)
    msg.inputs.add(name="input-0", datatype="FP64", shape=[1, 2])
    msg.raw_input_contents.append(b"\x00" * 16)
    return msg


async def _until(predicate: Any, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.fixture
async def fakes() -> Any:
    started: list[FakeOip] = []

    async def make(models: dict[str, list[str]], **kw: Any) -> FakeOip:
        fake = await start_fake(models, **kw)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.server.stop(0)


async def test_shadows_under_other_names_and_routes_per_model(
    tmp_path: Path, fakes: Any, start_sidecar: Any, channel_to: Any
) -> None:
    """Issue 17.1, 17.2: a shadow served under another name answers (not NOT_FOUND); the
    primary's bytes are untouched; each model's calls take their own route; a model no
    route names is NOT_FOUND naming it; recorded rows say which route served."""
    a = await fakes({"fraud-lr": ["1"], "fraud-gbm": ["1", "2"]}, server_name="a")
    b = await fakes({"credit-rf": ["3"]}, server_name="b")
    db = tmp_path / "m.duckdb"
    backends = [
        {"name": "lr", "version": "1", "target": a.target},
        {"name": "gbm", "version": "2", "target": a.target, "model": "fraud-gbm",
         "model_version": "2"},
        {"name": "rf", "version": "3", "target": b.target, "model": "credit-rf"},
    ]
    routes = [
        {"match": {"method": INFER, "model": "fraud-lr"}, "primary": "lr", "codec": "oip",
         "shadows": [{"backend": "gbm"}, {"backend": "rf"}]},
        {"match": {"method": INFER, "model": "credit"}, "primary": "rf", "codec": "oip"},
    ]
    sc = await start_sidecar({}, routes, backends_override=backends, db_path=db)
    stub = pb_grpc.GRPCInferenceServiceStub(channel_to(sc.port))
    sent = _request("fraud-lr", "1", "r-1")
    raw = channel_to(sc.port).unary_unary(INFER)
    answer = pb.ModelInferResponse.FromString(await raw(sent.SerializeToString()))
    assert (answer.model_name, answer.id) == ("fraud-lr", "r-1")
    # Per-model route with a renamed primary: asked as credit-rf, answered as "credit".
    credit = await stub.ModelInfer(_request("credit", "9"))
    assert (credit.model_name, credit.model_version) == ("credit", "3")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(_request("nobody"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no route serves model 'nobody'" in (err.value.details() or "")
    await _until(lambda: len(b.names("ModelInfer")) == 2 and len(a.names("ModelInfer")) == 2)
    # The primary got the caller's exact bytes; each shadow its own model name.
    primary_seen = [r for kind, r in a.seen if kind == "ModelInfer"
                    and r.model_name == "fraud-lr"]
    assert [r.SerializeToString() for r in primary_seen] == [sent.SerializeToString()]
    assert ("fraud-gbm", "2") in a.names("ModelInfer")
    assert sorted(b.names("ModelInfer")) == [("credit-rf", ""), ("credit-rf", "")]
    # Metadata through the sidecar: the per-model route's primary, named as asked.
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="credit"))
    assert (meta.name, meta.platform) == ("credit", "b")
    # Health of the proxied service: the primary has no health service, it connects.
    health = health_pb2_grpc.HealthStub(channel_to(sc.port))
    status = await health.Check(health_pb2.HealthCheckRequest(
        service="inference.GRPCInferenceService"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    # The dashboard's data names each backend's model (shown as backend@version (model)).
    stats = sc.stats()
    fraud_view = next(r for r in stats["routes"] if r["match"] == f"{INFER};model=fraud-lr")
    assert fraud_view["primary_model"] is None
    assert fraud_view["shadows"]["gbm"]["model"] == "fraud-gbm"
    assert {b["name"]: b["model"] for b in stats["backends"]} == {
        "lr": None, "gbm": "fraud-gbm", "rf": "credit-rf"}
    await sc.aclose()
    con = duckdb.connect(str(db), read_only=True)
    try:
        calls = con.execute("SELECT route, backend, role, status FROM calls "
                            "ORDER BY route, backend").fetchall()
    finally:
        con.close()
    fraud, credit_route = f"{INFER};model=fraud-lr", f"{INFER};model=credit"
    assert calls == [(credit_route, "rf", "primary", "OK"), (fraud, "gbm", "shadow", "OK"),
                     (fraud, "lr", "primary", "OK"), (fraud, "rf", "shadow", "OK")]


async def test_default_route_fallback_and_variants_are_renamed(
    fakes: Any, start_sidecar: Any, channel_to: Any
) -> None:
    """Issue 17.1: every place a request is sent: a fallback backend and experiment variants
    get their own model names; other models go to the plain (default) route."""
    a = await fakes({"m-a": ["1"]}, server_name="a")
    b = await fakes({"m-b": ["1"]}, server_name="b")
    with socket.socket() as sock:  # a port nothing listens on: UNAVAILABLE at once
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    backends = [
        {"name": "down", "version": "1", "target": f"127.0.0.1:{dead}"},
        {"name": "fb", "version": "1", "target": b.target, "model": "m-b"},
        {"name": "va", "version": "1", "target": a.target, "model": "m-a"},
        {"name": "vb", "version": "1", "target": b.target, "model": "m-b"},
    ]
    routes = [
        {"match": INFER, "primary": "down", "codec": "oip", "timeout_ms": 10_000,
         "fallback": {"backend": "fb", "codes": ["UNAVAILABLE"], "timeout_ms": 10_000}},
        {"match": {"method": INFER, "model": "exp"}, "primary": "va", "codec": "oip",
         "experiment": {"name": "e", "unit": {"metadata": "x-user"},
                        "variants": [{"name": "control", "backend": "va", "weight": 50},
                                     {"name": "treat", "backend": "vb", "weight": 50}]}},
    ]
    sc = await start_sidecar({}, routes, backends_override=backends)
    stub = pb_grpc.GRPCInferenceServiceStub(channel_to(sc.port))
    # The default route: its primary is down, the fallback answers under its own name,
    # named back as the caller asked.
    answer = await stub.ModelInfer(_request("anything"))
    assert answer.model_name == "anything"
    assert b.names("ModelInfer") == [("m-b", "")]
    for user in range(40):
        got = await stub.ModelInfer(_request("exp"), metadata=(("x-user", f"u{user}"),))
        assert got.model_name == "exp"
    assert len(a.names("ModelInfer")) + len(b.names("ModelInfer")) == 41
    assert set(a.names("ModelInfer")) == {("m-a", "")}
    assert set(b.names("ModelInfer")) == {("m-b", "")}
    assert a.names("ModelInfer") and len(b.names("ModelInfer")) > 1  # both variants served


async def test_a_reload_moves_models_and_metadata_to_their_new_routes(
    tmp_path: Path, fakes: Any, start_sidecar: Any, channel_to: Any
) -> None:
    """Issue 17.2, 17.3 across a reload: the per-model routes, the passthrough of the
    protocol's other calls and the health map follow the new config."""
    from sidecar.config import parse_config
    from tests.conftest import sidecar_config

    a = await fakes({"credit": ["1"]}, server_name="a")
    b = await fakes({"credit-v2": ["2"]}, server_name="b")
    backends = [{"name": "pa", "version": "1", "target": a.target},
                {"name": "pb", "version": "2", "target": b.target, "model": "credit-v2"}]
    first = [{"match": INFER, "primary": "pa", "codec": "oip"}]
    sc = await start_sidecar({}, first, backends_override=backends)
    stub = pb_grpc.GRPCInferenceServiceStub(channel_to(sc.port))
    assert (await stub.ModelMetadata(pb.ModelMetadataRequest(name="credit"))).platform == "a"
    second = [*first, {"match": {"method": INFER, "model": "credit"}, "primary": "pb",
                       "codec": "oip"}]
    data = sidecar_config(tmp_path / "sidecar.duckdb", {}, second, backends_override=backends)
    assert await sc.reload(parse_config(data), actor="test", reason="per-model route")
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="credit"))
    assert (meta.name, meta.platform) == ("credit", "b")
    answer = await stub.ModelInfer(_request("credit"))
    assert answer.model_name == "credit"
    assert b.names("ModelInfer") == [("credit-v2", "")]
    assert a.names("ModelInfer") == []
