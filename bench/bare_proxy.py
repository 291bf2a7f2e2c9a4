"""The yardstick the performance issues name: a minimal raw-bytes grpc.aio proxy on uvloop.

Any unary-unary method is forwarded to ``--target`` as bytes and the answer returned; no
routing, request ids, metadata, recording, telemetry or shadows. ``proxy_bench.py`` runs it
as the ``bare`` scenario, so the sidecar is compared with it in the same run. Prints
``READY <port>`` once serving; exits on SIGTERM/SIGINT.
    .venv/bin/python bench/bare_proxy.py --target 127.0.0.1:50051 [--shadow 127.0.0.1:50052]

``--shadow``: also send every request to a second target, not awaited, its answer dropped
(scenario ``bare_shadow``: what one shadow at 100 % costs a proxy that does nothing else).

``--contract DB``: the least a proxy keeping the sidecar's per-call contract does, and
nothing else (scenario ``bare_contract``): a request id honoured or made, the caller's
metadata forwarded, a deadline on the backend call, the backend's metadata passed back,
the request id in the trailers, and two rows per call (request, call) written to DuckDB
by a thread as Arrow batches once a second. No routing, counters, breakers, telemetry.
``--contract -``: the same without the rows (scenario ``bare_ids``), to split the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import threading
import time
from typing import Any

import grpc
import uvloop

_SKIP = frozenset({"te", "content-type", "user-agent", "grpc-timeout", "grpc-encoding",
                   "grpc-accept-encoding"})


class _Recorder:
    """Rows appended by the loop, written by one thread every second (Arrow + INSERT)."""

    def __init__(self, path: str) -> None:
        import duckdb

        self.requests: list[tuple[Any, ...]] = []
        self.calls: list[tuple[Any, ...]] = []
        self._con = duckdb.connect(path, config={"threads": 1})
        self._con.execute("CREATE TABLE requests (request_id VARCHAR, ts DOUBLE, "
                          "method VARCHAR, status VARCHAR, latency_ms DOUBLE)")
        self._con.execute("CREATE TABLE calls (request_id VARCHAR, ts DOUBLE, "
                          "backend VARCHAR, status VARCHAR, latency_ms DOUBLE, size BIGINT)")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        for name in ("requests", "calls"):
            rows, fresh = getattr(self, name), []
            setattr(self, name, fresh)
            if rows:
                columns = [pa.array(c) for c in zip(*rows, strict=True)]
                batch = pa.Table.from_arrays(columns, names=list(self._cols(name)))
                self._con.register("batch", batch)
                self._con.execute(f"INSERT INTO {name} SELECT * FROM batch")
                self._con.unregister("batch")

    @staticmethod
    def _cols(name: str) -> tuple[str, ...]:
        if name == "requests":
            return ("request_id", "ts", "method", "status", "latency_ms")
        return ("request_id", "ts", "backend", "status", "latency_ms", "size")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)


class _Forward(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel, shadow: grpc.aio.Channel | None,
                 contract: bool = False, recorder: _Recorder | None = None) -> None:
        self._channel = channel
        self._shadow = shadow
        self._contract = contract
        self._recorder = recorder
        self._calls: dict[str, Any] = {}
        self._copies: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = self._channel.unary_unary(method)

        if self._contract:
            return grpc.unary_unary_rpc_method_handler(_contract(method, call, self._recorder))
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


def _contract(method: str, call: Any, rec: _Recorder | None) -> Any:
    ids = random.Random()

    async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        arrived, t0 = time.time(), time.perf_counter()
        metadata, request_id = [], None
        for key, value in context.invocation_metadata() or ():
            if key in _SKIP or key[0] == ":":
                continue
            if key == "x-request-id" and request_id is None:
                request_id = value
            metadata.append((key, value))
        if request_id is None:
            request_id = ids.randbytes(16).hex()
            metadata.append(("x-request-id", request_id))
        remaining = context.time_remaining()
        reply = call(request, timeout=min(remaining or 30.0, 30.0), metadata=tuple(metadata))
        status, response = "OK", None
        try:
            response = await reply
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        latency = (time.perf_counter() - t0) * 1000
        if rec is not None:
            rec.requests.append((request_id, arrived, method, status, latency))
            rec.calls.append((request_id, arrived, "primary", status, latency, len(request)))
        initial = await reply.initial_metadata()
        if initial:
            await context.send_initial_metadata(tuple(initial))
        trailing = (*tuple(await reply.trailing_metadata()), ("x-request-id", request_id))
        if response is None:
            await context.abort(await reply.code(), await reply.details() or "", trailing)
        context.set_trailing_metadata(trailing)
        return response

    return forward


async def _drop(call: Any) -> None:
    try:
        await call
    except grpc.aio.AioRpcError:
        pass


async def _serve(target: str, port: int, shadow: str | None, contract: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with grpc.aio.insecure_channel(target) as channel:
        copies = grpc.aio.insecure_channel(shadow) if shadow else None
        server = grpc.aio.server()
        recorder = _Recorder(contract) if contract and contract != "-" else None
        server.add_generic_rpc_handlers(
            (_Forward(channel, copies, contract is not None, recorder),))
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"READY {bound}", flush=True)
        await stop.wait()
        await server.stop(1.0)
        if recorder is not None:
            recorder.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of the backend")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--shadow", default=None, help="HOST:PORT each request is copied to")
    parser.add_argument("--contract", default=None, metavar="DB",
                        help="keep the per-call contract, recording to this DuckDB file")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(args.target, args.port, args.shadow, args.contract))
    return 0


if __name__ == "__main__":
    sys.exit(main())
