"""The yardstick the performance issues name: a minimal raw-bytes grpc.aio proxy on uvloop.

Any unary-unary method is forwarded to ``--target`` as bytes and the answer returned; no
routing, request ids, metadata, recording, telemetry or shadows. ``proxy_bench.py`` runs it
as the ``bare`` scenario, so the sidecar is compared with it in the same run. Prints
``READY <port>`` once serving; exits on SIGTERM/SIGINT.
    .venv/bin/python bench/bare_proxy.py --target 127.0.0.1:50051 [--shadow 127.0.0.1:50052]

``--shadow``: also send every request to a second target, not awaited, its answer dropped
(scenario ``bare_shadow``: what one shadow at 100 % costs a proxy that does nothing else).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import grpc
import uvloop


class _Forward(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel, shadow: grpc.aio.Channel | None) -> None:
        self._channel = channel
        self._shadow = shadow
        self._calls: dict[str, Any] = {}
        self._copies: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = self._channel.unary_unary(method)

        copy = None
        if self._shadow is not None:
            copy = self._copies.get(method)
            if copy is None:
                copy = self._copies[method] = self._shadow.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            if copy is not None:
                task = asyncio.get_running_loop().create_task(_drop(copy(request, timeout=1.0)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            try:
                response: bytes = await call(request, timeout=context.time_remaining())
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "")
            return response

        return grpc.unary_unary_rpc_method_handler(forward)


async def _drop(call: Any) -> None:
    try:
        await call
    except grpc.aio.AioRpcError:
        pass


async def _serve(target: str, port: int, shadow: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with grpc.aio.insecure_channel(target) as channel:
        copies = grpc.aio.insecure_channel(shadow) if shadow else None
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_Forward(channel, copies),))
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"READY {bound}", flush=True)
        await stop.wait()
        await server.stop(1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the backend")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--shadow", default=None, help="HOST:PORT each request is copied to")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(args.target, args.port, args.shadow))
    return 0


if __name__ == "__main__":
    sys.exit(main())
