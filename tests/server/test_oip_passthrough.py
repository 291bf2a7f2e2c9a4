"""Issue 17 (the rest of the protocol through the sidecar): ServerLive, ServerReady,
ServerMetadata, ModelReady and ModelMetadata reach the primary of the route that serves the
model they name, with the name mapped both ways; unknown models are NOT_FOUND naming them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from sidecar._proto import inference_pb2 as pb
from sidecar._proto import inference_pb2_grpc as pb_grpc
from sidecar.backends.channel import Backend
from sidecar.config import parse_config
from sidecar.server.oip_passthrough import INFER, ModelTable, OipPassthrough
from tests.server.oip_fake import FakeOip, start_fake


def _config(targets: dict[str, str], routes: list[dict[str, Any]],
            models: dict[str, str] | None = None) -> Any:
    backends = [{"name": n, "version": "1", "target": t, **(
        {"model": models[n]} if models and n in models else {})} for n, t in targets.items()]
    return parse_config({"listen": "127.0.0.1:0", "admin": {"listen": None},
                         "storage": {"path": "unused.duckdb"},
                         "backends": backends, "routes": routes}).config


class _Rig:
    def __init__(self) -> None:
        self.servers: list[grpc.aio.Server] = []
        self.backends: list[Backend] = []
        self.channels: list[grpc.aio.Channel] = []

    async def sidecar(self, config: Any) -> tuple[pb_grpc.GRPCInferenceServiceStub,
                                                  OipPassthrough]:
        backends = {b.name: Backend(b, max_message_bytes=1 << 22) for b in config.backends}
        self.backends += backends.values()
        passthrough = OipPassthrough(ModelTable.build(config, backends))
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([passthrough])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.channels.append(channel)
        return pb_grpc.GRPCInferenceServiceStub(channel), passthrough

    async def close(self, fakes: list[FakeOip]) -> None:
        for channel in self.channels:
            await channel.close()
        for backend in self.backends:
            await backend.aclose()
        for server in [*self.servers, *(f.server for f in fakes)]:
            await server.stop(0)


@pytest.fixture
async def rig() -> AsyncIterator[_Rig]:
    made = _Rig()
    fakes: list[FakeOip] = []
    made.fakes = fakes  # type: ignore[attr-defined]
    yield made
    await made.close(fakes)


async def test_model_calls_follow_the_model_and_names_are_mapped(rig: _Rig) -> None:
    a = await start_fake({"fraud-lr": ["1"], "fraud-gbm": ["1", "2"]}, server_name="a")
    b = await start_fake({"credit-rf-v3": ["3"]}, server_name="b")
    rig.fakes += [a, b]  # type: ignore[attr-defined]
    config = _config(
        {"lr": a.target, "gbm": a.target, "rf": b.target},
        [{"match": INFER, "primary": "lr", "codec": "oip", "shadows": [{"backend": "gbm"}]},
         {"match": {"method": INFER, "model": "credit"}, "primary": "rf", "codec": "oip"}],
        models={"gbm": "fraud-gbm", "rf": "credit-rf-v3"},
    )
    stub, _ = await rig.sidecar(config)
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    # Server-level calls go to the default route's primary (server a).
    assert (await stub.ServerMetadata(pb.ServerMetadataRequest())).name == "a"
    # The default route's primary keeps the caller's name: its bytes are untouched.
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="fraud-lr"))).ready
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud-lr"))
    assert (meta.name, meta.platform) == ("fraud-lr", "a")
    # A per-model route's primary is asked under its own name; the answer names the
    # caller's model, with the versions the server reports.
    meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name="credit", version="7"))
    assert (meta.name, list(meta.versions), meta.platform) == ("credit", ["3"], "b")
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="credit"))).ready
    assert b.names("ModelMetadata") == [("credit-rf-v3", "")]  # a renamed model: no version
    assert b.names("ModelReady") == [("credit-rf-v3", "")]
    assert a.names("ModelReady") == [("fraud-lr", "")]
    # An unknown model goes to the default route's primary, whose NOT_FOUND comes back.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelReady(pb.ModelReadyRequest(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (err.value.details() or "")


async def test_without_a_default_route_an_unknown_model_is_not_found(rig: _Rig) -> None:
    b = await start_fake({"credit-rf-v3": ["3"]}, server_name="b")
    rig.fakes.append(b)  # type: ignore[attr-defined]
    config = _config({"rf": b.target},
                     [{"match": {"method": INFER, "model": "credit"}, "primary": "rf",
                       "codec": "oip"}], models={"rf": "credit-rf-v3"})
    stub, passthrough = await rig.sidecar(config)
    assert passthrough.table.per_model
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no route serves model 'fraud'" in (err.value.details() or "")
    assert b.seen == []  # never reached the backend
    # Server-level calls still reach the first per-model route's primary.
    assert (await stub.ServerMetadata(pb.ServerMetadataRequest())).name == "b"


async def test_exact_routes_and_inference_are_not_passed(rig: _Rig) -> None:
    a = await start_fake({"m": ["1"]})
    rig.fakes.append(a)  # type: ignore[attr-defined]
    config = _config({"p": a.target}, [
        {"match": INFER, "primary": "p", "codec": "oip"},
        {"match": "/inference.GRPCInferenceService/ServerMetadata", "primary": "p"},
    ])
    table = ModelTable.build(config, {"p": Backend(config.backends[0], max_message_bytes=1024)})
    assert table.handles("/inference.GRPCInferenceService/ModelReady")
    assert table.handles("/inference.GRPCInferenceService/RepositoryIndex")
    assert not table.handles(INFER)
    assert not table.handles("/inference.GRPCInferenceService/ModelStreamInfer")
    assert not table.handles("/inference.GRPCInferenceService/ServerMetadata")
    assert not table.handles("/other.Svc/ModelReady")
    await table.default.backend.aclose()  # type: ignore[union-attr]
    # No OIP route: nothing is passed.
    plain = _config({"p": a.target}, [{"match": "*", "primary": "p"}])
    assert not ModelTable.build(plain, {}).handles("/inference.GRPCInferenceService/ModelReady")


async def test_unreadable_model_request_is_invalid_argument(rig: _Rig) -> None:
    a = await start_fake({"m": ["1"]})
    rig.fakes.append(a)  # type: ignore[attr-defined]
    config = _config({"p": a.target}, [{"match": INFER, "primary": "p", "codec": "oip"}],
                     models={"p": "m"})
    await rig.sidecar(config)
    channel = rig.channels[-1]
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelReady")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"\x0a\x05ab")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
