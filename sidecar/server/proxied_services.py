"""Health checking and server reflection for the services the sidecar proxies.

The sidecar serves its own ``grpc.health.v1.Health`` and ``grpc.reflection.v1alpha`` (and
its feedback service). For a service it proxies (one a route matches, e.g.
``inference.GRPCInferenceService``) these answer from the route's primary, so that load
balancers, ``grpc_health_probe`` and ``grpcurl`` work through the sidecar as against the
model server:

- ``Health/Check`` of a proxied service asks the primary's own health service. A primary
  without one (UNIMPLEMENTED) is SERVING when its channel connects, a primary that does not
  know the name (NOT_FOUND) answers for its server as a whole (""), an unreachable one is
  NOT_SERVING. While the sidecar shuts down every service is NOT_SERVING.
- Reflection lists the sidecar's own services and those of its primaries that some route
  matches; a file or symbol the sidecar does not define itself is fetched from the
  primaries.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar.config import Config
from sidecar.server.oip_passthrough import Upstream

__all__ = ["ProxiedHealth", "ProxiedReflection", "ServiceMap", "add_reflection"]

log = logging.getLogger(__name__)

_CHECK = "/grpc.health.v1.Health/Check"
_REFLECT = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
#: Longest a health check or a reflection answer waits for a primary.
UPSTREAM_TIMEOUT_S = 5.0
_Status = health_pb2.HealthCheckResponse


@dataclass(frozen=True, slots=True)
class ServiceMap:
    """Which primary answers for each proxied service, in one config version."""

    by_service: Mapping[str, Upstream]
    #: The primary of a '*' route: every other service's.
    catch_all: Upstream | None

    @classmethod
    def build(cls, config: Config, backends: Mapping[str, Upstream]) -> ServiceMap:
        by_service: dict[str, Upstream] = {}
        catch_all: Upstream | None = None
        # Plain routes first, so the default route's primary answers for a service
        # that also has per-model routes.
        for route in sorted(config.routes, key=lambda r: r.model is not None):
            backend = backends[route.primary]
            if route.method == "*":
                catch_all = catch_all or backend
                continue
            service = route.method.lstrip("/").partition("/")[0]
            by_service.setdefault(service, backend)
        return cls(by_service, catch_all)

    def primary(self, service: str) -> Upstream | None:
        return self.by_service.get(service, self.catch_all)

    def primaries(self) -> list[Upstream]:
        """Every distinct primary, in a stable order."""
        seen: dict[int, Upstream] = {}
        for backend in [*self.by_service.values(), self.catch_all]:
            if backend is not None:
                seen.setdefault(id(backend), backend)
        return list(seen.values())

    def routed(self, service: str) -> bool:
        return self.catch_all is not None or service in self.by_service


#: The stable name of the reflection service; its messages are v1alpha's, byte for byte.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def add_reflection(server: grpc.aio.Server, servicer: ProxiedReflection) -> None:
    """Serve ``servicer`` as ``grpc.reflection.v1alpha`` and as ``grpc.reflection.v1``
    (grpcurl asks v1 first): a '*' route would otherwise forward v1 to a primary."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        REFLECTION_V1, {"ServerReflectionInfo": handler})])


class ProxiedHealth(health.aio.HealthServicer):  # type: ignore[misc]  # no stubs: base is Any
    """The sidecar's health servicer; a proxied service's status comes from its primary."""

    def __init__(self, services: Callable[[], ServiceMap]) -> None:
        super().__init__()
        self._services = services
        #: The sidecar's own services: never asked of a primary (set once they are known).
        self.own: frozenset[str] = frozenset()

    async def Check(  # the proto's method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        if request.service in self._server_status or request.service in self.own:
            return await super().Check(request, context)
        backend = self._services().primary(request.service)
        if backend is None:
            return await super().Check(request, context)  # NOT_FOUND, as before
        if self._gracefully_shutting_down:
            return _Status(status=_Status.NOT_SERVING)
        status = await self._ask(backend, request.service)
        if status is None:  # the primary does not know the name: its server's health
            status = await self._ask(backend, "")
        return _Status(status=_Status.NOT_SERVING if status is None else status)

    async def _ask(self, backend: Upstream, service: str) -> int | None:
        request = health_pb2.HealthCheckRequest(service=service).SerializeToString()
        outcome = await backend.call(_CHECK, request, timeout=UPSTREAM_TIMEOUT_S, metadata=())
        if outcome.ok:
            return int(_Status.FromString(outcome.response).status)
        if outcome.code is grpc.StatusCode.NOT_FOUND:
            return None
        if outcome.code is grpc.StatusCode.UNIMPLEMENTED:  # no health service: connectivity
            ready = await backend.wait_ready(timeout=1.0)  # type: ignore[attr-defined]
            return int(_Status.SERVING if ready else _Status.NOT_SERVING)
        return int(_Status.NOT_SERVING)


class ProxiedReflection(reflection_aio.ReflectionServicer):  # type: ignore[misc]  # no stubs
    """The sidecar's reflection, extended with the proxied services of its primaries."""

    def __init__(self, own: tuple[str, ...], services: Callable[[], ServiceMap]) -> None:
        super().__init__(own)
        self._own = own
        self._services = services

    async def ServerReflectionInfo(  # the proto's method name
        self, request_iterator: AsyncIterable[reflection_pb2.ServerReflectionRequest],
        unused_context: Any,
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for request in request_iterator:
            local = await self._local(request)
            if request.HasField("list_services"):
                yield await self._list(request, local)
            elif not local.HasField("error_response") and self._is_own(request):
                yield local
            else:
                yield await self._upstream(request) or local

    async def _local(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield request

        async for answer in super().ServerReflectionInfo(one(), None):
            return answer
        raise AssertionError("reflection answers every request")

    def _is_own(self, request: reflection_pb2.ServerReflectionRequest) -> bool:
        symbol = request.file_containing_symbol
        if request.HasField("file_containing_symbol"):
            return any(symbol == s or symbol.startswith(s + ".") for s in self._own)
        return True  # files and extensions the sidecar has itself are the same protos

    async def _ask(self, backend: Upstream, request: bytes
                   ) -> reflection_pb2.ServerReflectionResponse | None:
        async def one() -> AsyncIterator[bytes]:
            yield request

        call = backend.stream("bidi", _REFLECT)(  # type: ignore[attr-defined]
            one(), timeout=UPSTREAM_TIMEOUT_S)
        try:
            async for raw in call:
                return reflection_pb2.ServerReflectionResponse.FromString(raw)
        except grpc.aio.AioRpcError as exc:
            log.debug("reflection of %s: %s", backend.name, exc.code().name)
        finally:
            call.cancel()
        return None

    async def _upstream(self, request: reflection_pb2.ServerReflectionRequest
                        ) -> reflection_pb2.ServerReflectionResponse | None:
        raw = request.SerializeToString()
        for backend in self._services().primaries():
            answer = await self._ask(backend, raw)
            if answer is not None and not answer.HasField("error_response"):
                answer.valid_host = request.host
                answer.original_request.CopyFrom(request)
                return answer
        return None

    async def _list(self, request: reflection_pb2.ServerReflectionRequest,
                    local: reflection_pb2.ServerReflectionResponse
                    ) -> reflection_pb2.ServerReflectionResponse:
        services = self._services()
        names = {s.name for s in local.list_services_response.service}
        raw = request.SerializeToString()
        for backend in services.primaries():
            answer = await self._ask(backend, raw)
            if answer is None or not answer.HasField("list_services_response"):
                continue
            for service in answer.list_services_response.service:
                if services.routed(service.name) and service.name not in self._own:
                    names.add(service.name)
        out = reflection_pb2.ServerReflectionResponse(valid_host=request.host,
                                                      original_request=request)
        for name in sorted(names):
            out.list_services_response.service.add(name=name)
        return out
