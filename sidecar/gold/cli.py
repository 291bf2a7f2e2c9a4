"""``sidecar gold run`` and ``sidecar gold capture``. Exit codes: 0 every case passed (or a
capture was written), 1 a regression or an error answer, 2 a bad gold file or arguments,
3 a recorded source (--from) that cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the rest is imported when a gold command runs, not to build the parser
    from rich.console import Console

__all__ = ["add_gold_parser", "run_gold"]


def add_gold_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``gold run`` and ``gold capture`` to a ``sidecar`` subparsers object."""
    from sidecar.replay.codecs import check_spec

    gold: argparse.ArgumentParser = subparsers.add_parser(
        "gold", help="regression tests against a gold set of reviewed cases"
    )
    sub = gold.add_subparsers(dest="gold_command", required=True, metavar="ACTION")

    run = sub.add_parser("run", help="send every case of a gold set and report regressions")
    run.add_argument("--set", dest="gold_set", required=True, metavar="FILE",
                     help="gold set: .jsonl (one case per line) or .parquet")
    run.add_argument("--target", required=True, metavar="HOST:PORT", help="model or sidecar")
    run.add_argument("--method", default=None,
                     help="gRPC method of cases that name none (default: OIP ModelInfer)")
    run.add_argument("--codec", type=check_spec, default=None, metavar="CODEC",
                     help="how answers are decoded: oip | raw (response_b64 only) | "
                     "reflection (asked of the target) | descriptor:FILE (default: each "
                     "case's codec, which capture writes, else oip)")
    run.add_argument("--atol", type=float, default=1e-6, help="default absolute tolerance")
    run.add_argument("--rtol", type=float, default=1e-3, help="default relative tolerance")
    run.add_argument("--concurrency", type=int, default=4, help="cases in flight")
    run.add_argument("--timeout-ms", type=int, default=5000, help="deadline of each case")
    run.add_argument("--record", metavar="DB", default=None,
                     help="append the run to this DuckDB file (calls with role 'gold')")
    run.add_argument("--backend-name", default="gold-target", help="name recorded for target")
    run.add_argument("--backend-version", default="unknown", help="version recorded for target")
    run.add_argument("--model", default=None, metavar="NAME",
                     help="OIP: the model name the target is asked for (docs/oip.md)")
    run.add_argument("--model-version", default=None, metavar="VERSION",
                     help="OIP: the model version the target is asked for")
    run.add_argument("--show-passes", type=int, default=10, help="passing cases listed")

    cap = sub.add_parser("capture", help="sample recorded traffic into a gold set to review")
    cap.add_argument("--from", dest="source", required=True, metavar="DB|DIR",
                     help="a stopped sidecar's DuckDB file or a Parquet export (with bytes)")
    cap.add_argument("--route", required=True, help="the route's match pattern")
    cap.add_argument("--n", type=int, default=200, help="cases to capture at most")
    cap.add_argument("--stratify", choices=("label", "none"), default="label",
                     help="equal shares per primary label (default), or a plain sample")
    cap.add_argument("--atol", type=float, default=1e-6, help="atol written into each case")
    cap.add_argument("--rtol", type=float, default=1e-3, help="rtol written into each case")
    cap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    cap.add_argument("--field-tol", action="append", default=[], metavar="PATH=ATOL[:RTOL]",
                     help="a decoded field's own tolerance, written into each case "
                     "(repeatable; other fields use --atol and --rtol)")
    cap.add_argument("-o", "--output", required=True, metavar="FILE.jsonl", help="gold set out")
    gold.set_defaults(func=run_gold)
    return gold


def run_gold(args: argparse.Namespace) -> int:
    """Run ``sidecar gold run|capture`` from parsed arguments; return the exit code."""
    from rich.console import Console

    from sidecar.gold.cases import GoldFileError

    console = Console()
    try:
        if args.gold_command == "capture":
            return _capture(args, console)
        return _run(args, console)
    except GoldFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code  # 2 a bad gold file or arguments, 3 an unreadable --from


def _run(args: argparse.Namespace, console: Console) -> int:
    from sidecar.gold.cases import DEFAULT_METHOD, GoldFileError, load_cases
    from sidecar.gold.runner import print_results, record_run, run_cases
    from sidecar.replay.codecs import CodecUnavailable

    cases = load_cases(args.gold_set, method=args.method or DEFAULT_METHOD, atol=args.atol,
                       rtol=args.rtol)
    if args.concurrency < 1:
        raise GoldFileError("--concurrency must be at least 1")
    try:
        run = asyncio.run(run_cases(
            cases, args.target, gold_set=args.gold_set, codec=args.codec,
            backend_name=args.backend_name, backend_version=args.backend_version,
            model=args.model, model_version=args.model_version,
            concurrency=args.concurrency, timeout_s=args.timeout_ms / 1000,
        ))
    except (ValueError, CodecUnavailable) as exc:  # a bad --target, name or codec
        raise GoldFileError(str(exc)) from exc
    print_results(run, console, show_passes=args.show_passes)
    if args.record:
        record_run(run, args.record)
        console.print(f"recorded run {run.run_id} in {args.record}")
    return 1 if run.failed else 0


def _capture(args: argparse.Namespace, console: Console) -> int:
    from sidecar.gold.capture import capture

    result = capture(args.source, args.route, args.output, n=args.n, stratify=args.stratify,
                     atol=args.atol, rtol=args.rtol, seed=args.seed,
                     tolerances=_field_tolerances(args.field_tol, args.rtol))
    strata = ", ".join(f"{k}: {v}" for k, v in sorted(result.strata.items()))
    console.print(f"captured {result.written} of {result.available} recorded cases "
                  f"({strata}) -> {result.path}; review them before use")
    return 0


def _field_tolerances(given: list[str], rtol: float) -> dict[str, dict[str, float]]:
    from sidecar.codecs.fieldpath import parse_path
    from sidecar.gold.cases import GoldFileError

    out: dict[str, dict[str, float]] = {}
    for item in given:
        path, sep, tol = item.partition("=")
        atol_text, _, rtol_text = tol.partition(":")
        try:
            parse_path(path)
            values = {"atol": float(atol_text), "rtol": float(rtol_text) if rtol_text else rtol}
            if not sep or min(values.values()) < 0:
                raise ValueError("tolerances are numbers >= 0")
        except ValueError as exc:
            raise GoldFileError(f"--field-tol {item!r}: want PATH=ATOL[:RTOL] ({exc})") from exc
        out[path] = values
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m sidecar.gold run|capture ...`` (the same as ``sidecar gold``)."""
    parser = argparse.ArgumentParser(prog="python -m sidecar.gold")
    sub = parser.add_subparsers(dest="command", required=True)
    add_gold_parser(sub)
    args = parser.parse_args(["gold", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code
