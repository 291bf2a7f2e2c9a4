"""Fetch a backend's proto definitions over gRPC server reflection (``codec: reflection``).

Read once at start from the route's primary backend; the result builds a DescriptorCodec.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar.codecs.descriptor import DESCRIPTOR_PREFIX, DescriptorCodec
from sidecar.codecs.tensor import CodecError

__all__ = [
    "REFLECTION",
    "ReflectionError",
    "load_reflection_descriptors",
    "reflection_codec",
    "route_json_codec",
]

#: ``codec: reflection`` reads the descriptors from the route's primary backend at start.
REFLECTION: Final = "reflection"

#: Services every reflecting server lists that no route decodes.
_SKIPPED_PREFIXES: Final = ("grpc.reflection.",)
#: Cap on the files fetched, so a misbehaving server cannot keep the start waiting.
_MAX_FILES: Final = 10_000


class ReflectionError(CodecError):
    """The backend's reflection service failed, timed out, or lacks a requested service."""


class _Session:
    """One reflection stream: a request written, its answer read, in turn."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self._call = call

    async def ask(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        await self._call.write(request)
        response = await self._call.read()
        if response is grpc.aio.EOF:
            raise ReflectionError("the reflection stream ended early")
        if not isinstance(response, reflection_pb2.ServerReflectionResponse):
            raise ReflectionError(f"unexpected reflection answer {type(response).__name__}")
        if response.HasField("error_response"):
            error = response.error_response
            raise ReflectionError(
                f"reflection error {error.error_code} for {_describe(request)}: "
                f"{error.error_message}"
            )
        return response


def _describe(request: reflection_pb2.ServerReflectionRequest) -> str:
    kind = request.WhichOneof("message_request") or "request"
    return f"{kind} {getattr(request, kind, '')!r}"


def _parse_files(
    response: reflection_pb2.ServerReflectionResponse,
    files: dict[str, descriptor_pb2.FileDescriptorProto],
) -> None:
    for serialized in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto()
        try:
            proto.ParseFromString(serialized)
        except DecodeError as exc:
            raise ReflectionError(f"the server sent a malformed file descriptor: {exc}") from exc
        files.setdefault(proto.name, proto)


async def _fetch(session: _Session, services: Sequence[str] | None) -> list[str]:
    if services is None:
        listed = await session.ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        return [
            s.name
            for s in listed.list_services_response.service
            if not s.name.startswith(_SKIPPED_PREFIXES)
        ]
    return list(services)


def _order(files: dict[str, descriptor_pb2.FileDescriptorProto]) -> list[str]:
    """File names with dependencies first, as protoc writes a descriptor set."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in files:
            return
        seen.add(name)
        for dep in files[name].dependency:
            visit(dep)
        order.append(name)

    for name in sorted(files):
        visit(name)
    return order


async def load_reflection_descriptors(
    target: str, services: list[str] | None = None, timeout: float = 5
) -> descriptor_pb2.FileDescriptorSet:
    """The files defining ``services`` (default: every listed one) and all their imports.

    Uses the ``grpc.reflection.v1alpha`` API over one stream to ``target`` (host:port,
    plaintext). Raises :class:`ReflectionError` when the server does not answer within
    ``timeout`` seconds, lacks reflection or a service, or sends malformed descriptors.
    """
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    try:
        async with asyncio.timeout(timeout), grpc.aio.insecure_channel(target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo()
            session = _Session(call)
            for service in await _fetch(session, services):
                response = await session.ask(
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
                )
                _parse_files(response, files)
            # Some servers send only the file asked for; fetch the imports they left out.
            missing = _missing(files)
            while missing:
                if len(files) > _MAX_FILES:
                    raise ReflectionError(f"more than {_MAX_FILES} proto files")
                for name in missing:
                    response = await session.ask(
                        reflection_pb2.ServerReflectionRequest(file_by_filename=name)
                    )
                    _parse_files(response, files)
                    if name not in files:
                        raise ReflectionError(f"the server did not send {name!r}")
                missing = _missing(files)
            await call.done_writing()
            await call.code()
    except TimeoutError as exc:
        raise ReflectionError(f"{target}: no reflection answer within {timeout} s") from exc
    except grpc.aio.AioRpcError as exc:
        raise ReflectionError(
            f"{target}: reflection failed: {exc.code().name}: {exc.details()}"
        ) from exc
    return descriptor_pb2.FileDescriptorSet(file=[files[name] for name in _order(files)])


def _missing(files: dict[str, descriptor_pb2.FileDescriptorProto]) -> list[str]:
    return sorted({d for f in files.values() for d in f.dependency if d not in files})


async def reflection_codec(
    target: str,
    method: str | None = None,
    *,
    services: list[str] | None = None,
    compare: Sequence[str] = (),
    timeout: float = 5,
) -> DescriptorCodec:
    """A :class:`DescriptorCodec` over the descriptors ``target`` reflects (read once)."""
    file_set = await load_reflection_descriptors(target, services, timeout)
    return DescriptorCodec(file_set, method, compare=compare)


async def route_json_codec(
    spec: str,
    *,
    match: str,
    primary_target: str,
    compare: Sequence[str] = (),
    timeout: float = 5,
) -> DescriptorCodec:
    """The codec a route's ``codec: descriptor:FILE | reflection`` setting names.

    ``match`` is the route's pattern: an exact method becomes the codec's default method,
    ``/pkg.Svc/*`` limits reflection to that service, ``*`` reflects every service.
    Raises CodecError (ReflectionError when the backend cannot be asked).
    """
    service, _, name = match.lstrip("/").partition("/")
    method = match if name and name != "*" else None
    if spec.startswith(DESCRIPTOR_PREFIX):
        return DescriptorCodec(spec.removeprefix(DESCRIPTOR_PREFIX), method, compare=compare)
    if spec == REFLECTION:
        services = [service] if match != "*" else None
        return await reflection_codec(
            primary_target, method, services=services, compare=compare, timeout=timeout
        )
    raise CodecError(f"codec {spec!r} is neither 'reflection' nor 'descriptor:<file>'")
