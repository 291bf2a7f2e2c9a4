"""Operational figures per route and backend: latency quantiles, errors, timeouts, mirror drops.

One grouped SQL pass over ``calls`` counts; the latency quantiles are numpy's on each group's
sorted latencies while they fit the memory budget (DuckDB's ``quantile_cont`` of 13 points
cost three times the CPU and holds a group's every value), else order statistics picked by a
window sort that spills; rates get 95% Wilson intervals.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np

from analysis.distribution import lerp, quantile_plan, sorted_quantiles, wilson_interval
from analysis.stats import finite_or_none

__all__ = [
    "CDF_POINTS",
    "Operations",
    "backend_operations",
    "error_summary",
    "group_quantiles",
    "latency_cdfs",
    "latency_summary",
    "ordered_quantiles",
]

#: Probabilities at which latency CDFs are sampled for plots.
CDF_POINTS = [0.01, 0.05, *(round(0.1 * k, 1) for k in range(1, 10)), 0.95, 0.99]

#: Figures keyed by (route, backend, side) with side ``primary`` or ``shadow``.
Operations = dict[tuple[str, str | None, str], dict[str, Any]]

#: One quantile pass per group serves both the summary quantiles and the plotted CDF
#: (DuckDB's cost grows with the number of points, hence a coarse curve).
_EMPTY_LATENCY = {"n": 0, "p50": None, "p95": None, "p99": None}




def backend_operations(con: duckdb.DuckDBPyConnection, where: str, primary_sql: str, *,
                       budget_bytes: float = 0.0) -> Operations:
    """Latency quantiles, errors, timeouts and drops per route, backend and side.

    An error is any status other than ``OK`` and ``DROPPED``; a timeout is
    ``DEADLINE_EXCEEDED``; dropped mirror calls are counted apart and left out of the rates.
    The latency quantiles and the streams' median time to first message (numpy's
    ``linear`` method) are taken in numpy, one group's values at a time, when the largest
    group's fit ``budget_bytes``, else from the order statistics of a spilling sort in
    DuckDB (:func:`ordered_quantiles`): no holistic aggregate holds a group's values.
    """
    attempted = "status IS DISTINCT FROM 'DROPPED'"
    columns = {str(r[0]) for r in con.execute(
        "SELECT column_name FROM (DESCRIBE calls)").fetchall()}
    # Streaming calls record their time to first message: compared like latency.
    ttfm = "first_message_ms" if "first_message_ms" in columns else "NULL::DOUBLE"
    side = "CASE WHEN role IN ('shadow', 'replay') THEN 'shadow' ELSE 'primary' END"
    selected = f"(role IN ('shadow', 'replay') OR {primary_sql}) AND {where}"
    counts = f"""
        SELECT route, backend, {side} AS side,
            count(*) FILTER (WHERE {attempted}) AS attempts,
            count(*) FILTER (WHERE status NOT IN ('OK', 'DROPPED')) AS errors,
            count(*) FILTER (WHERE status = 'DEADLINE_EXCEEDED') AS timeouts,
            count(*) FILTER (WHERE status = 'DROPPED') AS dropped,
            count(latency_ms) FILTER (WHERE {attempted}) AS timed,
            count({ttfm}) AS streamed
        FROM calls WHERE {selected} GROUP BY ALL
    """
    rows = con.execute(counts).fetchall()
    keys = ["route", "backend", "side"]
    quantiles = group_quantiles(
        con, f"SELECT route, backend, {side} AS side, latency_ms AS v FROM calls "
        f"WHERE {selected} AND {attempted}", keys,
        {(r[0], r[1], r[2]): int(r[7]) for r in rows}, CDF_POINTS, budget_bytes)
    medians = group_quantiles(
        con, f"SELECT route, backend, {side} AS side, {ttfm} AS v FROM calls "
        f"WHERE {selected}", keys, {(r[0], r[1], r[2]): int(r[8]) for r in rows}, [0.5],
        budget_bytes)
    out: Operations = {}
    for route, backend, side_name, attempts, errors, timeouts, dropped, _, _ in rows:
        n = int(attempts)
        q = quantiles.get((route, backend, side_name))
        median = medians.get((route, backend, side_name))
        ttfm_p50 = median[0] if median else None
        out[(route, backend, side_name)] = {
            "latency": {
                "n": n,
                "p50": finite_or_none(q[CDF_POINTS.index(0.5)]) if q else None,
                "p95": finite_or_none(q[CDF_POINTS.index(0.95)]) if q else None,
                "p99": finite_or_none(q[CDF_POINTS.index(0.99)]) if q else None,
                "first_message_p50": finite_or_none(ttfm_p50) if ttfm_p50 is not None else None,
            },
            "errors": {
                "n": n,
                "errors": int(errors),
                "error_rate": int(errors) / n if n else None,
                "error_rate_ci": wilson_interval(int(errors), n),
                "timeouts": int(timeouts),
                "timeout_rate": int(timeouts) / n if n else None,
                "timeout_rate_ci": wilson_interval(int(timeouts), n),
                "dropped": int(dropped),
            },
            "cdf": {"p": CDF_POINTS, "x": [finite_or_none(x) for x in q]} if q else None,
        }
    return out


def ordered_quantiles(
    con: duckdb.DuckDBPyConnection, select: str, keys: list[str],
    sizes: dict[tuple[Any, ...], int], probs: list[float],
) -> dict[tuple[Any, ...], list[float] | None]:
    """Per group of ``keys`` (``sizes``: the group's count of non-NULL ``v``): numpy's linear
    quantiles of ``v`` in the rows of ``select``, read at the order statistics a sort picks.

    For groups too large for memory: DuckDB's ``quantile_cont`` holds a group's every value
    (a 100M-call backend needed 6 GB), a window sort spills; only the rows numpy's
    interpolation reads come back."""
    plans, positions = {}, set()
    for key, n in sizes.items():
        if n:
            plans[key] = quantile_plan(n, probs)
            positions |= {i for lo, hi, _ in plans[key] for i in (lo, hi)}
    if not plans:
        return {}
    by = ", ".join(keys)
    found = {(tuple(r[:-2]), int(r[-2])): float(r[-1]) for r in con.execute(f"""
        SELECT {by}, rn, v FROM (
            SELECT {by}, v, row_number() OVER (PARTITION BY {by} ORDER BY v) - 1 AS rn
            FROM ({select}) WHERE v IS NOT NULL)
        WHERE rn IN ({', '.join(str(i) for i in sorted(positions))})""").fetchall()}
    return {key: [lerp(found[(key, lo)], found[(key, hi)], w) for lo, hi, w in plan]
            for key, plan in plans.items()}


def group_quantiles(
    con: duckdb.DuckDBPyConnection, select: str, keys: list[str],
    sizes: dict[tuple[Any, ...], int], probs: list[float], budget_bytes: float,
) -> dict[tuple[Any, ...], list[float] | None]:
    """Per group of ``keys``: numpy's linear quantiles of the non-NULL ``v`` of ``select``
    (``sizes``: each group's count of them). In numpy, one group's values sorted at a time,
    while the largest group's fit ``budget_bytes``; else :func:`ordered_quantiles`."""
    sizes = {key: n for key, n in sizes.items() if n}
    if not sizes:
        return {}
    if max(sizes.values()) * 8 > budget_bytes:
        return ordered_quantiles(con, select, keys, sizes, probs)
    match = " AND ".join(f"{k} IS NOT DISTINCT FROM ?" for k in keys)
    found: dict[tuple[Any, ...], list[float] | None] = {}
    for key in sizes:
        fetched = con.execute(f"SELECT v FROM ({select}) WHERE v IS NOT NULL AND {match}",
                              list(key)).fetchnumpy()
        values = np.asarray(fetched.pop("v"), dtype=np.float64)
        values.sort()  # in place: the group's column is the only copy held
        found[key] = sorted_quantiles(values, probs) if values.size else None
    return found


def latency_summary(
    ops: Operations, route: str, primary: str | None, shadow: str, ratio: Any
) -> dict[str, Any]:
    """Both sides' latency quantiles and the median paired ratio shadow/primary."""
    return {
        "primary": ops.get((route, primary, "primary"), {}).get("latency", _EMPTY_LATENCY),
        "shadow": ops.get((route, shadow, "shadow"), {}).get("latency", _EMPTY_LATENCY),
        "ratio_median": finite_or_none(ratio),
    }


def error_summary(
    ops: Operations, route: str, primary: str | None, shadow: str
) -> dict[str, Any]:
    """Both sides' error, timeout and drop figures (``None`` for a side without calls)."""
    return {
        "primary": ops.get((route, primary, "primary"), {}).get("errors"),
        "shadow": ops.get((route, shadow, "shadow"), {}).get("errors"),
    }


def latency_cdfs(
    ops: Operations, route: str, primary: str | None, shadow: str
) -> dict[str, Any]:
    """Latency quantile curves of both sides, for plots."""
    return {
        "primary": ops.get((route, primary, "primary"), {}).get("cdf"),
        "shadow": ops.get((route, shadow, "shadow"), {}).get("cdf"),
    }
