"""The ``sidecar`` command: serve, validate, demo, report.

Exit codes: 0 success, 1 failure at run time, 2 invalid configuration or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Literal

from sidecar.config import load_config
from sidecar.errors import ConfigError, ShadowcarError
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
    await sidecar.run_until_stopped()
    # Accepted records the final flush could not write: an orchestrator must see the loss.
    return 1 if sidecar.sink.stats.lost_at_close else 0


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
        text = Path(args.config).read_text(encoding="utf-8")
        load_config(args.config)  # fail here, naming the field, before sending anything
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


def _cmd_audit(args: argparse.Namespace) -> int:
    if args.db is not None:
        import duckdb

        con = duckdb.connect(args.db, read_only=True)
        try:
            rows = con.execute(
                "SELECT ts, actor, action, route, reason, config_version, detail FROM audit "
                "ORDER BY ts DESC LIMIT ?", [args.limit]
            ).fetchall()
        finally:
            con.close()
        keys = ("ts", "actor", "action", "route", "reason", "config_version", "detail")
        entries = [dict(zip(keys, r, strict=True)) for r in rows]
    else:
        entries = _client(args).audit(args.limit)
    if args.json:
        print(json.dumps(entries, indent=1, default=str))
        return 0
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


def _open_recorded(args: argparse.Namespace) -> Any:
    from analysis.load import open_source

    if (args.db is None) == (args.parquet is None):
        raise ConfigError([("", "give exactly one of --db or --parquet")])
    return open_source(db=args.db, parquet=args.parquet)


def _cmd_models(args: argparse.Namespace) -> int:
    from sidecar.provenance import models_listing

    rows = models_listing(_open_recorded(args))
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
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
    from sidecar.triggers import evaluate_triggers

    loaded = load_config(args.config)
    con = _open_recorded(args)
    results = evaluate_triggers(con, loaded.config.triggers, canonical_json(loaded.config),
                                dt.datetime.now(dt.UTC))
    fired = [r for r in results if r.fired]
    if args.json:
        print(json.dumps([r.as_event() for r in results], indent=1, default=str))
    else:
        for r in results:
            print(f"{'FIRED' if r.fired else 'quiet':<6} {r.name:<24} {r.kind:<11} {r.message}")
    if args.notify and fired and loaded.config.notify.webhook:
        run_async(_notify(loaded.config.notify, [r.as_event() for r in fired]))
    return 1 if fired else 0


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
    audit.add_argument("--db", default=None, help="read a (stopped) sidecar's DuckDB file")
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
    models.add_argument("--db", default=None, help="a (stopped) sidecar's DuckDB file")
    models.add_argument("--parquet", default=None, help="an exported Parquet directory")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_cmd_models)

    check_cmd = sub.add_parser(
        "check", help="evaluate the config's retraining triggers (exit 1 when one fires)"
    )
    check_cmd.add_argument("config", help="YAML config holding the triggers")
    check_cmd.add_argument("--db", default=None, help="DuckDB file (a copy or a stopped one)")
    check_cmd.add_argument("--parquet", default=None, help="an exported Parquet directory")
    check_cmd.add_argument("--json", action="store_true")
    check_cmd.add_argument("--notify", action="store_true", help="send fired ones to the webhook")
    check_cmd.set_defaults(func=_cmd_check)

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
