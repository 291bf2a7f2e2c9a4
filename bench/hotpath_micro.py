"""In-process measurements behind bench/README.md's hot-path figures (issue 18).

``forward``: CPU per call of ``Dispatch.forward`` in a loop, the backend's answer made
ready in advance (no network, no grpc), recording on: the sidecar's own Python per call,
the writer thread included. ``--gc as-is|frozen|off`` compares the collector's share.

``grpc``: grpc.aio alone, client and server in one process, 16 calls in flight: what one
metadata pair sent, a deadline on the call, and reading the answer's metadata back each
cost per call (the cheapest of alternated rounds).

    .venv/bin/python bench/hotpath_micro.py forward --calls 50000 --gc frozen
    .venv/bin/python bench/hotpath_micro.py grpc --rounds 8
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import uvloop

METHOD = "/bench.Echo/Echo"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _forward(calls: int, gc_mode: str) -> None:
    from sidecar.app import Sidecar
    from sidecar.backends import CallOutcome
    from sidecar.config import parse_config
    from sidecar.server.forwarding import reply_metadata, request_id_metadata

    with tempfile.TemporaryDirectory() as tmp:
        config = {"listen": "127.0.0.1:0", "storage": {"path": str(Path(tmp) / "a.duckdb")},
                  "backends": [{"name": "primary", "version": "v1",
                                "target": "127.0.0.1:9"}],  # never called
                  "routes": [{"match": METHOD, "primary": "primary"}]}
        sidecar = Sidecar(parse_config(config))
        await sidecar.start()
        try:
            dispatch = sidecar.dispatch
            plan = dispatch.routes.match(METHOD)
            assert plan is not None
            answer = CallOutcome(grpc.StatusCode.OK, None, bytes(256), (), (), time.time(), 0.3)

            async def ready(method: str, request: bytes, **_: Any) -> CallOutcome:
                return answer

            plan.primary.call = ready  # type: ignore[method-assign]  # measurement only
            if gc_mode == "frozen":
                gc.collect()
                gc.freeze()
            elif gc_mode == "off":
                gc.disable()
            incoming, request = (("user-agent", "bench"),), bytes(256)
            for _ in range(2000):  # warm-up
                await dispatch.forward(plan, METHOD, request, incoming, None)
            sidecar.sink.wait_flushed(5.0)
            start, collections = _cpu(), sum(s["collections"] for s in gc.get_stats())
            for _ in range(calls):
                call = await dispatch.forward(plan, METHOD, request, incoming, None)
                served = call.served
                assert served is not None
                (*reply_metadata(served.trailing_metadata), *request_id_metadata(call))
            looped = _cpu()
            sidecar.sink.wait_flushed(10.0)
            done = _cpu()
            collected = sum(s["collections"] for s in gc.get_stats()) - collections
            print(f"forward, gc {gc_mode}: {1e6 * (looped - start) / calls:.1f} us per call "
                  f"in the loop, {1e6 * (done - start) / calls:.1f} us with the writer's "
                  f"flush; {collected} collections")
        finally:
            await sidecar.aclose()


class _Echo(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no stubs
    def service(self, details: Any) -> Any:
        async def echo(request: bytes, context: Any) -> bytes:
            return request

        return grpc.unary_unary_rpc_method_handler(echo)


async def _grpc(rounds: int, calls: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Echo(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = channel.unary_unary(METHOD)
    request = bytes(256)
    ids = iter(range(1 << 62))

    async def plain() -> None:
        await stub(request)

    async def metadata() -> None:
        await stub(request, metadata=(("x-request-id", f"{next(ids):032x}"),))

    async def deadline() -> None:
        await stub(request, timeout=30.0)

    async def read_back() -> None:
        call = stub(request)
        await call
        await call.initial_metadata()
        await call.trailing_metadata()

    kinds: dict[str, Callable[[], Awaitable[None]]] = {
        "plain": plain, "one metadata pair sent": metadata, "a deadline": deadline,
        "answer's metadata read back": read_back}
    best: dict[str, float] = {}

    async def loop(f: Callable[[], Awaitable[None]], n: int) -> None:
        for _ in range(n):
            await f()

    for _ in range(rounds):
        for name, f in kinds.items():
            await loop(f, 100)
            start = _cpu()
            await asyncio.gather(*[loop(f, calls // 16) for _ in range(16)])
            us = 1e6 * (_cpu() - start) / calls
            best[name] = min(best.get(name, us), us)
    await channel.close()
    await server.stop(None)
    for name, us in best.items():
        extra = "" if name == "plain" else f" ({us - best['plain']:+.0f} us)"
        print(f"grpc.aio, {name}: {us:.0f} us per call, client and server{extra}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    fwd = sub.add_parser("forward", help="Dispatch.forward's own CPU per call")
    fwd.add_argument("--calls", type=int, default=50_000)
    fwd.add_argument("--gc", choices=("as-is", "frozen", "off"), default="as-is")
    grp = sub.add_parser("grpc", help="grpc.aio's cost of metadata, deadlines, read-back")
    grp.add_argument("--rounds", type=int, default=8)
    grp.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    if args.what == "forward":
        uvloop.run(_forward(args.calls, args.gc))
    else:
        uvloop.run(_grpc(args.rounds, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
