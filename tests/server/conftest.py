"""Fixtures of the server tests: a streaming backend of every kind on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest


class _StreamBackend(grpc.GenericRpcHandler):
    """Server stream: the request N times (N from x-count); client stream: the
    concatenation; bidi: each message upper-cased. Counts what it wrote."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.written = 0
        self.calls = 0

    def service(self, details):
        name = details.method.rsplit("/", 1)[1]
        if name == "Generate":
            async def gen(request, context):
                self.calls += 1
                n = int(dict(context.invocation_metadata()).get("x-count", "3"))
                await context.send_initial_metadata((("model", "gen-1"),))
                for i in range(n):
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    self.written += 1
                    yield request + str(i).encode()
                context.set_trailing_metadata((("tokens", str(n)),))

            return grpc.unary_stream_rpc_method_handler(gen)
        if name == "Upload":
            async def upload(requests, context):
                self.calls += 1
                parts = [m async for m in requests]
                return b"|".join(parts)

            return grpc.stream_unary_rpc_method_handler(upload)
        if name == "Chat":
            async def chat(requests, context):
                self.calls += 1
                async for m in requests:
                    yield m.upper()

            return grpc.stream_stream_rpc_method_handler(chat)
        if name == "Fail":
            async def fail(request, context):
                yield b"one"
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")

            return grpc.unary_stream_rpc_method_handler(fail)
        return None


async def _serve(handler) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def stream_backends(
) -> AsyncIterator[Callable[..., Awaitable[tuple[_StreamBackend, str]]]]:
    """Factory: ``await stream_backends(delay_s)`` -> (handler, target); stopped after."""
    servers = []

    async def factory(delay_s: float = 0.0) -> tuple[_StreamBackend, str]:
        handler = _StreamBackend(delay_s)
        server, target = await _serve(handler)
        servers.append(server)
        return handler, target

    yield factory
    for s in servers:
        await s.stop(0)
