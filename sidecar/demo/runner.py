"""``sidecar demo``: built-in models, the sidecar in front, real traffic, and a summary.

Starts three OIP model servers on free loopback ports (a numpy primary, a retrained shadow,
and a slow, flaky shadow), the sidecar in front of them, sends traffic through a real gRPC
client with a progress bar, shuts down cleanly and summarises the DuckDB file it wrote.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from rich.console import Console
from rich.table import Table

from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.demo.models import build_infer_request, make_demo_models, start_model_server
from sidecar.demo.traffic import (
    BASE_PRIMARY_TIMEOUT_MS,
    METHOD,
    Pace,
    Tally,
    calibrate,
    send_traffic,
)

__all__ = ["demo_config", "run_demo", "summarize_recording"]

N_FEATURES = 8


def demo_config(
    db_path: Path, targets: dict[str, str], pace: Pace | None = None
) -> dict[str, Any]:
    """The demo topology: one OIP route with two shadows, and a pass-through for the rest.
    Deadlines are those of an idle machine, stretched by ``pace`` (see :func:`calibrate`)."""
    scale = pace.scale if pace is not None else 1.0
    primary_ms = pace.primary_timeout_ms if pace is not None else BASE_PRIMARY_TIMEOUT_MS
    return {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "storage": {"path": str(db_path), "flush_interval_ms": 200},
        "backends": [
            {"name": "fraud-v7", "version": "7.0.1", "target": targets["fraud-v7"]},
            {"name": "fraud-v8", "version": "8.0.0-rc1", "target": targets["fraud-v8"]},
            {"name": "fraud-v9-flaky", "version": "9.0.0-dev", "target": targets["fraud-v9-flaky"]},
        ],
        "routes": [
            {
                "match": METHOD,
                "primary": "fraud-v7",
                "timeout_ms": primary_ms,
                "codec": "oip",
                "shadows": [
                    {"backend": "fraud-v8", "sample_percent": 100,
                     "timeout_ms": round(500 * scale), "max_in_flight": 64},
                    # Slow and flaky on purpose: some copies time out or fail, none reaches
                    # the caller.
                    {"backend": "fraud-v9-flaky", "sample_percent": 50,
                     "timeout_ms": round(150 * scale), "max_in_flight": 8},
                ],
            },
            {"match": "/inference.GRPCInferenceService/*", "primary": "fraud-v7",
             "timeout_ms": primary_ms},
        ],
    }


def _features(requests: int) -> np.ndarray:
    rng = np.random.default_rng(2026)
    return rng.standard_normal((requests, N_FEATURES)).astype(np.float32)


async def _report_outcomes(admin_port: int, requests: int, truth: Any) -> int:
    """What happened later: each payment's true label (drawn from a 'true' model that the
    retrained shadow is closer to), reported through POST /v1/outcomes as a real client
    would. Returns the events accepted."""
    import aiohttp

    probability = truth.predict_proba(_features(requests))[:, 1]
    labels = np.random.default_rng(7).random(requests) < probability
    accepted = 0
    async with aiohttp.ClientSession() as http:
        for start in range(0, requests, 1000):
            events = [{"event_id": f"label-{i}", "request_id": f"demo-{i}", "metric": "label",
                       "value": int(labels[i])} for i in range(start, min(start + 1000, requests))]
            async with http.post(f"http://127.0.0.1:{admin_port}/v1/outcomes",
                                 json={"events": events}) as resp:
                accepted += int((await resp.json()).get("accepted", 0))
    return accepted


def summarize_recording(db_path: Path) -> dict[str, Any]:
    """The demo's summary, computed in SQL from the recorded file."""
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        requests = con.execute(
            "SELECT count(*) FROM requests WHERE method = ?", [METHOD]
        ).fetchall()[0][0]
        # The words of docs/counters.md: sampled = sent + dropped, sent = answered + errored.
        shadows = con.execute(
            """
            SELECT backend,
                   count(*) AS sampled,
                   count(*) FILTER (WHERE status <> 'DROPPED') AS sent,
                   count(*) FILTER (WHERE status = 'DROPPED') AS dropped,
                   count(*) FILTER (WHERE status NOT IN ('OK', 'DROPPED')) AS errored,
                   count(*) FILTER (WHERE status = 'OK') AS answered,
                   histogram(status) FILTER (WHERE status NOT IN ('OK', 'DROPPED')) AS why
            FROM calls WHERE role = 'shadow' GROUP BY backend ORDER BY backend
            """
        ).fetchall()
        latency = con.execute(
            """
            SELECT backend, role, count(*),
                   quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.99)
            FROM calls WHERE status = 'OK' AND method = ?
            GROUP BY backend, role ORDER BY role, backend
            """,
            [METHOD],
        ).fetchall()
        agreement = con.execute(
            """
            SELECT s.backend, count(*), avg(CASE WHEN p.label = s.label THEN 1.0 ELSE 0.0 END),
                   avg(abs(p.score - s.score))
            FROM calls p JOIN calls s USING (request_id)
            WHERE p.role = 'primary' AND s.role = 'shadow'
              AND p.status = 'OK' AND s.status = 'OK' AND p.label IS NOT NULL
            GROUP BY s.backend ORDER BY s.backend
            """
        ).fetchall()
    finally:
        con.close()
    return {
        "requests": requests,
        "shadows": [
            {"backend": b, "sampled": sampled, "sent": sent, "dropped": d, "errored": e,
             "answered": a, "errors": dict(sorted((why or {}).items()))}
            for b, sampled, sent, d, e, a, why in shadows
        ],
        "latency_ms": [
            {"backend": b, "role": r, "n": n, "p50": p50, "p99": p99}
            for b, r, n, p50, p99 in latency
        ],
        "agreement": [
            {"shadow": b, "pairs": n, "agreement": a, "mean_abs_diff": d}
            for b, n, a, d in agreement
        ],
    }


def _print_summary(console: Console, summary: dict[str, Any], db_path: Path) -> None:
    console.print(f"\n[bold]Recorded {summary['requests']} requests[/] in {db_path}")
    mirror = Table(title="Mirroring per shadow (sampled = sent + dropped; "
                         "sent = answered + errored)")
    for col in ("shadow", "sampled", "sent", "dropped", "errored", "answered", "errors by status"):
        mirror.add_column(col, justify="left" if col in ("shadow", "errors by status")
                          else "right")
    for row in summary["shadows"]:
        why = ", ".join(f"{status} {n}" for status, n in row["errors"].items())
        mirror.add_row(row["backend"], *(str(row[k]) for k in
                       ("sampled", "sent", "dropped", "errored", "answered")), why or "-")
    console.print(mirror)
    lat = Table(title="Latency per backend (successful calls)")
    for col in ("backend", "role", "calls", "p50 ms", "p99 ms"):
        lat.add_column(col, justify="left" if col in ("backend", "role") else "right")
    for row in summary["latency_ms"]:
        lat.add_row(row["backend"], row["role"], str(row["n"]), f"{row['p50']:.2f}",
                    f"{row['p99']:.2f}")
    console.print(lat)
    agree = Table(title="Primary vs shadow on the same requests")
    for col in ("shadow", "pairs", "decisions agree", "mean |score diff|"):
        agree.add_column(col, justify="left" if col == "shadow" else "right")
    for row in summary["agreement"]:
        agree.add_row(row["shadow"], str(row["pairs"]), f"{row['agreement']:.1%}",
                      f"{row['mean_abs_diff']:.4f}")
    console.print(agree)


def _analysis_report(console: Console, db_path: Path, out_dir: Path) -> Path:
    """The divergence report in the terminal, and as one self-contained HTML file."""
    from analysis import analyze_divergence, open_source
    from analysis.report import render

    con = open_source(db=str(db_path))
    try:
        report = analyze_divergence(con).to_dict()
    finally:
        con.close()
    console.print("\n[bold]Divergence report[/] (sidecar report divergence --db "
                  f"{db_path} --format table)")
    # Rendered at its own width; written as is so a narrow terminal does not re-wrap it.
    console.file.write(render(report, "divergence", "table", color=console.is_terminal))
    console.file.flush()
    html = out_dir / "divergence.html"
    html.write_text(render(report, "divergence", "html"), encoding="utf-8")
    console.print(f"HTML report with plots: {html}")
    from analysis.quality import analyze_quality

    con = open_source(db=str(db_path))
    try:
        quality = analyze_quality(con, metric="label", kind="binary")
    finally:
        con.close()
    console.print("\n[bold]Would the shadow have been better?[/] Model quality on the "
                  "reported labels (sidecar report quality --db ...)")
    console.file.write(render(quality.to_dict(), "quality", "table", color=console.is_terminal))
    console.file.flush()
    page = out_dir / "quality.html"
    page.write_text(render(quality.to_dict(), "quality", "html"), encoding="utf-8")
    console.print(f"HTML quality report: {page}")
    return html


async def run_demo(
    requests: int = 3000, concurrency: int = 16, out_dir: str = "demo-out",
    *, primary_fail_rate: float = 0.0,
) -> int:
    """Run the whole demo; returns the exit code (0 when every answer came back).
    ``primary_fail_rate`` injects UNAVAILABLE answers into the primary, to see what a
    failing run reports."""
    console = Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    db_path = out / "shadowcar.duckdb"
    for stale in (db_path, Path(f"{db_path}.wal")):
        stale.unlink(missing_ok=True)  # one demo run, one file

    primary_model, retrained = make_demo_models(N_FEATURES)
    started = time.perf_counter()
    servers = [
        await start_model_server(primary_model, fail_rate=primary_fail_rate, seed=3),
        await start_model_server(retrained, seed=1),
        await start_model_server(retrained, delay_ms=40, jitter_ms=35, fail_rate=0.15, seed=2),
    ]
    names = ("fraud-v7", "fraud-v8", "fraud-v9-flaky")
    targets = {name: s.target for name, s in zip(names, servers, strict=True)}
    console.print("[bold]Shadowcar demo[/]: models " + ", ".join(
        f"{n} on {t}" for n, t in targets.items()))
    payloads = [build_infer_request("demo", row, raw=bool(i % 2))
                for i, row in enumerate(_features(requests))]
    try:
        pace = await calibrate(targets["fraud-v7"], payloads, concurrency)
        console.print(pace.describe())
        sidecar = Sidecar(parse_config(demo_config(db_path, targets, pace), source="<demo>"))
        await sidecar.start()
        try:
            console.print(f"sidecar on 127.0.0.1:{sidecar.port}, admin on "
                          f"127.0.0.1:{sidecar.admin.port if sidecar.admin else '-'}")
            tally, limit = await send_traffic(sidecar.port, payloads, pace, console)
            if limit.lowest < pace.concurrency:
                console.print(f"slow calls: paced down to {limit.lowest} in flight at least "
                              "once")
            if sidecar.admin is not None:
                truth = make_demo_models(N_FEATURES, seed=7)[1]
                labelled = await _report_outcomes(sidecar.admin.port, requests, truth)
                console.print(f"{labelled} outcome labels reported through POST /v1/outcomes")
        finally:
            await sidecar.aclose()
    finally:
        for server in servers:
            await server.aclose()
    elapsed = time.perf_counter() - started
    console.print(f"{tally.describe()} in {elapsed:.1f}s; sidecar shut down cleanly",
                  style="red" if tally.failed else None, highlight=False, markup=False,
                  soft_wrap=True)
    summary = summarize_recording(db_path)
    _print_summary(console, summary, db_path)
    _analysis_report(console, db_path, out)
    if tally.failed:
        _explain_failures(console, tally)
    if summary["requests"] != requests:
        dropped = sum(sidecar.sink.stats.dropped.values())
        console.print(f"[bold red]{summary['requests']} of {requests} requests recorded[/] "
                      f"({dropped} records dropped by the sink: its buffer was full)")
    return 0 if tally.failed == 0 and summary["requests"] == requests else 1


def _explain_failures(console: Console, tally: Tally) -> None:
    """Repeat, last, why calls failed: the status counts and the first errors verbatim."""
    console.print(f"\n[bold red]{tally.failed} of {tally.ok + tally.failed} calls failed[/]",
                  highlight=False)
    for status, n in tally.statuses.most_common():
        console.print(f"  {status}: {n}", highlight=False)
    console.print("First errors:", highlight=False)
    for line in tally.first_errors:
        console.print(f"  {line}", highlight=False, markup=False)
