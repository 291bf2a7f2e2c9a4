"""Capturing a gold set from recorded traffic: a sample stratified by the primary's label,
with the primary's answer as the expected one, written as JSON lines for a human to review.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import os
from dataclasses import dataclass
from typing import Any, Literal

from sidecar.codecs import DESCRIPTOR_PREFIX, REFLECTION
from sidecar.codecs.fieldpath import extract, leaf_paths
from sidecar.gold.cases import GoldFileError, GoldSourceError
from sidecar.replay.codecs import CodecUnavailable, resolve_descriptor

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
            atol: float = 1e-6, rtol: float = 1e-3, seed: int = 0,
            tolerances: dict[str, dict[str, float]] | None = None) -> CaptureResult:
    """Write up to ``n`` cases from a recorded source (DuckDB file or Parquet export).

    A descriptor or reflection route's cases expect its decoded fields (``compare_fields``,
    else every field but ``ignore_fields``) and name the route's codec; ``tolerances``
    ({path: {atol, rtol}}) is written into each case."""
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
                   {'c.response_json' if 'response_json' in _columns(con, 'calls')
                    else 'NULL::VARCHAR'} AS response_json,
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
        settings = RouteSettings.read(con, route, source)
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
        case = _case(row, atol, rtol, settings, tolerances)
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
    import duckdb

    try:
        return {str(r[0]) for r in con.execute(f"DESCRIBE {table}").fetchall()}
    except duckdb.Error:  # a source without the table
        return set()


@dataclass(frozen=True)
class RouteSettings:
    """What capture needs of the route's newest recorded config."""

    codec: str
    compare_fields: tuple[str, ...]
    ignore_fields: tuple[str, ...]

    @property
    def json(self) -> bool:
        return self.codec == REFLECTION or self.codec.startswith(DESCRIPTOR_PREFIX)

    @classmethod
    def read(cls, con: Any, route: str, source: str) -> RouteSettings:
        entry: dict[str, Any] = {}
        if "config_json" in _columns(con, "configs"):
            for (text,) in con.execute("SELECT config_json FROM configs ORDER BY ts DESC NULLS "
                                       "LAST").fetchall():
                found = [r for r in (json.loads(text or "{}").get("routes") or [])
                         if isinstance(r, dict) and r.get("match") == route]
                if found:
                    entry = found[0]
                    break
        kind = entry.get("streaming") or "unary"
        if kind != "unary":
            raise GoldFileError(f"route {route!r} streams ({kind}): a gold case is one request "
                                "and one answer; replay compares streams (docs/streams.md)")
        codec = str(entry.get("codec") or "raw")
        if codec.startswith(DESCRIPTOR_PREFIX):  # the file as found now, for gold run
            try:
                codec = DESCRIPTOR_PREFIX + os.path.abspath(resolve_descriptor(codec, source))
            except CodecUnavailable as exc:
                raise GoldFileError(str(exc)) from exc
        return cls(codec, tuple(entry.get("compare_fields") or ()),
                   tuple(entry.get("ignore_fields") or ()))

    def fields(self, doc: Any) -> dict[str, Any]:
        """The expected fields of a decoded answer."""
        paths = self.compare_fields or tuple(
            p for p in leaf_paths(doc)
            if not any(fnmatch.fnmatchcase(p, g) for g in self.ignore_fields))
        return {p: extract(doc, p) for p in paths}


def _case(row: dict[str, Any], atol: float, rtol: float, settings: RouteSettings,
          tolerances: dict[str, dict[str, float]] | None) -> dict[str, Any] | None:
    expected: dict[str, Any] = {}
    if settings.json:
        if row["response_json"] is None:
            return None  # undecoded (or too big to record decoded): nothing to compare
        expected["fields"] = settings.fields(json.loads(row["response_json"]))
    elif row["output"] is not None:
        expected["output"] = [float(v) for v in row["output"]]
    if row["label"] is not None and not settings.json:
        expected["label"] = str(row["label"])
    if not expected and row["response_bytes"] is not None:
        expected["response_b64"] = base64.b64encode(bytes(row["response_bytes"])).decode()
    if not expected:
        return None  # nothing to compare (raw route recorded without bytes)
    extra: dict[str, Any] = {"codec": settings.codec} if settings.json else {}
    if tolerances:
        extra["tolerances"] = tolerances
    return {
        "id": str(row["request_id"]),
        "method": str(row["method"]),
        "request_b64": base64.b64encode(bytes(row["request_bytes"])).decode(),
        "expected": expected,
        "atol": atol,
        "rtol": rtol,
        **extra,
        "meta": {"request_id": str(row["request_id"]), "ts": row["ts"],
                 "backend": row["backend"], "backend_version": row["backend_version"],
                 "stratum": str(row["stratum"]), "review": "pending"},
    }
