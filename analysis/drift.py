"""Input drift: each request feature's current window compared with a reference window.

Features come from ``requests.inputs`` (decoded tensors), unnested and counted in DuckDB.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import duckdb
import numpy as np
from scipy import stats

from analysis.distribution import compare_distributions
from analysis.load import parse_time, relations, sql_quote, sql_timestamp, time_filter
from analysis.report.json import jsonable

__all__ = ["CHI2_ALPHA", "PSI_ALERT", "SCHEMA", "DriftReport", "FeatureDrift", "analyze_drift"]

SCHEMA = "shadowcar.report.drift/1"
#: PSI at or above this flags a numeric feature (the customary "significant shift" level).
PSI_ALERT = 0.2
#: A chi-square p-value below this flags a categorical feature.
CHI2_ALPHA = 0.001
#: A null rate this much above the reference's flags the feature.
NULL_RATE_ALERT = 0.01
_MAX_CATEGORIES = 50
_MAX_UNSEEN_LISTED = 20

Window = tuple[str | datetime | None, str | datetime | None]


@dataclass(frozen=True)
class FeatureDrift:
    """One feature (``tensor`` or ``tensor[i]``) of one route, reference vs current."""

    route: str
    feature: str
    kind: Literal["numeric", "categorical"]
    n_reference: int
    n_current: int
    null_rate_reference: float | None
    null_rate_current: float | None
    psi: float | None = None
    ks_stat: float | None = None
    ks_p: float | None = None
    chi2: float | None = None
    chi2_p: float | None = None
    dof: int | None = None
    range: tuple[float, float] | None = None
    out_of_range_reference: float | None = None
    out_of_range_current: float | None = None
    unseen_categories: tuple[str, ...] = ()
    unseen_share: float | None = None
    flags: tuple[str, ...] = ()
    message: str | None = None


@dataclass(frozen=True)
class DriftReport:
    """Every feature's drift between two windows."""

    reference: dict[str, Any]
    current: dict[str, Any]
    features: tuple[FeatureDrift, ...]
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form, schema ``shadowcar.report.drift/1``."""
        out: dict[str, Any] = jsonable({
            "schema": SCHEMA,
            "reference": self.reference,
            "current": self.current,
            "features": [
                {k: getattr(f, k) for k in FeatureDrift.__dataclass_fields__}
                for f in self.features
            ],
            "message": self.message,
        })
        return out


def _default_windows(
    con: duckdb.DuckDBPyConnection, route_sql: str, span_sql: str
) -> tuple[tuple[datetime, datetime], tuple[datetime, datetime]] | None:
    row = con.execute(
        "SELECT min(ts), max(ts) FROM requests "
        f"WHERE inputs IS NOT NULL AND {route_sql} AND {span_sql}"
    ).fetchall()[0]
    if row[0] is None:
        return None
    start, end = row[0], row[1]
    middle = start + (end - start) / 2
    return (start, middle), (middle, end + timedelta(microseconds=1))


def analyze_drift(
    con: duckdb.DuckDBPyConnection,
    *,
    reference: Window | None = None,
    current: Window | None = None,
    route: str | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
) -> DriftReport:
    """Compare each input feature's ``current`` window with its ``reference`` window.

    Windows are ``(since, until)``, half-open; without them the reference is the first half
    of the recorded time span (bounded by ``since``/``until`` when given) and the current
    window the second half. ``ranges`` declares each feature's valid ``[low, high]``.
    """
    ranges = dict(ranges or {})
    tables = relations(con)
    if "requests" not in tables:
        return DriftReport({}, {}, (), "the source has no requests table")
    route_sql = "TRUE" if route is None else f"route = {sql_quote(route)}"
    defaults = _default_windows(con, route_sql, time_filter(since, until))
    if defaults is None:
        return DriftReport({}, {}, (), "no request has decoded inputs")
    ref = _window(reference, defaults[0])
    cur = _window(current, defaults[1])
    table = f"_sc_drift_{uuid.uuid4().hex[:12]}"
    try:
        n_requests = _extract(con, table, route_sql, ref, cur)
        features = _features(con, table, n_requests, ranges)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    windows = [{"since": w[0], "until": w[1], "n": n_requests.get(k, {})}
               for k, w in (("reference", ref), ("current", cur))]
    message = None if features else "no feature values in the two windows"
    return DriftReport(windows[0], windows[1], tuple(features), message)


def _window(given: Window | None, default: tuple[datetime, datetime]) -> tuple[datetime, datetime]:
    if given is None:
        return default
    start, end = parse_time(given[0]), parse_time(given[1])
    return (start or datetime.min, end or datetime.max)


def _extract(
    con: duckdb.DuckDBPyConnection, table: str, route_sql: str,
    ref: tuple[datetime, datetime], cur: tuple[datetime, datetime],
) -> dict[str, dict[str, int]]:
    """Unnest every tensor element into ``table`` (route, feature, kind, win, v, c)."""
    windows = (f"(VALUES ('reference', {sql_timestamp(ref[0])}, {sql_timestamp(ref[1])}), "
               f"('current', {sql_timestamp(cur[0])}, {sql_timestamp(cur[1])})) w(win, lo, hi)")
    con.execute(f"""
        CREATE TEMP TABLE {table} AS
        WITH req AS (
            SELECT r.route, w.win, r.inputs FROM requests r JOIN {windows}
              ON r.ts >= w.lo AND r.ts < w.hi
            WHERE r.inputs IS NOT NULL AND {route_sql}
        ), tens AS (SELECT route, win, unnest(inputs) AS t FROM req),
        num AS (
            SELECT route, win, t.name AS tname, len(t.data) AS width,
                   unnest(t.data) AS v, unnest(range(len(t.data))) AS i
            FROM tens WHERE len(t.data) > 0
        ), cat AS (
            SELECT route, win, t.name AS tname, len(t.text) AS width,
                   unnest(t.text) AS c, unnest(range(len(t.text))) AS i
            FROM tens WHERE len(t.text) > 0 AND (t.data IS NULL OR len(t.data) = 0)
        )
        SELECT route, CASE WHEN width = 1 THEN tname ELSE tname || '[' || i || ']' END AS feature,
               'numeric' AS kind, win, v, NULL::VARCHAR AS c FROM num
        UNION ALL
        SELECT route, CASE WHEN width = 1 THEN tname ELSE tname || '[' || i || ']' END,
               'categorical', win, NULL::DOUBLE, c FROM cat
    """)
    counts: dict[str, dict[str, int]] = {}
    rows = con.execute(f"""
        SELECT w.win, r.route, count(*) FROM requests r JOIN {windows}
          ON r.ts >= w.lo AND r.ts < w.hi
        WHERE r.inputs IS NOT NULL AND {route_sql} GROUP BY ALL
    """).fetchall()
    for win, rt, n in rows:
        counts.setdefault(str(win), {})[str(rt)] = int(n)
    return counts


def _features(
    con: duckdb.DuckDBPyConnection, table: str, n_requests: dict[str, dict[str, int]],
    ranges: dict[str, tuple[float, float]],
) -> list[FeatureDrift]:
    range_rows = ", ".join(f"({sql_quote(k)}, {float(lo)!r}, {float(hi)!r})"
                           for k, (lo, hi) in ranges.items())
    range_join = (f"LEFT JOIN (VALUES {range_rows}) rg(feature, lo, hi) USING (feature)"
                  if ranges else "LEFT JOIN (SELECT NULL::VARCHAR feature, NULL::DOUBLE lo, "
                  "NULL::DOUBLE hi) rg USING (feature)")
    summary = con.execute(f"""
        SELECT route, feature, kind, win,
               count(*) FILTER (WHERE kind = 'numeric' AND isfinite(v) OR c IS NOT NULL) AS valid,
               count(*) FILTER (WHERE isfinite(v) AND (v < rg.lo OR v > rg.hi)) AS outside
        FROM {table} {range_join} GROUP BY ALL ORDER BY route, feature, win
    """).fetchall()
    grouped: dict[tuple[str, str, str], dict[str, tuple[int, int]]] = {}
    for rt, feature, kind, win, valid, outside in summary:
        grouped.setdefault((rt, feature, kind), {})[win] = (int(valid), int(outside))
    numeric = _numeric_values(con, table)
    categories = _category_counts(con, table)
    out: list[FeatureDrift] = []
    for (rt, feature, kind), by_win in grouped.items():
        ref_valid, ref_out = by_win.get("reference", (0, 0))
        cur_valid, cur_out = by_win.get("current", (0, 0))
        ref_total = n_requests.get("reference", {}).get(rt, 0)
        cur_total = n_requests.get("current", {}).get(rt, 0)
        result = FeatureDrift(
            route=rt, feature=feature, kind="numeric" if kind == "numeric" else "categorical",
            n_reference=ref_valid, n_current=cur_valid,
            null_rate_reference=_rate(ref_total - ref_valid, ref_total),
            null_rate_current=_rate(cur_total - cur_valid, cur_total),
        )
        if feature in ranges and kind == "numeric":
            lo, hi = ranges[feature]
            result = replace(result, range=(float(lo), float(hi)),
                             out_of_range_reference=_rate(ref_out, ref_valid),
                             out_of_range_current=_rate(cur_out, cur_valid))
        if kind == "numeric":
            ref_values, cur_values = numeric.get((rt, feature), (np.empty(0), np.empty(0)))
            result = _numeric_shift(result, ref_values, cur_values)
        else:
            result = _categorical_shift(result, categories.get((rt, feature), {}))
        out.append(replace(result, flags=_flags(result)))
    return out


def _rate(part: int, whole: int) -> float | None:
    return max(0.0, part / whole) if whole > 0 else None


def _numeric_values(
    con: duckdb.DuckDBPyConnection, table: str
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Finite values per feature and window, fetched as columns and split at group bounds."""
    keys = con.execute(f"""
        SELECT DISTINCT route, feature FROM {table} WHERE kind = 'numeric' ORDER BY ALL
    """).fetchall()
    if not keys:
        return {}
    cols = con.execute(f"""
        SELECT g.gid * 2 + (t.win = 'current')::INT AS part, t.v
        FROM {table} t JOIN (SELECT route, feature, row_number() OVER (ORDER BY route, feature) - 1
                             AS gid FROM (SELECT DISTINCT route, feature FROM {table}
                                          WHERE kind = 'numeric')) g USING (route, feature)
        WHERE t.kind = 'numeric' AND isfinite(t.v) ORDER BY part
    """).fetchnumpy()
    parts = np.asarray(cols["part"], dtype=np.int64)
    values = np.asarray(cols["v"], dtype=np.float64)
    bounds = np.searchsorted(parts, np.arange(2 * len(keys) + 1), side="left")
    return {
        (str(rt), str(ft)): (values[bounds[2 * i]:bounds[2 * i + 1]],
                             values[bounds[2 * i + 1]:bounds[2 * i + 2]])
        for i, (rt, ft) in enumerate(keys)
    }


def _numeric_shift(result: FeatureDrift, ref: np.ndarray, cur: np.ndarray) -> FeatureDrift:
    if ref.size == 0 or cur.size == 0:
        side = "reference" if ref.size == 0 else "current"
        return replace(result, message=f"no finite values in the {side} window")
    shift = compare_distributions(ref, cur)
    return replace(result, psi=shift.psi, ks_stat=shift.ks_stat, ks_p=shift.ks_p)


def _category_counts(
    con: duckdb.DuckDBPyConnection, table: str
) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
    rows = con.execute(f"""
        SELECT route, feature, c, count(*) FILTER (WHERE win = 'reference'),
               count(*) FILTER (WHERE win = 'current')
        FROM {table} WHERE kind = 'categorical' AND c IS NOT NULL GROUP BY ALL
    """).fetchall()
    out: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
    for rt, feature, cat, n_ref, n_cur in rows:
        out.setdefault((str(rt), str(feature)), {})[str(cat)] = (int(n_ref), int(n_cur))
    return out


def _categorical_shift(result: FeatureDrift, counts: dict[str, tuple[int, int]]) -> FeatureDrift:
    if not counts:
        return replace(result, message="no category values")
    ordered = sorted(counts.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))
    unseen = [name for name, (n_ref, n_cur) in ordered if n_ref == 0 and n_cur > 0]
    cur_total = sum(n_cur for _, n_cur in counts.values())
    unseen_share = (sum(counts[name][1] for name in unseen) / cur_total) if cur_total else None
    result = replace(result, unseen_categories=tuple(unseen[:_MAX_UNSEEN_LISTED]),
                     unseen_share=unseen_share)
    table = np.array([c for _, c in ordered], dtype=np.int64).T
    if table.shape[1] > _MAX_CATEGORIES:  # fold the rare tail so expected counts stay usable
        tail = table[:, _MAX_CATEGORIES - 1:].sum(axis=1, keepdims=True)
        table = np.hstack([table[:, : _MAX_CATEGORIES - 1], tail])
    if table[0].sum() == 0 or table[1].sum() == 0:
        side = "reference" if table[0].sum() == 0 else "current"
        return replace(result, message=f"no category values in the {side} window")
    if table.shape[1] < 2:
        return replace(result, message="chi-square needs at least two categories")
    chi2, p, dof, _ = stats.chi2_contingency(table)
    return replace(result, chi2=float(chi2), chi2_p=float(p), dof=int(dof))


def _flags(f: FeatureDrift) -> tuple[str, ...]:
    flags: list[str] = []
    if f.psi is not None and f.psi >= PSI_ALERT:
        flags.append("psi")
    if f.chi2_p is not None and f.chi2_p < CHI2_ALPHA:
        flags.append("chi2")
    if f.out_of_range_current:
        flags.append("out_of_range")
    if f.unseen_categories:
        flags.append("unseen_categories")
    if (f.null_rate_current is not None and f.null_rate_reference is not None
            and f.null_rate_current > f.null_rate_reference + NULL_RATE_ALERT):
        flags.append("null_rate")
    return tuple(flags)
