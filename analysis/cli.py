"""The ``report`` command: open a source, run one analysis, render it as table, JSON or HTML.

Mounted as ``sidecar report ...`` by sidecar/cli.py and as ``python -m analysis report ...``.
A ``--db`` file a live sidecar writes is analysed by that sidecar (``GET /v1/reports/KIND``,
found through the file's discovery file): the same options travel as query parameters.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

import duckdb

from analysis.engine import Engine, EngineUnsupported
from analysis.load import DEFAULT_MEMORY_LIMIT, AnalysisSourceError, open_source, parse_time
from sidecar.exit_codes import EPILOG, EXIT_DATA, EXIT_USAGE

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_NO_DATA",
    "ReportUsageError",
    "add_report_parser",
    "build_parser",
    "main",
    "render_report",
    "report_args",
    "report_query",
    "run_report",
]

#: Exit code for bad arguments (argparse uses it too).
EXIT_BAD_INPUT = EXIT_USAGE
#: Exit code for a source that cannot be read (missing, locked with no live sidecar, corrupt).
EXIT_NO_DATA = EXIT_DATA

_KINDS = ("divergence", "experiment", "drift", "quality", "fields")
_FORMATS = ("table", "json", "html")


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report KIND [options]`` to an argparse subparsers object; return its parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="divergence, experiment, drift, quality or fields report from recorded data",
        description="Analyse recorded traffic: shadow divergence, A/B experiments, input "
        "drift, model quality on outcomes, or field-by-field differences. Read a sidecar's "
        "DuckDB file (--db; a live sidecar's file is analysed by "
        "that sidecar through its admin API), its Parquet export (--parquet) or your own "
        "table (--input).",
        epilog=EPILOG,
    )
    parser.add_argument("kind", choices=_KINDS, help="which report")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", metavar="FILE", help="sidecar DuckDB file (opened read-only)")
    source.add_argument("--parquet", metavar="DIR", help="hive-partitioned Parquet export")
    source.add_argument("--input", metavar="TABLE",
                        help="your own Parquet/CSV table (divergence or experiment)")
    parser.add_argument("--since", help="start, ISO 8601 or an age such as 24h (inclusive)")
    parser.add_argument("--until", help="end, ISO 8601 or an age (exclusive)")
    parser.add_argument("--route", help="only this route (its match pattern)")
    parser.add_argument("--control", metavar="NAME", help="control variant (experiment)")
    parser.add_argument("--weights", metavar="A=W,B=W",
                        help="expected traffic weights for the SRM check, e.g. control=50,treat=50")
    parser.add_argument("--sequential", action="store_true",
                        help="always-valid sequential intervals (experiment)")
    parser.add_argument("--cuped", action="store_true",
                        help="require CUPED variance reduction (experiment)")
    parser.add_argument("--winsorize", type=float, metavar="P",
                        help="clip unit values to the [1-P, P] quantiles, 0.5 < P < 1")
    parser.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (divergence)")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (divergence)")
    parser.add_argument("--segment", help="split divergence by a calls or requests column")
    parser.add_argument("--metric", default="label",
                        help="outcome metric the models are scored on (quality)")
    parser.add_argument("--quality-kind", choices=("binary", "regression"), default="binary",
                        help="scores vs 0/1 labels, or values vs numbers (quality)")
    parser.add_argument("--window", help="quality: metric per time window, e.g. 1h or 1d; "
                        "experiment: outcomes within this span of first exposure, e.g. 7d")
    parser.add_argument("--contract", metavar="FILE",
                        help="data contract whose feature ranges the drift report checks")
    parser.add_argument("--ignore", action="append", default=None, metavar="PATH",
                        help="field path the field diff ignores (fields; repeatable)")
    parser.add_argument("--memory-limit", default=DEFAULT_MEMORY_LIMIT, metavar="SIZE",
                        help="memory cap, e.g. 1GB: DuckDB's (it spills to disk beyond it; the "
                        "divergence report's numpy work stays within it too) or Spark's "
                        f"driver heap (default {DEFAULT_MEMORY_LIMIT})")
    parser.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb",
                        help="where the row work runs: embedded DuckDB (default) or Spark "
                        "over a fleet export (--parquet DIR; docs/engines.md)")
    parser.add_argument("--spark-master", metavar="URL",
                        help="Spark master (local[*], spark://..., or sc://HOST:15002 for "
                        "Spark Connect); default SPARK_REMOTE, else local[*]")
    parser.add_argument("--format", choices=_FORMATS, default="table", help="output format")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    from analysis.report_options import add_statistics_options

    add_statistics_options(parser)
    parser.set_defaults(handler=run_report)
    return parser


def build_parser(prog: str = "python -m analysis") -> argparse.ArgumentParser:
    """A standalone parser with the ``report`` command."""
    parser = argparse.ArgumentParser(prog=prog, description="Shadowcar analysis")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_report_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; argparse exits with code 2 on bad arguments."""
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


class ReportUsageError(Exception):
    """An argument that argparse accepted but the report cannot use."""


_UsageError = ReportUsageError


def _weights(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not sep or not name.strip() or not math.isfinite(weight) or weight < 0:
            raise _UsageError(f"--weights: cannot read {item!r}; use NAME=WEIGHT,NAME=WEIGHT")
        weights[name.strip()] = weight
    return weights


def _check(args: argparse.Namespace) -> None:
    if args.input and args.kind == "drift":
        raise _UsageError("drift reads recorded requests: use --db or --parquet")
    for name in ("atol", "rtol"):
        value = getattr(args, name)
        if value is None or not math.isfinite(value) or value < 0:
            raise _UsageError(f"--{name} must be a finite number >= 0")
    if args.winsorize is not None and not 0.5 < args.winsorize < 1:
        raise _UsageError("--winsorize must be between 0.5 and 1 (exclusive)")
    for name in ("since", "until"):
        parse_time(getattr(args, name))  # raises AnalysisSourceError with the accepted forms
    from analysis.report_options import check_statistics_options

    check_statistics_options(args)


def _analyze(
    con: duckdb.DuckDBPyConnection | None, args: argparse.Namespace,
    weights: dict[str, float] | None, engine: Engine | None = None,
) -> dict[str, Any]:
    from analysis.report_options import statistics_kwargs

    if args.kind == "experiment":
        return _experiment(con, args, weights, engine)
    if args.kind == "divergence" and con is None and engine is not None:
        from analysis.divergence_engine import analyze_divergence_engine

        return analyze_divergence_engine(
            engine, since=args.since, until=args.until, route=args.route, atol=args.atol,
            rtol=args.rtol, segment=args.segment,
            **statistics_kwargs(args, "divergence")).to_dict()
    if args.kind == "drift" and con is None and engine is not None:
        from analysis.drift_engine import analyze_drift_engine

        ranges = _contract_ranges(args.contract)
        return analyze_drift_engine(engine, since=args.since, until=args.until,
                                    route=args.route, ranges=ranges,
                                    **statistics_kwargs(args, "drift")).to_dict()
    if args.kind == "fields" and con is None and engine is not None:
        from analysis.fields_engine import analyze_field_diff_engine

        return analyze_field_diff_engine(
            engine, route=args.route, ignore=args.ignore, atol=args.atol, rtol=args.rtol,
            since=args.since, until=args.until, **statistics_kwargs(args, "fields")).to_dict()
    if con is None:
        raise EngineUnsupported(f"the {args.kind} report needs a source")

    if args.kind == "divergence":
        from analysis.divergence import analyze_divergence

        return analyze_divergence(con, since=args.since, until=args.until, route=args.route,
                                  atol=args.atol, rtol=args.rtol,
                                  segment=args.segment,
                                  **statistics_kwargs(args, "divergence")).to_dict()
    if args.kind == "fields":
        from analysis.field_diff import analyze_field_diff

        return analyze_field_diff(con, route=args.route, ignore=args.ignore, atol=args.atol,
                                  rtol=args.rtol, since=args.since, until=args.until,
                                  **statistics_kwargs(args, "fields")).to_dict()
    if args.kind == "drift":
        from analysis.drift import analyze_drift

        ranges = getattr(args, "ranges", None)  # sent by a CLI to a live sidecar
        return analyze_drift(con, since=args.since, until=args.until, route=args.route,
                             ranges=ranges if ranges is not None
                             else _contract_ranges(args.contract),
                             **statistics_kwargs(args, "drift")).to_dict()
    raise _UsageError(f"unknown report kind {args.kind!r}")


def _experiment(
    con: duckdb.DuckDBPyConnection | None, args: argparse.Namespace,
    weights: dict[str, float] | None, engine: Engine | None,
) -> dict[str, Any]:
    from analysis.report_options import statistics_kwargs

    try:
        from analysis.experiment import analyze_experiments
    except ImportError as exc:
        raise _UsageError(f"experiment analysis is not available: {exc}") from exc
    if engine is None and con is not None:
        # The row work is the one Ibis expression Spark runs too, compiled to DuckDB SQL
        # (as fast as the hand-written SQL: 16 s of CPU for 10M units either way).
        from analysis.engine import duckdb_engine

        engine = duckdb_engine(con)
    report = analyze_experiments(
        con, source="table" if args.input else "recorded", since=parse_time(args.since),
        until=parse_time(args.until), control=args.control, weights=weights,
        sequential=args.sequential, cuped=True if args.cuped else None,
        winsorize=args.winsorize, engine=engine, **statistics_kwargs(args, "experiment"),
    )
    result: dict[str, Any] = report.to_dict()
    return result


def _contract_ranges(path: str | None) -> dict[str, tuple[float, float]] | None:
    """Declared feature ranges of a data contract, under the drift report's feature names
    (``tensor[i]`` for element i; ``tensor`` for a one-element tensor)."""
    if path is None:
        return None
    from sidecar.contracts import load_contract
    from sidecar.errors import ConfigError

    try:
        contract = load_contract(path)
    except ConfigError as exc:
        raise _UsageError(f"--contract: {exc}") from exc
    ranges: dict[str, tuple[float, float]] = {}
    for spec in contract.inputs:
        for position, feature in enumerate(spec.features):
            if feature.range is None:
                continue
            lo, hi = float(feature.range[0]), float(feature.range[1])
            ranges[f"{spec.name}[{spec.feature_index(position)}]"] = (lo, hi)
            if len(spec.features) == 1:
                ranges[spec.name] = (lo, hi)
    return ranges


def _quality(con: duckdb.DuckDBPyConnection | None, args: argparse.Namespace,
             engine: Engine | None = None) -> dict[str, Any]:
    from analysis.quality import analyze_quality

    options = {"metric": args.metric, "kind": args.quality_kind, "since": args.since,
               "until": args.until, "window": args.window, "route": args.route}
    if con is None and engine is not None:  # --engine spark (analysis/quality_engine.py)
        from analysis.quality_engine import analyze_quality_engine

        return analyze_quality_engine(engine, **options).to_dict()
    if con is None:
        raise EngineUnsupported("the quality report needs a source")
    return analyze_quality(con, **options).to_dict()


def render_report(con: duckdb.DuckDBPyConnection | None, args: argparse.Namespace,
                  color: bool = False, engine: Engine | None = None) -> str:
    """The report's text, in ``args.format``, from an open source: a connection of
    :func:`analysis.load.open_source` or a cursor of a live sidecar's own database, or
    an ``engine`` (:mod:`analysis.engine`; Spark has no DuckDB connection)."""
    from analysis.report import render

    _check(args)
    weights = _weights(args.weights)
    if args.kind == "quality":
        report = _quality(con, args, engine)
    else:
        report = _analyze(con, args, weights, engine)
    # A table written to a file (-o) is not wrapped; on a terminal it takes its width (a
    # live sidecar is told the width of the terminal that asked: ``args.width``).
    width = getattr(args, "width", None)
    if width is None:
        width = 0 if getattr(args, "output", None) else None
    return render(report, args.kind, args.format, color=color, width=width)


def run_report(args: argparse.Namespace) -> int:
    """Run one report from parsed arguments: 0 on success, 2 on bad arguments, 3 when the
    source cannot be read (a file a live sidecar writes is analysed by that sidecar)."""
    try:
        _check(args)
        _weights(args.weights)  # bad arguments fail before the source is opened
    except (_UsageError, AnalysisSourceError, ValueError) as exc:
        print(f"report {args.kind}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    color = args.format == "table" and not args.output and sys.stdout.isatty()
    source_kind = args.kind if args.kind in ("divergence", "experiment", "drift") else None
    if getattr(args, "engine", "duckdb") == "spark":
        return _spark_report(args, source_kind, color)
    try:
        con = open_source(db=args.db, parquet=args.parquet, table=args.input, kind=source_kind,
                          memory_limit=args.memory_limit)
    except AnalysisSourceError as exc:
        return _live_report(args, exc, color)
    from analysis.progress import query_progress_bar

    try:
        with query_progress_bar(con, f"report {args.kind}"):
            text = render_report(con, args, color)
    except (_UsageError, AnalysisSourceError, ValueError) as exc:
        print(f"report {args.kind}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except duckdb.Error as exc:
        print(f"report {args.kind}: the source could not be analysed: {exc}", file=sys.stderr)
        return EXIT_NO_DATA
    finally:
        con.close()
    return _emit(args, text)


def _spark_report(args: argparse.Namespace, source_kind: str | None, color: bool) -> int:
    """``--engine spark``: the row work runs in Spark; a part that runs on DuckDB only is
    refused (exit 2) rather than computed another way."""
    from analysis.engine import spark_engine, spark_session

    try:
        if args.db:
            raise EngineUnsupported("--engine spark reads a fleet export (--parquet DIR) or an "
                                    "analyst table (--input FILE); a DuckDB file (--db) is "
                                    "read by --engine duckdb, or exported first with "
                                    f"'sidecar export --db {args.db} --dir DIR'")
        session = spark_session(args.spark_master, args.memory_limit)
        engine = spark_engine(session, parquet=args.parquet, table=args.input, kind=source_kind)
        text = render_report(None, args, color, engine)
    except (EngineUnsupported, _UsageError, AnalysisSourceError, ValueError) as exc:
        print(f"report {args.kind}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _spark_errors() as exc:
        print(f"report {args.kind}: Spark could not analyse the source: {spark_failure(exc)}",
              file=sys.stderr)
        return EXIT_NO_DATA
    return _emit(args, text)


def _spark_errors() -> tuple[type[BaseException], ...]:
    """The errors a Spark job raises in the driver (none without pyspark)."""
    try:
        from py4j.protocol import Py4JError
        from pyspark.errors import PySparkException
    except ImportError:
        return ()
    return (Py4JError, PySparkException)


def spark_failure(exc: BaseException) -> str:
    """One line for a failed Spark job (its Java stack stays in Spark's log), with what to
    do about a JVM out of heap."""
    lines = [line.strip().lstrip(": ") for line in str(exc).splitlines() if line.strip()]
    causes = [line.removeprefix("Caused by: ") for line in lines
              if line.startswith("Caused by: ")]  # the innermost says what went wrong
    cause = causes[-1] if causes else next(
        (line for line in lines if "Exception" in line or "Error" in line),
        lines[0] if lines else type(exc).__name__)
    if "OutOfMemoryError" in str(exc):
        cause = ("java.lang.OutOfMemoryError: Java heap space; raise --memory-limit (the "
                 "driver's heap in local mode) or run on a cluster (--spark-master, "
                 "SPARK_REMOTE)")
    return cause[:400]


def _emit(args: argparse.Namespace, text: str) -> int:
    if args.output:
        try:
            directory = os.path.dirname(os.path.abspath(args.output))
            os.makedirs(directory, exist_ok=True)
            with open(args.output, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            print(f"report {args.kind}: cannot write {args.output}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _live_report(args: argparse.Namespace, opening: AnalysisSourceError, color: bool) -> int:
    """The source would not open: when a live sidecar writes the --db file, it computes the
    report (as JSON) and this process renders the table or HTML page, so that drawing
    charts costs the serving process nothing; otherwise the opening error stands (exit 3)."""
    import json

    from analysis.report import render
    from sidecar.admin.live import LiveError, live_sidecar_for

    try:
        live = live_sidecar_for(args.db, opening) if args.db else None
        if live is None:
            print(f"report {args.kind}: {opening}", file=sys.stderr)
            return EXIT_NO_DATA
        query = [(k, v) for k, v in report_query(args) if k != "format"]
        text = live.report(args.kind, [*query, ("format", "json")])
        if args.format != "json":  # rendered from the JSON: the same text (tests hold it)
            text = render(json.loads(text), args.kind, args.format, color=color,
                          width=0 if args.output else None)
    except LiveError as exc:
        print(f"report {args.kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except json.JSONDecodeError as exc:
        print(f"report {args.kind}: the live sidecar's answer is not JSON: {exc}",
              file=sys.stderr)
        return EXIT_NO_DATA
    except (_UsageError, ValueError) as exc:
        print(f"report {args.kind}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return _emit(args, text)


#: Options that name local files or this process's resources: never sent to a live sidecar
#: (``--contract`` travels as the ``ranges`` it declares).
_LOCAL_OPTIONS = frozenset({"db", "parquet", "input", "output", "memory_limit", "contract",
                            "engine", "spark_master"})


class _RaisingParser(argparse.ArgumentParser):
    """A parser for query parameters: an error is a :class:`ReportUsageError`, not an exit."""

    def error(self, message: str) -> Any:
        raise ReportUsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        raise ReportUsageError(message or "invalid report options")


@cache
def _query_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.Action]]:
    root = _RaisingParser(prog="GET /v1/reports", add_help=False)
    report = add_report_parser(root.add_subparsers(dest="command", required=True))
    actions = {a.dest: a for a in report._actions
               if a.option_strings and a.dest not in _LOCAL_OPTIONS and a.dest != "help"}
    return root, actions


def report_query(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The query parameters that ask a live sidecar for the report ``args`` describe:
    every option that differs from its default, by its destination name."""
    _, actions = _query_parser()
    query: list[tuple[str, str]] = []
    for dest, action in actions.items():
        value = getattr(args, dest, action.default)
        if value is None or value == action.default:
            continue
        if action.nargs == 0:
            query.append((dest, "1" if value else "0"))
        elif isinstance(value, list | tuple):
            query.extend((dest, str(v)) for v in value)
        else:
            query.append((dest, str(value)))
    if getattr(args, "contract", None):
        import json

        query.append(("ranges", json.dumps(_contract_ranges(args.contract))))
    return query


def report_args(kind: str, query: Iterable[tuple[str, str]]) -> argparse.Namespace:
    """Parse a live report request (``kind`` and :func:`report_query`'s parameters) into the
    arguments :func:`render_report` takes; :class:`ReportUsageError` names a bad one."""
    import json

    root, actions = _query_parser()
    argv = ["report", kind, "--db", "(live)"]  # the source group is required; never opened
    ranges: dict[str, tuple[float, float]] | None = None
    width: int | None = None
    for key, value in query:
        if key == "color":
            continue
        if key == "width":
            if not value.isdigit():
                raise ReportUsageError(f"width: expected a number of columns >= 0, got {value!r}")
            width = int(value)
            continue
        if key == "ranges":
            try:
                raw = json.loads(value)
                ranges = {str(k): (float(v[0]), float(v[1])) for k, v in raw.items()}
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                raise ReportUsageError(f"ranges: expected {{feature: [low, high]}}: {exc}") \
                    from exc
            continue
        action = actions.get(key)
        if action is None:
            known = ", ".join(sorted([*actions, "ranges", "color", "width"]))
            raise ReportUsageError(f"unknown report option {key!r} (known: {known})")
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:
            if value.lower() in ("1", "true", "yes", "on", ""):
                argv.append(flag)
            elif value.lower() not in ("0", "false", "no", "off"):
                raise ReportUsageError(f"{key}: expected 1 or 0, got {value!r}")
        else:
            argv += [flag, value]
    args = root.parse_args(argv)
    args.ranges = ranges
    args.width = width
    args.db = None
    return args
