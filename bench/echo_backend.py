"""One echo backend in its own process, for the proxy benchmark.

Runs ``sidecar.backends.echo_server`` on uvloop, prints ``READY <port>`` once serving and,
on SIGTERM/SIGINT, prints its counters as one JSON line before exiting:
    .venv/bin/python bench/echo_backend.py --port 0 --delay-ms 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import uvloop

from sidecar.backends.echo_server import start_echo_server


async def _serve(host: str, port: int, delay_ms: float) -> dict[str, int]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with await start_echo_server(host=host, port=port, delay_ms=delay_ms) as server:
        print(f"READY {server.port}", flush=True)
        await stop.wait()
        return {"calls": server.calls, "peak_in_flight": server.peak_in_flight}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="latency of every call")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        counters = runner.run(_serve(args.host, args.port, args.delay_ms))
    print(json.dumps(counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
