"""Canary readout: per route and step, the stable backend against the candidate.

A canary moves units to the candidate as its share grows, so it is not one experiment:
each step is read on its own, every unit in the arm of its first exposure within the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import duckdb

from analysis.engine import memory_limit_bytes
from analysis.exposure import add_pass_rows, metric_shifts, unit_passes, unit_share
from analysis.load import (
    parse_time,
    relation_columns,
    relations,
    sql_quote,
    sql_timestamp,
    time_filter,
    version_scope,
)
from analysis.noise_floor import newest_route_configs
from analysis.operations import group_quantiles
from analysis.report.json import jsonable
from analysis.significance import DEFAULT_ALPHA, Comparison, ratio_test, welch_test
from analysis.stats import PairStats, SampleStats

__all__ = ["METHOD", "CanaryReport", "CanaryRoute", "CanaryStep", "analyze_canaries"]

Arm = Literal["stable", "candidate"]

#: How the readout is made, stated in every report that carries it.
METHOD = (
    "per canary step (the span between recorded canary state changes), each unit is counted "
    "in the arm of its first exposure within the step, also for its later requests and "
    "outcomes (intention to treat); error rate (status other than OK) and mean latency are "
    "ratio metrics over the units' requests (delta method, normal interval); outcomes count "
    "from the unit's first exposure in the step to the step's end (Welch); effects are "
    "candidate - stable, rel_effect over the stable figure"
)
_FAR = "TIMESTAMP '9999-12-31'"
_VARIANT_ARM = {"stable": "stable", "canary": "candidate"}


@dataclass(frozen=True)
class CanaryResult:
    """One metric of one step: candidate against stable."""

    metric: str
    kind: Literal["ratio", "mean"]
    comparison: Comparison

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "kind": self.kind, **self.comparison.to_dict()}


@dataclass(frozen=True)
class CanaryStep:
    """One step of a route's canary: units, requests and results per arm."""

    index: int | None
    share: float | None
    state: str | None
    since: datetime | None
    until: datetime | None
    units: dict[str, int]
    requests: dict[str, int]
    switched_units: int
    latency_ms: dict[str, dict[str, float | None]]
    results: tuple[CanaryResult, ...]
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in CanaryStep.__dataclass_fields__ if k != "results"}
        out["results"] = [r.to_dict() for r in self.results]
        result: dict[str, Any] = jsonable(out)
        return result


@dataclass(frozen=True)
class CanaryRoute:
    """A route's canary, step by step."""

    route: str
    stable: str | None
    candidate: str | None
    steps: tuple[CanaryStep, ...]
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"route": self.route, "stable": self.stable, "candidate": self.candidate,
                "steps": [s.to_dict() for s in self.steps], "message": self.message}


@dataclass(frozen=True)
class CanaryReport:
    """Every recorded canary; ``notes`` say how the readout is made."""

    routes: tuple[CanaryRoute, ...]
    notes: tuple[str, ...] = (METHOD,)
    versions: dict[str, Any] = field(default_factory=dict)
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"method": METHOD, "notes": list(self.notes), "versions": self.versions,
                "routes": [r.to_dict() for r in self.routes], "message": self.message}


def _segments(con: duckdb.DuckDBPyConnection) -> str:
    """Canary state changes as segments [ts, next ts) per route (none without the table)."""
    if {"route", "ts", "step_index", "state"} <= relation_columns(con, "canary_state"):
        return """SELECT route, step_index, state, ts,
                         lead(ts) OVER (PARTITION BY route ORDER BY ts) AS next_ts
                  FROM canary_state WHERE ts IS NOT NULL"""
    return ("SELECT NULL::VARCHAR AS route, NULL::INTEGER AS step_index, NULL::VARCHAR AS state,"
            " NULL::TIMESTAMP AS ts, NULL::TIMESTAMP AS next_ts WHERE false")


def analyze_canaries(
    con: duckdb.DuckDBPyConnection,
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    window: timedelta | None = None,
    version: str | None = None,
    all_versions: bool = False,
    alpha: float = DEFAULT_ALPHA,
    passes: int | None = None,
) -> CanaryReport | None:
    """The readout of every canary recorded in ``con``; None when there is none.

    Past twice the memory limit the units are read in ``passes`` over shares of the unit
    ids (default :func:`analysis.exposure.unit_passes`, as the experiment report does): a
    unit's requests and outcomes fall in one pass, the per-arm sums add up."""
    if "requests" not in relations(con):
        return None
    canary_rows = ("exposed AND experiment = 'canary' AND variant IN ('stable', 'canary') "
                   "AND unit_id IS NOT NULL")
    scope = version_scope(con, "requests", where=f"{canary_rows} AND {time_filter(since, until)}",
                          version=version, all_versions=all_versions, alias="r")
    start, end = parse_time(since), parse_time(until)
    req_w = "".join([f" AND r.ts >= {sql_timestamp(start)}" if start else "",
                     f" AND r.ts < {sql_timestamp(end)}" if end else ""])
    has_latency = "latency_ms" in relation_columns(con, "requests")
    latency = "r.latency_ms" if has_latency else "NULL::DOUBLE"
    parts = passes or unit_passes(con)
    head = f"""
        WITH seg AS ({_segments(con)}),
        steps AS (
            SELECT route, step_index, min(ts) AS since, max(coalesce(next_ts, {_FAR})) AS until,
                   arg_max(state, ts) AS state
            FROM seg GROUP BY route, step_index
        )"""

    def requests_of(k: int) -> str:
        # A request's step is the state segment [ts, next ts) of its route it falls in: a
        # join on the route with the range (an ASOF join sorted 10M requests: 24 s of 36).
        return f"""{head}, req AS (
            SELECT r.route, s.step_index, r.unit_id, r.variant, r.ts, r.status,
                   {latency} AS latency_ms, r.request_id
            FROM requests r LEFT JOIN seg s ON r.route = s.route AND r.ts >= s.ts
                 AND r.ts < coalesce(s.next_ts, {_FAR})
            WHERE r.{canary_rows.replace(' AND ', ' AND r.')}{req_w} AND {scope.condition}
                  {unit_share("r.unit_id", (k, parts))}
        )"""

    per_arm: list[tuple[Any, ...]] = []
    outcomes: list[tuple[Any, ...]] = []
    shifts = _outcome_shifts(con)
    try:
        for k in range(parts):
            # The pass's units once (a temporary table, which spills), read by three steps.
            con.execute(f"""CREATE OR REPLACE TEMP TABLE {_UNITS} AS {requests_of(k)}
                SELECT route, step_index, unit_id, arg_min(variant, ts) AS variant,
                       min(ts) AS t0, min(variant) <> max(variant) AS switched,
                       count(*)::DOUBLE AS n_req,
                       count(*) FILTER (WHERE status IS DISTINCT FROM 'OK')::DOUBLE AS n_err,
                       coalesce(sum(latency_ms) FILTER (WHERE isfinite(latency_ms)), 0) AS lat,
                       count(*) FILTER (WHERE isfinite(latency_ms))::DOUBLE AS n_lat
                FROM req GROUP BY ALL""")
            per_arm += con.execute(f"""{head}
                SELECT u.route, u.step_index, any_value(st.state), any_value(st.since),
                       any_value(st.until), u.variant, count(*), sum(switched::INTEGER),
                       sum(n_req), sum(n_req * n_req), sum(n_err), sum(n_err * n_err),
                       sum(n_req * n_err), sum(n_lat), sum(n_lat * n_lat), sum(lat),
                       sum(lat * lat), sum(lat * n_lat)
                FROM {_UNITS} u LEFT JOIN steps st
                     ON st.route = u.route AND st.step_index IS NOT DISTINCT FROM u.step_index
                GROUP BY u.route, u.step_index, u.variant""").fetchall()
            # Each timed request in its unit's arm, for the quantiles below: a unit that never
            # switched is in its requests' own arm, so only switched units are looked up.
            into = (f"CREATE OR REPLACE TEMP TABLE {_LATENCY} AS" if k == 0
                    else f"INSERT INTO {_LATENCY}")
            con.execute(f"""{into} {requests_of(k)}
                SELECT q.route, q.step_index, coalesce(u.variant, q.variant) AS variant,
                       q.latency_ms AS v
                FROM req q LEFT JOIN (SELECT route, step_index, unit_id, variant
                                      FROM {_UNITS} WHERE switched) u
                     ON u.route = q.route AND u.unit_id = q.unit_id
                        AND u.step_index IS NOT DISTINCT FROM q.step_index
                WHERE isfinite(q.latency_ms)""")
            outcomes += _outcome_sums(con, head, window, end, shifts, (k, parts))
        if parts > 1:  # a step's state, span and shifts are the same in every pass
            per_arm = add_pass_rows(per_arm, (0, 1, 5), kept=(2, 3, 4))
            outcomes = add_pass_rows(outcomes, (0, 1, 2, 3), kept=(9,))
        per_arm.sort(key=lambda a: (a[0], a[1] is None, a[1] or 0, a[5]))
        if not per_arm:
            return None
        # Each arm's latency p50/p99: numpy on the arm's sorted latencies while one fits the
        # memory limit, else order statistics of a sort that spills (quantile_cont held an
        # arm's every request); the arms' timed requests are counted above.
        timed = {(r[0], r[1], r[5]): int(r[13] or 0) for r in per_arm}
        quantiles = {key: {"p50": q[0], "p99": q[1]} for key, q in group_quantiles(
            con, f"SELECT * FROM {_LATENCY}", ["route", "step_index", "variant"], timed,
            [0.5, 0.99], memory_limit_bytes(con)).items() if q}
    finally:
        for table in (_UNITS, _LATENCY):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    routes = newest_route_configs(con)
    return _assemble(per_arm, quantiles, outcomes, routes, alpha, scope.to_dict(),
                     [METHOD, scope.note])


#: Temporary tables of one readout: a pass's units, and every timed request with its arm.
_UNITS, _LATENCY = "_shadowcar_canary_units", "_shadowcar_canary_latency"


def _outcome_shifts(con: duckdb.DuckDBPyConnection) -> dict[str, float] | None:
    """Each outcome metric's shift (:func:`analysis.exposure.metric_shifts`), once for every
    pass; None without usable outcomes."""
    if not {"unit_id", "metric", "value", "ts"} <= relation_columns(con, "outcomes"):
        return None
    return {m: v for m, (v, _) in metric_shifts(con, "outcomes", False).items()}


def _outcome_sums(
    con: duckdb.DuckDBPyConnection, base: str, window: timedelta | None, end: datetime | None,
    shifts: dict[str, float] | None, part: tuple[int, int] = (0, 1),
) -> list[tuple[Any, ...]]:
    """(route, step, variant, metric, units with a finite row, units left out, sum, sum of
    squares, non-finite rows, shift) of outcomes from each unit's first exposure to the
    step's end. The sums are of the units' values less the metric's shift, a whole number
    near their mean (:func:`analysis.exposure.metric_shifts`): a metric of 1e7 + N(0, 1)
    lost about 2e-2 of its variance to raw sums (issue 19.3)."""
    if shifts is None:
        return []
    shift = (f"CASE metric {' '.join(f'WHEN {sql_quote(m)} THEN {v!r}' for m, v in shifts.items())}"
             " ELSE 0.0 END" if shifts else "0.0")
    limit = f" AND o.ts < u.t0 + INTERVAL {int(window.total_seconds())} SECONDS" if window else ""
    limit += f" AND o.ts < {sql_timestamp(end)}" if end else ""
    return con.execute(f"""{base},
        units AS (SELECT * FROM {_UNITS}),
        orphan AS (
            SELECT request_id, any_value(unit_id) AS unit_id FROM requests
            WHERE request_id IN (SELECT request_id FROM outcomes WHERE unit_id IS NULL)
            GROUP BY request_id
        ), o AS (
            SELECT coalesce(o.unit_id, r.unit_id) AS unit_id, o.metric, o.value, o.ts
            FROM outcomes o LEFT JOIN orphan r ON o.unit_id IS NULL AND o.request_id = r.request_id
            WHERE o.metric IS NOT NULL AND o.ts IS NOT NULL
                  {unit_share("coalesce(o.unit_id, r.unit_id)", part)}
        ), unit_metric AS (
            SELECT u.route, u.step_index, u.variant, u.unit_id, o.metric,
                   coalesce(sum(o.value) FILTER (WHERE isfinite(o.value)), 0) AS v,
                   bool_or(coalesce(isfinite(o.value), false)) AS f,
                   count(*) FILTER (WHERE o.value IS NULL OR NOT isfinite(o.value)) AS bad
            FROM units u
            LEFT JOIN steps st
                 ON st.route = u.route AND st.step_index IS NOT DISTINCT FROM u.step_index
            JOIN o ON o.unit_id = u.unit_id AND o.ts >= u.t0
                  AND o.ts < coalesce(st.until, {_FAR}){limit}
            GROUP BY ALL
        ), shifted AS (
            SELECT *, {shift} AS sh FROM unit_metric
        )
        SELECT route, step_index, variant, metric, count(*) FILTER (WHERE f),
               count(*) FILTER (WHERE NOT f), sum(v - sh) FILTER (WHERE f),
               sum((v - sh) * (v - sh)) FILTER (WHERE f), sum(bad), any_value(sh)
        FROM shifted GROUP BY ALL ORDER BY ALL
    """).fetchall()


def _assemble(
    per_arm: list[tuple[Any, ...]],
    quantiles: dict[tuple[Any, Any, Any], dict[str, Any]],
    outcomes: list[tuple[Any, ...]],
    routes: dict[str, dict[str, Any]],
    alpha: float,
    versions: dict[str, Any],
    notes: list[str],
) -> CanaryReport:
    arms: dict[tuple[str, int | None], dict[str, tuple[Any, ...]]] = {}
    for row in per_arm:
        arms.setdefault((row[0], row[1]), {})[_VARIANT_ARM[row[5]]] = row
    metric_rows: dict[tuple[str, int | None], dict[str, dict[str, tuple[Any, ...]]]] = {}
    for row in outcomes:
        metric_rows.setdefault((row[0], row[1]), {}).setdefault(row[3], {})[
            _VARIANT_ARM[row[2]]] = row
    by_route: dict[str, list[CanaryStep]] = {}
    for (route, index), found in arms.items():
        cfg = (routes.get(route) or {}).get("canary") or {}
        shares = cfg.get("steps") or []
        share = float(shares[index]) if index is not None and 0 <= index < len(shares) else None
        any_row = next(iter(found.values()))
        units = {arm: int(found[arm][6]) if arm in found else 0 for arm in ("stable", "candidate")}
        step = CanaryStep(
            index=index, share=share, state=any_row[2],
            since=any_row[3], until=None if any_row[4] is None or any_row[4].year == 9999
            else any_row[4],
            units=units,
            requests={arm: int(found[arm][8]) if arm in found else 0
                      for arm in ("stable", "candidate")},
            switched_units=sum(int(r[7] or 0) for r in found.values()),
            latency_ms={arm: quantiles.get((route, index, v), {"p50": None, "p99": None})
                        for v, arm in _VARIANT_ARM.items()},
            results=_results(found, metric_rows.get((route, index), {}), units, alpha),
            message=None if index is not None else
            "no recorded canary state covers these requests: read as one step",
        )
        by_route.setdefault(route, []).append(step)
    out = tuple(
        CanaryRoute(route, (routes.get(route) or {}).get("canary", {}).get("stable"),
                    (routes.get(route) or {}).get("canary", {}).get("candidate"), tuple(steps))
        for route, steps in sorted(by_route.items())
    )
    return CanaryReport(out, tuple(notes), versions)


def _outcome_stats(n: int, row: tuple[Any, ...] | None) -> SampleStats:
    """One arm's outcome metric over its ``n`` units in the metric: the units with a finite
    row from ``row`` (sums less its shift), the units without a row with value 0 (each adds
    ``0 - shift``: exact, the shift is a whole number)."""
    if row is None:
        return SampleStats(n, 0.0, 0.0)
    shift = float(row[9] or 0.0)
    absent = n - int(row[4] or 0)
    return SampleStats(n, float(row[6] or 0) - absent * shift,
                       float(row[7] or 0) + absent * shift * shift, shift)


def _results(
    found: dict[str, tuple[Any, ...]],
    metrics: dict[str, dict[str, tuple[Any, ...]]],
    units: dict[str, int],
    alpha: float,
) -> tuple[CanaryResult, ...]:
    stable, candidate = found.get("stable"), found.get("candidate")

    def errors(row: tuple[Any, ...] | None) -> PairStats:
        # y = errors, x = requests per unit: columns n_req, n_req2, n_err, n_err2, n_req*n_err
        if row is None:
            return PairStats.empty()
        return PairStats(int(row[6]), float(row[10]), float(row[11]), float(row[8]),
                         float(row[9]), float(row[12]))

    def latency(row: tuple[Any, ...] | None) -> PairStats:
        # y = latency sum, x = timed requests per unit
        if row is None:
            return PairStats.empty()
        return PairStats(int(row[6]), float(row[15] or 0), float(row[16] or 0),
                         float(row[13] or 0), float(row[14] or 0), float(row[17] or 0))

    out = [
        CanaryResult("error_rate", "ratio", ratio_test(errors(stable), errors(candidate),
                                                       alpha=alpha)),
        CanaryResult("latency_ms_mean", "ratio", ratio_test(latency(stable), latency(candidate),
                                                            alpha=alpha)),
    ]
    for metric, by_arm in sorted(metrics.items()):
        stats = []
        notes = []
        for arm in ("stable", "candidate"):
            row = by_arm.get(arm)
            dropped = int(row[5]) if row else 0
            n = units[arm] - dropped
            stats.append(_outcome_stats(n, row))
            if row and (row[8] or dropped):
                notes.append(f"{arm}: {int(row[8] or 0)} non-finite row(s) left out, "
                             f"{dropped} unit(s) without a finite value left out")
        comp = welch_test(stats[0], stats[1], alpha=alpha)
        if notes:
            comp = replace(comp, message="; ".join([*([comp.message] if comp.message else []),
                                                    *notes]))
        out.append(CanaryResult(metric, "mean", comp))
    return tuple(out)

