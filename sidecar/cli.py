"""The ``sidecar`` command: serve, validate, demo, report.

Exit codes (sidecar/exit_codes.py): 0 fine, 1 a trigger fired or a gate failed, 2 a usage or
input error, 3 the data could not be read, 70 a bug, 130 interrupted. ``--db FILE`` commands
on a file a live sidecar writes ask that sidecar's admin API (sidecar/admin/live.py).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import json
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Literal

from sidecar.config import load_config
from sidecar.errors import ConfigError, ShadowcarError, SinkError
from sidecar.exit_codes import (
    EPILOG,
    EXIT_DATA,
    EXIT_FIRED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
)
from sidecar.telemetry.logs import configure_logging

__all__ = ["main"]

log = logging.getLogger("sidecar")


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on uvloop when it is installed, else on asyncio's default loop
    (``SHADOWCAR_EVENT_LOOP=asyncio`` forces the default loop, for comparisons)."""
    if os.environ.get("SHADOWCAR_EVENT_LOOP", "uvloop") == "asyncio":
        return asyncio.run(coro)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency on Linux
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def _serve(
    config_path: str,
    log_level: str,
    log_format: Literal["text", "json"] | None,
    workers: int = 1,
    worker_index: int = 0,
) -> int:
    from sidecar.app import Sidecar
    from sidecar.workers import check_workers, for_worker

    loaded = load_config(config_path)
    check_workers(loaded, workers)
    loaded = for_worker(loaded, worker_index, workers)
    configure_logging(log_level, log_format or loaded.config.telemetry.log_format)
    sidecar = Sidecar(loaded, config_path=config_path, worker_index=worker_index,
                      workers=workers)
    try:
        await sidecar.start()
    except BaseException:
        await sidecar.aclose()
        raise
    # Everything built so far (modules, config, channels) lives as long as the process:
    # frozen out of the cyclic collector, whose passes then walk only what calls allocate
    # (bench/README.md: a few microseconds of every call otherwise).
    gc.collect()
    gc.freeze()
    await sidecar.run_until_stopped()
    # Accepted records the final flush could not write: an orchestrator must see the loss
    # (3, the data code: 1 means a fired trigger or a failed gate and nothing else).
    return EXIT_DATA if sidecar.sink.stats.lost_at_close else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    fmt = args.log_format
    if args.workers > 1 and args.worker_index is None:
        from sidecar.workers import check_workers, run_supervisor

        check_workers(load_config(args.config), args.workers)  # exit 2 before forking
        extra = ["--log-level", args.log_level]
        if fmt:
            extra += ["--log-format", fmt]
        return run_supervisor(args.config, args.workers, extra)
    return run_async(_serve(args.config, args.log_level, fmt, args.workers,
                            args.worker_index or 0))


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


def _client(args: argparse.Namespace) -> Any:
    from sidecar.admin.client import AdminClient

    return AdminClient(args.admin, args.token)


def _actor() -> str:
    return os.environ.get("USER") or getpass.getuser() or "cli"


def _cmd_reload(args: argparse.Namespace) -> int:
    text = file = None
    if args.config is not None:
        load_config(args.config)  # fail here, naming the field, before sending anything
        text = Path(args.config).read_text(encoding="utf-8")  # UTF-8: load_config checked
        file = os.path.abspath(args.config)
    result = _client(args).reload(text, args.reason, _actor(), file)
    state = "reloaded" if result.get("changed") else "unchanged"
    print(f"{state}: serving config {result['version']}")
    if result.get("file"):
        print(f"SIGHUP rereads {result['file']}")
    return 0


def _cmd_canary(args: argparse.Namespace) -> int:
    if args.action != "status" and not args.reason:
        print("error: --reason is required for a canary action", file=sys.stderr)
        return 2
    if args.force and args.action != "promote":
        print("error: --force goes with promote only", file=sys.stderr)
        return 2
    status = _client(args).canary(args.action, args.route, args.reason or "", _actor(),
                                  args.force)
    decision = status.get("last_decision") or {}
    print(
        f"{status['route']}: {status['state']}, step {status['step_index'] + 1}/"
        f"{len(status['steps'])}, candidate {status['candidate']} at {status['share']:.0%}"
        f", {status.get('evaluations', 0)} evaluations"
    )
    if decision:
        print(f"last decision: {decision.get('decision')} - "
              + "; ".join(decision.get("reasons", [])))
    if status.get("complete"):
        print(f"complete: {status['candidate']} serves every unit. Make it the route's "
              "primary in the config (then reload); until then the promoted state is kept:")
        print(status.get("config_change", ""), end="")
    elif status["state"] == "awaiting_approval":
        print(f"waiting: sidecar canary approve {status['route']} --reason ...")
    elif status["state"] == "rolled_back":
        print(f"to try again: sidecar canary restart {status['route']} --reason ...")
    if args.json:
        print(json.dumps(status, indent=1))
    return 0


_AUDIT_KEYS = ("ts", "actor", "action", "route", "reason", "config_version", "detail")


def _cmd_audit(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ConfigError([("--limit", "must be at least 1")])
    if args.db is not None or args.parquet is not None:
        source = _recorded(args)
        if _is_live(source):
            entries = source.get_json("/v1/audit", [("limit", str(args.limit))])["audit"]
        else:
            rows = _read(source, lambda con: con.execute(
                f"SELECT {', '.join(_AUDIT_KEYS)} FROM audit ORDER BY ts DESC LIMIT ?",
                [args.limit]).fetchall())
            entries = [dict(zip(_AUDIT_KEYS, r, strict=True)) for r in rows]
    else:
        entries = _client(args).audit(args.limit)
    if args.json:
        print(json.dumps(entries, indent=1, default=str))
        return 0
    if not entries:
        print("no audit entries", file=sys.stderr)
    for e in entries:
        print(f"{e['ts']}  {e['actor']:<12} {e['action']:<22} {e['route'] or '-':<40} "
              f"{e['reason'] or ''}")
    return 0


def _cmd_contract_docs(args: argparse.Namespace) -> int:
    from sidecar.contracts import contract_markdown, load_contract

    print(contract_markdown(load_contract(args.file)))
    return 0


def _cmd_contract_check(args: argparse.Namespace) -> int:
    from sidecar.contracts import load_contract

    c = load_contract(args.file)
    print(f"{args.file}: valid ({c.name}@{c.version}, {len(c.inputs)} inputs, "
          f"{len(c.outputs)} outputs)")
    return 0


def _recorded(args: argparse.Namespace) -> Any:
    """The recorded data ``--db``/``--parquet`` name: an open analysis connection, or the
    live sidecar (:class:`sidecar.admin.live.LiveSidecar`) that writes the ``--db`` file."""
    from analysis.load import AnalysisSourceError, open_source
    from sidecar.admin.live import live_sidecar_for

    if (args.db is None) == (args.parquet is None):
        raise CommandError("give exactly one of --db or --parquet", EXIT_USAGE)
    try:
        return open_source(db=args.db, parquet=args.parquet)
    except AnalysisSourceError as exc:
        live = live_sidecar_for(args.db, exc) if args.db else None
        if live is None:
            raise CommandError(str(exc), EXIT_DATA) from exc
        return live


def _is_live(source: Any) -> bool:
    from sidecar.admin.live import LiveSidecar

    return isinstance(source, LiveSidecar)


def _read(con: Any, work: Any) -> Any:
    """``work(con)``, then close ``con``; a DuckDB error means the data could not be read."""
    import duckdb

    try:
        return work(con)
    except duckdb.Error as exc:
        raise CommandError(f"the recorded data could not be read: {exc}", EXIT_DATA) from exc
    finally:
        con.close()


def _cmd_models(args: argparse.Namespace) -> int:
    from sidecar.provenance import models_listing

    source = _recorded(args)
    if _is_live(source):
        rows = source.get_json("/v1/models")["models"]
    else:
        rows = _read(source, models_listing)
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    if not rows:
        print("no model versions recorded", file=sys.stderr)
        return 0
    from analysis.report.document import Column, Grid
    from analysis.report.terminal import render_grid

    # The terminal's width (COLUMNS first); piped or redirected, nothing is cut or wrapped.
    grid = Grid("Model versions", (Column("backend", "name"), Column("version", "name"),
                                   Column("first seen"), Column("last seen"),
                                   Column("roles", "text"), Column("provenance", "text")), [])
    for r in rows:
        roles = ", ".join(f"{k}:{v.get('calls', 0)}" for k, v in (r.get("roles") or {}).items())
        prov = r.get("provenance") or {}
        grid.rows.append([str(r.get("backend")), str(r.get("version")), str(r.get("first_seen")),
                          str(r.get("last_seen")), roles,
                          ", ".join(f"{k}={v}" for k, v in prov.items() if v) or "-"])
    sys.stdout.write(render_grid(grid, color=sys.stdout.isatty()))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    import datetime as dt

    from sidecar.config import canonical_json
    from sidecar.triggers import check_lines, evaluate_triggers

    loaded = load_config(args.config)
    triggers = loaded.config.triggers
    if not triggers:
        if args.json:
            print("[]")
        print(f"{args.config}: no triggers configured (add a 'triggers:' list); nothing to "
              "check", file=sys.stderr if args.json else sys.stdout)
        return 0
    config_json = canonical_json(loaded.config)
    now = dt.datetime.now(dt.UTC)
    source = _recorded(args)
    if _is_live(source):
        events = _check_live(source, triggers, config_json, now)
    else:
        events = [r.as_event() for r in _read(
            source, lambda con: evaluate_triggers(con, triggers, config_json, now))]
    fired = [e for e in events if e["fired"]]
    if args.json:
        print(json.dumps(events, indent=1, default=str))
    else:
        print("\n".join(check_lines(events)))
    if args.notify and fired and loaded.config.notify.webhook:
        run_async(_notify(loaded.config.notify, fired))
    return EXIT_FIRED if fired else 0


def _check_live(live: Any, triggers: Sequence[Any], config_json: str,
                now: Any) -> list[dict[str, Any]]:
    """The live sidecar evaluates the triggers that read data; age triggers read only this
    config's provenance, so they are evaluated here, as on a stopped file."""
    import duckdb

    from sidecar.triggers import evaluate_triggers

    remote = [t for t in triggers if t.kind != "age"]
    answered: list[dict[str, Any]] = []
    if remote:
        query = [("triggers", json.dumps([t.model_dump(mode="json") for t in remote]))]
        answered = live.get_json("/v1/check", query)["results"]
    local: list[dict[str, Any]] = []
    ages = [t for t in triggers if t.kind == "age"]
    if ages:
        with duckdb.connect(":memory:") as nothing:  # age triggers read no table
            local = [r.as_event() for r in evaluate_triggers(nothing, ages, config_json, now)]
    by_name = {e["name"]: e for e in [*answered, *local]}
    return [by_name[t.name] for t in triggers if t.name in by_name]


async def _notify(settings: Any, events: list[dict[str, Any]]) -> int:
    from sidecar.notify import WebhookNotifier

    async with WebhookNotifier.from_config(settings) as notifier:
        for event in events:
            notifier.notify(event)
    return 0


def _admin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin", default=None,
                   help="admin API base URL (default $SHADOWCAR_ADMIN or http://127.0.0.1:9901)")
    p.add_argument("--token", default=None, help="bearer token (default $SHADOWCAR_ADMIN_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sidecar", description="Shadowcar: shadow, A/B and canary testing for gRPC models.",
        epilog=EPILOG,
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=None,
        help="log line format (default: the config's telemetry.log_format, else text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the sidecar")
    serve.add_argument("--config", "-c", required=True, help="YAML config file")
    serve.add_argument("--workers", type=int, default=1,
                       help="processes sharing the port (SO_REUSEPORT), one segment file each")
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)

    validate = sub.add_parser("validate", help="check a config file and exit")
    validate.add_argument("config", help="YAML config file")
    validate.set_defaults(func=_cmd_validate)

    demo = sub.add_parser("demo", help="run built-in models, the sidecar and traffic; summarise")
    demo.add_argument("--requests", type=int, default=3000, help="requests to send")
    demo.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    demo.add_argument("--out", default="demo-out", help="directory for the DuckDB file and report")
    demo.set_defaults(func=_cmd_demo)

    reload = sub.add_parser("reload", help="validate and hot-reload a running sidecar's config")
    reload.add_argument("--config", default=None,
                        help="send this file; SIGHUP rereads it from then on (default: the "
                        "sidecar rereads the file it loaded last)")
    reload.add_argument("--reason", default="cli", help="why, for the audit log")
    _admin_args(reload)
    reload.set_defaults(func=_cmd_reload)

    canary = sub.add_parser(
        "canary", help="status or control of a route's canary",
        description="promote: the next step (refused at a review gate unless --force); "
        "approve: pass the gate the canary waits at; restart: a fresh attempt from step 1 "
        "(after a rollback); every action is audited with its --reason.",
    )
    canary.add_argument(
        "action",
        choices=("status", "promote", "pause", "resume", "rollback", "approve", "restart"),
    )
    canary.add_argument("route", help="the route's match, e.g. /pkg.Svc/Method")
    canary.add_argument("--reason", default=None, help="why (required for actions)")
    canary.add_argument("--force", action="store_true",
                        help="promote past a review gate (audited as force_promote)")
    canary.add_argument("--json", action="store_true", help="also print the full status")
    _admin_args(canary)
    canary.set_defaults(func=_cmd_canary)

    audit = sub.add_parser("audit", help="list reloads, promotions, rollbacks, pauses")
    audit.add_argument("--db", default=None,
                       help="a sidecar's DuckDB file (a live sidecar's: asked through its admin "
                       "API)")
    audit.add_argument("--parquet", default=None, help="an exported Parquet directory")
    audit.add_argument("--limit", type=int, default=50)
    audit.add_argument("--json", action="store_true")
    _admin_args(audit)
    audit.set_defaults(func=_cmd_audit)

    from sidecar.gold import add_gold_parser
    from sidecar.replay import add_replay_parser

    add_replay_parser(sub)
    add_gold_parser(sub)

    contract = sub.add_parser("contract", help="data contracts")
    contract_sub = contract.add_subparsers(dest="contract_command", required=True)
    docs = contract_sub.add_parser("docs", help="render a contract file as Markdown")
    docs.add_argument("file")
    docs.set_defaults(func=_cmd_contract_docs)
    check = contract_sub.add_parser("check", help="validate a contract file")
    check.add_argument("file")
    check.set_defaults(func=_cmd_contract_check)

    models = sub.add_parser("models", help="every model version, its provenance, when it served")
    models.add_argument("--db", default=None,
                        help="a sidecar's DuckDB file (a live sidecar's: asked through its "
                        "admin API)")
    models.add_argument("--parquet", default=None, help="an exported Parquet directory")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_cmd_models)

    check_cmd = sub.add_parser(
        "check", help="evaluate the config's retraining triggers (exit 1 when one fires)",
        description="Evaluate the config's triggers on recorded data: one line per trigger, "
        "then a summary; exit 1 when one fired, 0 when none did (or none is configured).",
    )
    check_cmd.add_argument("config", help="YAML config holding the triggers")
    check_cmd.add_argument("--db", default=None,
                           help="a sidecar's DuckDB file (a live sidecar's: asked through its "
                           "admin API)")
    check_cmd.add_argument("--parquet", default=None, help="an exported Parquet directory")
    check_cmd.add_argument("--json", action="store_true")
    check_cmd.add_argument("--notify", action="store_true", help="send fired ones to the webhook")
    check_cmd.set_defaults(func=_cmd_check)

    from sidecar.export.command import add_export_parser

    add_export_parser(sub)

    try:
        from analysis.cli import add_report_parser
    except ImportError:  # analysis is optional for a serving-only install
        pass
    else:
        add_report_parser(sub)
        report = sub.choices.get("report")
        if report is not None:
            report.set_defaults(func=_cmd_report)
    _add_epilog(parser)
    return parser


def _add_epilog(parser: argparse.ArgumentParser) -> None:
    """Every command's --help ends with the exit codes (replay and gold included)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not child.epilog:
                    child.epilog = EPILOG
                _add_epilog(child)


def _admin_exit(exc: ShadowcarError) -> int | None:
    """The exit code of an admin API error, None for any other error. A refused canary
    action (409: its state or a review gate) is a failed gate."""
    client = sys.modules.get("sidecar.admin.client")  # loaded when an admin call was made
    if client is None or not isinstance(exc, client.AdminError):
        return None
    status = exc.status
    if status == 409:
        return EXIT_FIRED
    if status is not None and 400 <= status < 500:
        return EXIT_USAGE
    return EXIT_DATA  # unreachable, or the sidecar failed to answer


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format or "text")
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except ShadowcarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        admin = _admin_exit(exc)
        return EXIT_USAGE if admin is None else admin  # e.g. listen: cannot bind
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:  # a bug: never exit 1, which says "a trigger fired"
        log.exception("internal error (please report it with this traceback)")
        return EXIT_INTERNAL
    return code


if __name__ == "__main__":
    sys.exit(main())
