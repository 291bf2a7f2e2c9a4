"""Issue 17 (health and reflection): grpc.health.v1.Health/Check for a proxied service name
answers from the primary's health, not NOT_FOUND; server reflection lists the proxied
services and fetches their files from the primary, so grpcurl works through the sidecar."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from sidecar.backends.channel import Backend
from sidecar.config import parse_config
from sidecar.server.proxied_services import (
    ProxiedHealth,
    ProxiedReflection,
    ServiceMap,
    add_reflection,
)
from tests.server.oip_fake import NOT_SERVING, SERVING, start_fake

OIP = "inference.GRPCInferenceService"
Status = health_pb2.HealthCheckResponse


def _config(targets: dict[str, str], routes: list[dict[str, Any]]) -> Any:
    return parse_config({
        "listen": "127.0.0.1:0", "admin": {"listen": None}, "storage": {"path": "u.duckdb"},
        "backends": [{"name": n, "version": "1", "target": t} for n, t in targets.items()],
        "routes": routes}).config


class _Sidecar:
    """The sidecar's own health and reflection over a ServiceMap, on a real server."""

    def __init__(self) -> None:
        self.closing: list[Any] = []

    async def start(self, config: Any) -> tuple[grpc.aio.Channel, ProxiedHealth]:
        backends = {b.name: Backend(b, max_message_bytes=1 << 22) for b in config.backends}
        services = ServiceMap.build(config, backends)
        server = grpc.aio.server()
        servicer = ProxiedHealth(lambda: services)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        own = (health.SERVICE_NAME, reflection.SERVICE_NAME)
        add_reflection(server, ProxiedReflection(own, lambda: services))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.closing += [channel, *backends.values(), server]
        return channel, servicer

    async def close(self) -> None:
        for thing in self.closing:
            if isinstance(thing, grpc.aio.Server):
                await thing.stop(0)
            elif isinstance(thing, Backend):
                await thing.aclose()
            else:
                await thing.close()


@pytest.fixture
async def sidecar() -> AsyncIterator[_Sidecar]:
    made = _Sidecar()
    yield made
    await made.close()


async def _check(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return int(answer.status)


@pytest.mark.parametrize(("primary_health", "expected"), [
    ({"": SERVING, OIP: SERVING}, SERVING),
    ({"": SERVING, OIP: NOT_SERVING}, NOT_SERVING),
    ({"": NOT_SERVING}, NOT_SERVING),        # the name unknown there: its server's status
    (None, SERVING),                         # no health service: its channel connects
])
async def test_health_of_a_proxied_service_comes_from_the_primary(
    sidecar: _Sidecar, primary_health: dict[str, int] | None, expected: int
) -> None:
    fake = await start_fake({"m": ["1"]}, health_status=primary_health)
    sidecar.closing.append(fake.server)
    channel, _ = await sidecar.start(_config(
        {"p": fake.target}, [{"match": f"/{OIP}/ModelInfer", "primary": "p", "codec": "oip"}]))
    assert await _check(channel, OIP) == expected
    assert await _check(channel, "") == SERVING  # the sidecar's own status, as before
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _check(channel, "not.Routed")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_unreachable_primary_is_not_serving_and_shutdown_wins(sidecar: _Sidecar
                                                                       ) -> None:
    gone = grpc.aio.server()
    port = gone.add_insecure_port("127.0.0.1:0")  # bound, never started: refuses
    channel, servicer = await sidecar.start(_config(
        {"p": f"127.0.0.1:{port}"}, [{"match": f"/{OIP}/*", "primary": "p"}]))
    assert await _check(channel, OIP) == NOT_SERVING
    fake = await start_fake({"m": ["1"]}, health_status={"": SERVING})
    sidecar.closing += [fake.server, gone]
    channel, servicer = await sidecar.start(_config(
        {"p": fake.target}, [{"match": "*", "primary": "p"}]))
    assert await _check(channel, OIP) == SERVING
    # The sidecar's own services are never asked of a primary, even under a '*' route.
    servicer.own = frozenset({"shadowcar.v1.Feedback"})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _check(channel, "shadowcar.v1.Feedback")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    await servicer.enter_graceful_shutdown()
    assert await _check(channel, OIP) == NOT_SERVING


def _extra_pool() -> descriptor_pool.DescriptorPool:
    """A proto only the primary knows: package triton, service Extra."""
    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(name="triton/extra.proto", package="triton",
                                               syntax="proto3")
    proto.message_type.add(name="Ping")
    service = proto.service.add(name="Extra")
    service.method.add(name="Ping", input_type=".triton.Ping", output_type=".triton.Ping")
    pool.Add(proto)
    return pool


async def _reflect(channel: grpc.aio.Channel, **kind: Any
                   ) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(**kind)

    async for answer in stub.ServerReflectionInfo(one(), timeout=10):
        return answer
    raise AssertionError("no answer")


async def test_reflection_lists_and_describes_the_proxied_services(sidecar: _Sidecar) -> None:
    primary = grpc.aio.server()
    reflection.enable_server_reflection(
        ["triton.Extra", "unrouted.Thing", reflection.SERVICE_NAME], primary, pool=_extra_pool())
    port = primary.add_insecure_port("127.0.0.1:0")
    await primary.start()
    sidecar.closing.append(primary)
    channel, _ = await sidecar.start(_config(
        {"p": f"127.0.0.1:{port}"}, [{"match": "/triton.Extra/*", "primary": "p"}]))
    listed = await _reflect(channel, list_services="")
    names = {s.name for s in listed.list_services_response.service}
    assert names == {"triton.Extra", health.SERVICE_NAME, reflection.SERVICE_NAME}
    described = await _reflect(channel, file_containing_symbol="triton.Extra")
    (raw,) = described.file_descriptor_response.file_descriptor_proto
    proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert (proto.name, proto.service[0].name) == ("triton/extra.proto", "Extra")
    by_name = await _reflect(channel, file_by_filename="triton/extra.proto")
    assert by_name.file_descriptor_response.file_descriptor_proto == [raw]
    # The sidecar's own services are still described by the sidecar.
    own = await _reflect(channel, file_containing_symbol=health.SERVICE_NAME)
    assert not own.HasField("error_response")
    missing = await _reflect(channel, file_containing_symbol="no.Such")
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    # grpc.reflection.v1 (what grpcurl asks first) answers the same.
    v1 = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)

    async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    answers = [a async for a in v1(one(), timeout=10)]
    assert {s.name for s in answers[0].list_services_response.service} == names
