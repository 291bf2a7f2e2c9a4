"""Operational figures per route and backend: latency quantiles, errors, timeouts, mirror drops.

One grouped SQL pass over ``calls``; rates get 95% Wilson intervals.
"""

from __future__ import annotations

from typing import Any

import duckdb

from analysis.distribution import wilson_interval
from analysis.stats import finite_or_none

__all__ = [
    "CDF_POINTS",
    "Operations",
    "backend_operations",
    "error_summary",
    "latency_cdfs",
    "latency_summary",
]

#: Probabilities at which latency CDFs are sampled for plots.
CDF_POINTS = [0.01, 0.05, *(round(0.1 * k, 1) for k in range(1, 10)), 0.95, 0.99]

#: Figures keyed by (route, backend, side) with side ``primary`` or ``shadow``.
Operations = dict[tuple[str, str | None, str], dict[str, Any]]

#: One quantile pass per group serves both the summary quantiles and the plotted CDF
#: (DuckDB's cost grows with the number of points, hence a coarse curve).
_EMPTY_LATENCY = {"n": 0, "p50": None, "p95": None, "p99": None}




def backend_operations(con: duckdb.DuckDBPyConnection, where: str, primary_sql: str) -> Operations:
    """Latency quantiles, errors, timeouts and drops per route, backend and side.

    An error is any status other than ``OK`` and ``DROPPED``; a timeout is
    ``DEADLINE_EXCEEDED``; dropped mirror calls are counted apart and left out of the rates.
    """
    attempted = "status IS DISTINCT FROM 'DROPPED'"
    columns = {str(r[0]) for r in con.execute(
        "SELECT column_name FROM (DESCRIBE calls)").fetchall()}
    # Streaming calls record their time to first message: compared like latency.
    ttfm = ("quantile_cont(first_message_ms, 0.5) FILTER (WHERE first_message_ms IS NOT NULL)"
            if "first_message_ms" in columns else "NULL")
    sql = f"""
        SELECT route, backend,
            CASE WHEN role IN ('shadow', 'replay') THEN 'shadow' ELSE 'primary' END AS side,
            count(*) FILTER (WHERE {attempted}) AS attempts,
            count(*) FILTER (WHERE status NOT IN ('OK', 'DROPPED')) AS errors,
            count(*) FILTER (WHERE status = 'DEADLINE_EXCEEDED') AS timeouts,
            count(*) FILTER (WHERE status = 'DROPPED') AS dropped,
            quantile_cont(latency_ms, {CDF_POINTS}) FILTER (WHERE {attempted}) AS q,
            {ttfm} AS ttfm
        FROM calls WHERE (role IN ('shadow', 'replay') OR {primary_sql}) AND {where} GROUP BY ALL
    """
    out: Operations = {}
    for route, backend, side, attempts, errors, timeouts, dropped, q, ttfm_p50 in con.execute(
        sql
    ).fetchall():
        n = int(attempts)
        out[(route, backend, side)] = {
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
