"""``python -m sidecar.demo.serve_model``: one built-in demo model as a standalone OIP server.

For containers and manual topologies; prints ``serving MODEL version V on HOST:PORT`` once
bound and stops cleanly on SIGTERM or SIGINT (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from sidecar.demo.models import make_demo_models, start_model_server

__all__ = ["build_parser", "main", "serve"]

#: The demo models by the name used on the command line.
MODELS = ("primary", "retrained")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.demo.serve_model",
        description="Serve one built-in demo model over the Open Inference Protocol.",
    )
    parser.add_argument("--model", choices=MODELS, default="primary",
                        help="primary (version 1) or retrained (version 2)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a "
                        "container)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: a free one)")
    parser.add_argument("--features", type=int, default=8, help="features per row")
    parser.add_argument("--seed", type=int, default=7, help="seed of the demo weights")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added latency per call")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="+/- uniform jitter")
    parser.add_argument("--fail-rate", type=float, default=0.0,
                        help="share of calls answered UNAVAILABLE")
    parser.add_argument("--grace-s", type=float, default=5.0,
                        help="time in-flight calls get on shutdown")
    return parser


async def serve(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """Serve until ``stop`` is set (SIGTERM/SIGINT set it in the main thread)."""
    primary, retrained = make_demo_models(n_features=args.features, seed=args.seed)
    model = primary if args.model == "primary" else retrained
    stop = stop or asyncio.Event()
    handle = await start_model_server(
        model, host=args.host, port=args.port, delay_ms=args.delay_ms,
        jitter_ms=args.jitter_ms, fail_rate=args.fail_rate,
    )
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"serving {model.name} version {model.version} on {args.host}:{handle.port}",
              flush=True)
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await handle.aclose(args.grace_s)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(serve(args))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
