"""A small multi-model Open Inference Protocol server for tests (real grpc.aio, loopback).

It serves the models it is given, answers like MLServer for unknown ones (NOT_FOUND naming
the model and version), and keeps every request it received, as parsed messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sidecar._proto import inference_pb2 as pb
from sidecar._proto import inference_pb2_grpc as pb_grpc


@dataclass
class FakeOip(pb_grpc.GRPCInferenceServiceServicer):
    """Models: name -> versions. ModelInfer answers one FP64 output ``score`` holding the
    model's index among the server's models plus the first raw input's length."""

    models: dict[str, list[str]]
    server_name: str = "fake-oip"
    seen: list[tuple[str, Any]] = field(default_factory=list)
    server: Any = None
    port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _model(self, name: str, version: str, context: Any) -> None:
        if name not in self.models or (version and version not in self.models[name]):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"Model {name} with version {version} not found")

    async def ServerLive(self, request, context):  # the proto's method names
        self.seen.append(("ServerLive", request))
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        self.seen.append(("ServerReady", request))
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        self.seen.append(("ServerMetadata", request))
        return pb.ServerMetadataResponse(name=self.server_name, version="1.0")

    async def ModelReady(self, request, context):
        self.seen.append(("ModelReady", request))
        await self._model(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request, context):
        self.seen.append(("ModelMetadata", request))
        await self._model(request.name, request.version, context)
        meta = pb.ModelMetadataResponse(name=request.name, versions=self.models[request.name],
                                        platform=self.server_name)
        meta.inputs.add(name="input-0", datatype="FP64", shape=[-1, 4])
        return meta

    async def ModelInfer(self, request, context):
        self.seen.append(("ModelInfer", request))
        await self._model(request.model_name, request.model_version, context)
        index = list(self.models).index(request.model_name)
        size = len(request.raw_input_contents[0]) if request.raw_input_contents else 0
        answer = pb.ModelInferResponse(model_name=request.model_name,
                                       model_version=self.models[request.model_name][-1],
                                       id=request.id)
        out = answer.outputs.add(name="score", datatype="FP64", shape=[1])
        out.contents.fp64_contents.append(float(index * 1000 + size))
        return answer

    def names(self, method: str) -> list[tuple[str, str]]:
        """(name, version) of every request of ``method`` received."""
        out = []
        for kind, request in self.seen:
            if kind == method:
                if kind == "ModelInfer":
                    out.append((request.model_name, request.model_version))
                else:
                    out.append((request.name, request.version))
        return out


async def start_fake(models: dict[str, list[str]], *, server_name: str = "fake-oip",
                     health_status: dict[str, int] | None = None,
                     with_reflection: bool = False) -> FakeOip:
    """A started FakeOip on a free loopback port; with ``health_status`` it also serves
    grpc.health.v1 with those statuses, and reflection of its services on request."""
    fake = FakeOip(models, server_name)
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    names = [pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name]
    if health_status is not None:
        servicer = health.aio.HealthServicer()
        for service, status in health_status.items():
            await servicer.set(service, status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        names.append(health.SERVICE_NAME)
    if with_reflection:
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    fake.port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    fake.server = server
    return fake


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
