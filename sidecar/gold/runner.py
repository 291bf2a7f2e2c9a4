"""Running a gold set against a target: send every case, judge it, show a regression table,
and record the run in DuckDB (``calls`` rows with role ``gold`` plus ``gold_results``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from sidecar.backends import Backend
from sidecar.config import BackendConfig
from sidecar.gold.cases import CaseResult, GoldCase, judge
from sidecar.replay.codecs import build_codecs
from sidecar.replay.runner import new_run_id
from sidecar.sink import CallRecord, Decoding, migrate
from sidecar.sink.writer import write_batch

__all__ = ["GoldRun", "print_results", "record_run", "run_cases"]

ROLE = "gold"
_RESULTS_DDL = """
CREATE TABLE IF NOT EXISTS gold_results (
    run_id VARCHAR,
    gold_set VARCHAR,            -- the set's file
    case_id VARCHAR,
    verdict VARCHAR,             -- pass|regression|error
    max_abs_diff DOUBLE,
    detail VARCHAR,
    ts TIMESTAMP                 -- UTC, when the run ended
)
"""
_PREVIEW = 6


@dataclass(frozen=True)
class GoldRun:
    """A finished run: every case's result and the call rows it made."""

    run_id: str
    gold_set: str
    target: str
    results: tuple[CaseResult, ...]
    calls: tuple[CallRecord, ...]

    @property
    def counts(self) -> Counter[str]:
        return Counter(r.verdict for r in self.results)

    @property
    def failed(self) -> bool:
        return any(r.verdict != "pass" for r in self.results)


async def run_cases(
    cases: Sequence[GoldCase], target: str, *, gold_set: str, codec: str | None = None,
    backend_name: str = "gold-target", backend_version: str = "unknown",
    concurrency: int = 4, timeout_s: float = 5.0, run_id: str | None = None,
    model: str | None = None, model_version: str | None = None,
) -> GoldRun:
    """Send every case to ``target`` (at most ``concurrency`` at once) and judge the answers.
    ``codec`` decodes every answer; None: each case's own (capture writes the route's), else
    oip. A descriptor file named relative is looked for beside the gold set too; reflection
    asks the target. Raises CodecUnavailable when a codec cannot be built."""
    specs = {c.codec or "oip" for c in cases} if codec is None else {codec}
    codecs = await build_codecs(specs, source=gold_set, target=target, route="*",
                                timeout_s=timeout_s)
    backend = Backend(BackendConfig.model_validate(
        {"name": backend_name, "version": backend_version, "target": target, "model": model,
         "model_version": model_version}),
        max_message_bytes=1 << 30)
    decodings = {spec: Decoding(built, None, -1, False) for spec, built in codecs.items()}
    limit = asyncio.Semaphore(concurrency)
    run = run_id or new_run_id()

    async def one(case: GoldCase) -> tuple[CaseResult, CallRecord]:
        async with limit:
            outcome = await backend.call(
                case.method, case.request, timeout=timeout_s,
                metadata=(("x-request-id", f"gold-{run}-{case.id}"), ("x-gold-run", run)),
            )
        status = outcome.code.name
        spec = codec or case.codec or "oip"
        result = judge(case, status, outcome.response, outcome.details, codecs[spec])
        call = CallRecord(case.id, outcome.started, f"gold:{gold_set}", case.method,
                          backend.name, backend.version, ROLE, False, status,
                          outcome.latency_ms, len(case.request), outcome.response,
                          outcome.details, run, decodings[spec])
        return result, call

    try:
        done = await asyncio.gather(*(one(c) for c in cases))
    finally:
        await backend.aclose()
    return GoldRun(run, gold_set, target, tuple(r for r, _ in done), tuple(c for _, c in done))


def record_run(run: GoldRun, path: str) -> None:
    """Append the run to a DuckDB file (created with the recorded schema when new)."""
    con = duckdb.connect(path)
    try:
        migrate(con)
        con.execute(_RESULTS_DDL).fetchall()
        con.execute("BEGIN TRANSACTION").fetchall()
        write_batch(con, "calls", list(run.calls))
        results = pa.table({
            "run_id": pa.array([run.run_id] * len(run.results), pa.string()),
            "gold_set": pa.array([run.gold_set] * len(run.results), pa.string()),
            "case_id": pa.array([r.case.id for r in run.results], pa.string()),
            "verdict": pa.array([r.verdict for r in run.results], pa.string()),
            "max_abs_diff": pa.array([r.max_abs_diff for r in run.results], pa.float64()),
            "detail": pa.array([r.detail or None for r in run.results], pa.string()),
            "ts": pa.array([int(time.time() * 1e6)] * len(run.results), pa.timestamp("us")),
        })
        con.register("_gold_results", results)
        try:
            con.execute("INSERT INTO gold_results BY NAME SELECT * FROM _gold_results").fetchall()
        finally:
            con.unregister("_gold_results")
        con.execute("COMMIT").fetchall()
    finally:
        con.close()


def _preview(values: Sequence[float] | None, label: str | None) -> str:
    parts = []
    if values is not None:
        shown = ", ".join(f"{v:.6g}" for v in values[:_PREVIEW])
        parts.append(f"[{shown}{', ...' if len(values) > _PREVIEW else ''}]")
    if label is not None:
        parts.append(f"label {label}")
    return " ".join(parts) or "-"


def print_results(run: GoldRun, console: Console, *, show_passes: int = 10) -> None:
    """A table of the regressions (and the first passes), then one summary line."""
    style = {"pass": "green", "regression": "red", "error": "magenta"}
    table = Table(title=f"gold set {run.gold_set} against {run.target} (run {run.run_id})")
    for column in ("case", "verdict", "expected", "actual", "max |diff|", "detail"):
        table.add_column(column, overflow="fold")
    failing = [r for r in run.results if r.verdict != "pass"]
    passing = [r for r in run.results if r.verdict == "pass"][:show_passes]
    for r in failing + passing:
        exp = r.case.expected
        diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.3g}"
        table.add_row(r.case.id, f"[{style[r.verdict]}]{r.verdict}[/]",
                      _preview(exp.output, exp.label), _preview(r.output, r.label), diff,
                      r.detail or "")
    console.print(table)
    counts = run.counts
    hidden = counts["pass"] - len(passing)
    console.print(
        f"{len(run.results)} cases: {counts['pass']} passed, {counts['regression']} "
        f"regressions, {counts['error']} errors"
        + (f" ({hidden} passing cases not shown)" if hidden > 0 else "")
    )
