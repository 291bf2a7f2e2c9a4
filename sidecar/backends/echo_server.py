"""An in-package echo backend: any unary method returns the request bytes.

Used by tests and the benchmark in place of a model. Per call, request metadata steers it:
``x-echo-status`` (a status code name) with ``x-echo-details``, ``x-echo-delay-ms``, and
``x-echo-trailing`` (``key=value``) added to trailing metadata. Server-wide options make a
slow (``delay_ms``) or hanging (``hang``) backend.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import grpc

__all__ = ["EchoServer", "start_echo_server"]


@dataclass
class _State:
    delay_ms: float = 0.0
    hang: bool = False
    calls: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    seen_metadata: deque[tuple[tuple[str, Any], ...]] = field(
        default_factory=lambda: deque(maxlen=256)
    )
    seen_methods: deque[str] = field(default_factory=lambda: deque(maxlen=256))
    seen_time_remaining: deque[float | None] = field(default_factory=lambda: deque(maxlen=256))


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no stubs: base is Any
    def __init__(self, state: _State) -> None:
        self._state = state

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = handler_call_details.method
        state = self._state

        async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            state.calls += 1
            state.in_flight += 1
            state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
            try:
                md = tuple(context.invocation_metadata() or ())
                state.seen_metadata.append(md)
                state.seen_methods.append(method)
                state.seen_time_remaining.append(context.time_remaining())
                opts = dict(md)
                if state.hang:
                    await asyncio.Event().wait()
                delay = float(opts.get("x-echo-delay-ms", state.delay_ms))
                if delay > 0:
                    await asyncio.sleep(delay / 1000)
                trailing = opts.get("x-echo-trailing")
                if isinstance(trailing, str) and "=" in trailing:
                    key, _, value = trailing.partition("=")
                    context.set_trailing_metadata(((key, value),))
                status = opts.get("x-echo-status")
                if isinstance(status, str) and status != "OK":
                    details = opts.get("x-echo-details", "")
                    await context.abort(grpc.StatusCode[status], str(details))
                return request
            finally:
                state.in_flight -= 1

        return grpc.unary_unary_rpc_method_handler(echo)


class EchoServer:
    """A running echo backend on a loopback port; async context manager."""

    def __init__(self, server: grpc.aio.Server, port: int, state: _State) -> None:
        self._server = server
        self.port = port
        self.target = f"127.0.0.1:{port}"
        self._state = state
        self._closed = False

    @property
    def calls(self) -> int:
        return self._state.calls

    @property
    def peak_in_flight(self) -> int:
        return self._state.peak_in_flight

    @property
    def seen_metadata(self) -> list[tuple[tuple[str, Any], ...]]:
        return list(self._state.seen_metadata)

    @property
    def seen_methods(self) -> list[str]:
        return list(self._state.seen_methods)

    @property
    def seen_time_remaining(self) -> list[float | None]:
        return list(self._state.seen_time_remaining)

    def set_delay(self, delay_ms: float) -> None:
        self._state.delay_ms = delay_ms

    async def __aenter__(self) -> EchoServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._server.stop(0)


async def start_echo_server(
    *, host: str = "127.0.0.1", port: int = 0, delay_ms: float = 0.0, hang: bool = False
) -> EchoServer:
    """Start an echo backend; ``port=0`` picks a free port."""
    state = _State(delay_ms=delay_ms, hang=hang)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers([_Handler(state)])
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return EchoServer(server, bound, state)
