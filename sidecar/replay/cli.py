"""``sidecar replay``: arguments, the run and its summary. Exit codes: 0 done, 1 some
calls failed (a resume sends them again), 2 bad arguments or a source that cannot be
replayed, 3 a source that cannot be read, 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from sidecar.exit_codes import EXIT_FIRED

if TYPE_CHECKING:  # the rest is imported when a replay runs, not to build the parser
    from rich.console import Console

    from sidecar.replay.runner import ReplayOptions, ReplayResult

__all__ = ["add_replay_parser", "options_from_args", "run_replay"]

EXIT_INTERRUPTED = 130
#: Some replayed calls failed (a closed port, deadlines): a resume sends them again.
EXIT_FAILED = EXIT_FIRED


def add_replay_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``replay`` to a ``sidecar`` subparsers object; its func is :func:`run_replay`."""
    from sidecar.replay.codecs import CODEC_HELP, check_spec

    p: argparse.ArgumentParser = subparsers.add_parser(
        "replay", help="re-send recorded requests to a candidate and record paired outputs",
        description="Re-send a route's recorded requests (recorded with storage.record_bytes: "
        "true) to a candidate backend; its answers are recorded as role 'replay' under the "
        "original request ids, beside copies of the original primary calls.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="DB|DIR",
                   help="a stopped sidecar's DuckDB file or a Parquet export (with bytes)")
    p.add_argument("--route", required=True, help="the route's match pattern")
    p.add_argument("--since", help="start, ISO 8601 or an age such as 24h (inclusive)")
    p.add_argument("--until", help="end, ISO 8601 or an age (exclusive)")
    p.add_argument("--to", dest="target", required=True, metavar="HOST:PORT",
                   help="the candidate's gRPC address")
    p.add_argument("--backend-name", required=True, help="the candidate's backend name")
    p.add_argument("--backend-version", required=True, help="the candidate's version")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="OIP: the model name the candidate is asked for (docs/oip.md)")
    p.add_argument("--model-version", default=None, metavar="VERSION",
                   help="OIP: the model version the candidate is asked for")
    p.add_argument("--rate", type=float, default=None, metavar="N",
                   help="requests started per second at most (default: no limit)")
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="calls in flight")
    p.add_argument("--timeout-ms", type=int, default=5000, help="deadline of each call")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="replay at most N requests in this invocation (resume for more)")
    p.add_argument("--codec", type=check_spec, default=None, metavar="CODEC", help=CODEC_HELP)
    p.add_argument("--pace", action="store_true",
                   help="send a caller stream's messages at their recorded offsets (default: "
                   "as fast as the candidate takes them)")
    p.add_argument("--record-bytes", action="store_true", help="keep the candidate's bytes")
    p.add_argument("--out", default=None, metavar="DB",
                   help="output DuckDB file (default: replay-RUNID.duckdb beside the source)")
    p.add_argument("--run-id", default=None, metavar="ID",
                   help="name of this run; give an interrupted run's id to resume it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_replay)
    return p


def options_from_args(args: argparse.Namespace) -> ReplayOptions:
    from sidecar.replay.runner import ReplayOptions, default_out, new_run_id

    run_id = args.run_id or new_run_id()
    return ReplayOptions(
        source=args.source, route=args.route, target=args.target,
        backend_name=args.backend_name, backend_version=args.backend_version, run_id=run_id,
        model=args.model, model_version=args.model_version,
        out=args.out or default_out(args.source, run_id), since=args.since, until=args.until,
        rate=args.rate, concurrency=args.concurrency, timeout_s=args.timeout_ms / 1000,
        limit=args.limit, codec=args.codec, record_bytes=args.record_bytes, pace=args.pace,
        progress=not args.no_progress,
    )


def _summary(result: ReplayResult, console: Console) -> None:
    retried = f", {result.retried} of them failed before" if result.retried else ""
    console.print(
        f"replay {result.run_id}: {result.sent} sent ({result.ok} OK, "
        f"{result.failed} errors{retried}), {result.already_done} replayed OK before, "
        f"{result.selected} selected -> {result.out}"
    )
    if result.failed and not result.interrupted:
        console.print(f"{result.failed} calls failed: resume with --run-id {result.run_id} "
                      f"--out {result.out} to send them again")
    if result.interrupted:
        console.print(f"interrupted: resume with --run-id {result.run_id} --out {result.out}")
    else:
        console.print(f"compare: sidecar report divergence --db {result.out}")


def run_replay(args: argparse.Namespace) -> int:
    """Run ``sidecar replay`` from parsed arguments; return the exit code."""
    from rich.console import Console

    from sidecar.replay.runner import replay
    from sidecar.replay.source import ReplayInputError

    console = Console(stderr=True)
    try:
        options = options_from_args(args)
        result = asyncio.run(replay(options))
    except ReplayInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code  # 2 bad arguments or data, 3 a source that cannot be read
    _summary(result, console)
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if result.failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sidecar.replay`` (the same arguments as ``sidecar replay``)."""
    parser = argparse.ArgumentParser(prog="python -m sidecar.replay")
    sub = parser.add_subparsers(dest="command", required=True)
    add_replay_parser(sub)
    args = parser.parse_args(["replay", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code
