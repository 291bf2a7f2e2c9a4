"""The ``sidecar`` command: serve, validate, demo, report.

Exit codes: 0 success, 1 failure at run time, 2 invalid configuration or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from sidecar.config import load_config
from sidecar.errors import ConfigError, ShadowcarError
from sidecar.telemetry.logs import configure_logging

__all__ = ["main"]

log = logging.getLogger("sidecar")


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency on Linux
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _serve(config_path: str, log_level: str, log_format: str | None) -> int:
    from sidecar.app import Sidecar

    loaded = load_config(config_path)
    configure_logging(log_level, log_format or loaded.config.telemetry.log_format)
    sidecar = Sidecar(loaded)
    try:
        await sidecar.start()
    except BaseException:
        await sidecar.aclose()
        raise
    await sidecar.run_until_stopped()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    fmt = args.log_format
    return run_async(_serve(args.config, args.log_level, fmt))


def _cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    cfg = loaded.config
    print(
        f"{args.config}: valid (version {loaded.version}; {len(cfg.backends)} backends, "
        f"{len(cfg.routes)} routes)"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sidecar.demo.runner import run_demo

    return run_async(
        run_demo(requests=args.requests, concurrency=args.concurrency, out_dir=args.out)
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.cli import run_report

    return run_report(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar", description="Shadowcar: shadow, A/B and canary testing for gRPC models."
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=None,
        help="log line format (default: the config's telemetry.log_format, else text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the sidecar")
    serve.add_argument("--config", "-c", required=True, help="YAML config file")
    serve.set_defaults(func=_cmd_serve)

    validate = sub.add_parser("validate", help="check a config file and exit")
    validate.add_argument("config", help="YAML config file")
    validate.set_defaults(func=_cmd_validate)

    demo = sub.add_parser("demo", help="run built-in models, the sidecar and traffic; summarise")
    demo.add_argument("--requests", type=int, default=3000, help="requests to send")
    demo.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    demo.add_argument("--out", default="demo-out", help="directory for the DuckDB file and report")
    demo.set_defaults(func=_cmd_demo)

    try:
        from analysis.cli import add_report_parser
    except ImportError:  # analysis is optional for a serving-only install
        pass
    else:
        add_report_parser(sub)
        report = sub.choices.get("report")
        if report is not None:
            report.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format or "text")
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ShadowcarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
