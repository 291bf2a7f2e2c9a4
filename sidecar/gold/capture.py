"""Capturing a gold set from recorded traffic: a sample stratified by the primary's label,
with the primary's answer as the expected one, written as JSON lines for a human to review.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from sidecar.gold.cases import GoldFileError, GoldSourceError

__all__ = ["CaptureResult", "allocate", "capture"]

_NO_LABEL = "(none)"
Stratify = Literal["label", "none"]


@dataclass(frozen=True)
class CaptureResult:
    written: int
    available: int
    strata: dict[str, int]
    path: str


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Equal shares per stratum, capped by what a stratum holds; what a small stratum cannot
    use goes to the larger ones. Rare labels are kept rather than drowned."""
    quotas: dict[str, int] = {}
    remaining = n
    ordered = sorted(sizes, key=lambda k: (sizes[k], k))
    for i, key in enumerate(ordered):
        share = remaining // (len(ordered) - i) if remaining > 0 else 0
        if i == len(ordered) - 1:
            share = remaining
        quotas[key] = min(sizes[key], share)
        remaining -= quotas[key]
    return quotas


def capture(source: str, route: str, out: str, *, n: int = 200, stratify: Stratify = "label",
            atol: float = 1e-6, rtol: float = 1e-3, seed: int = 0) -> CaptureResult:
    """Write up to ``n`` cases from a recorded source (DuckDB file or Parquet export)."""
    from analysis.load import AnalysisSourceError, open_source, primary_calls

    if n < 1:
        raise GoldFileError("--n must be at least 1")
    if not os.path.exists(source):
        raise GoldSourceError(f"--from {source!r}: no such file or directory")
    try:
        con = open_source(parquet=source) if os.path.isdir(source) else open_source(db=source)
    except AnalysisSourceError as exc:
        raise GoldSourceError(str(exc)) from exc
    try:
        cols = {str(r[0]) for r in con.execute("DESCRIBE requests").fetchall()}
        if "request_bytes" not in cols:
            raise GoldFileError(f"{source!r} has no request_bytes: capture needs traffic "
                                "recorded with storage.record_bytes: true")
        stratum = f"coalesce(c.label, '{_NO_LABEL}')" if stratify == "label" else "'all'"
        base = f"""
            SELECT q.request_id, q.method, q.request_bytes, q.ts::VARCHAR AS ts,
                   c.output, c.label, c.backend, c.backend_version,
                   {'c.response_bytes' if 'response_bytes' in _columns(con, 'calls')
                    else 'NULL::BLOB'} AS response_bytes,
                   {stratum} AS stratum,
                   row_number() OVER (PARTITION BY {stratum}
                       ORDER BY hash(q.request_id || ?), q.request_id) AS rk
            FROM requests q JOIN calls c ON c.request_id = q.request_id
            WHERE q.route = ? AND q.request_bytes IS NOT NULL AND c.status = 'OK'
              AND {primary_calls("c")}
        """
        sizes = {str(k): int(v) for k, v in con.execute(
            f"SELECT stratum, count(*) FROM ({base}) GROUP BY 1", [str(seed), route]
        ).fetchall()}
        if not sizes:
            raise GoldFileError(f"no answered primary calls with request bytes for route "
                                f"{route!r} in {source!r}")
        quotas = allocate(sizes, n)
        rows = con.execute(
            f"SELECT * EXCLUDE (rk) FROM ({base}) WHERE rk <= ? ORDER BY stratum, rk",
            [str(seed), route, max(quotas.values())],
        ).fetchall()
        names = [d[0] for d in con.description or []]
    finally:
        con.close()
    taken: dict[str, int] = {}
    lines: list[str] = []
    for values in rows:
        row = dict(zip(names, values, strict=True))
        key = str(row["stratum"])
        if taken.get(key, 0) >= quotas[key]:
            continue
        case = _case(row, atol, rtol)
        if case is None:
            continue
        taken[key] = taken.get(key, 0) + 1
        lines.append(json.dumps(case, sort_keys=False))
    tmp = f"{out}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + ("\n" if lines else ""))
    os.replace(tmp, out)
    return CaptureResult(len(lines), sum(sizes.values()), taken, out)


def _columns(con: Any, table: str) -> set[str]:
    return {str(r[0]) for r in con.execute(f"DESCRIBE {table}").fetchall()}


def _case(row: dict[str, Any], atol: float, rtol: float) -> dict[str, Any] | None:
    expected: dict[str, Any] = {}
    if row["output"] is not None:
        expected["output"] = [float(v) for v in row["output"]]
    if row["label"] is not None:
        expected["label"] = str(row["label"])
    if not expected and row["response_bytes"] is not None:
        expected["response_b64"] = base64.b64encode(bytes(row["response_bytes"])).decode()
    if not expected:
        return None  # nothing to compare (raw route recorded without bytes)
    return {
        "id": str(row["request_id"]),
        "method": str(row["method"]),
        "request_b64": base64.b64encode(bytes(row["request_bytes"])).decode(),
        "expected": expected,
        "atol": atol,
        "rtol": rtol,
        "meta": {"request_id": str(row["request_id"]), "ts": row["ts"],
                 "backend": row["backend"], "backend_version": row["backend_version"],
                 "stratum": str(row["stratum"]), "review": "pending"},
    }
