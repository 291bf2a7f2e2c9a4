"""Exposures and outcomes reduced to per-variant sufficient statistics in one SQL statement.

A recorded unit counts from its first exposure on (GrowthBook's and Eppo's rule): outcomes
in ``[first exposure, first exposure + window)`` are its metric value, the same metric's
outcomes in ``[first exposure - lookback, first exposure)`` its CUPED covariate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import duckdb

from analysis.load import parse_time, sql_quote, sql_timestamp

__all__ = [
    "BOUNDS_TABLE", "INPUT_TABLE", "UNITS_TABLE", "Gathered", "MetricSums", "RatioSums",
    "add_pass_rows", "add_passes", "clip_bounds", "gather", "metric_shifts", "shift_pair",
    "unit_passes", "unit_share", "whole",
]

#: The analyst table read by ``source="table"``.
INPUT_TABLE = "experiment_input"
#: The canary controller records its decisions as experiment ``canary`` with these variants;
#: the canary readout analyses them (units move between arms as the share grows).
CANARY_EXPERIMENT = "canary"

Source = Literal["recorded", "table"]


@dataclass(frozen=True)
class MetricSums:
    """One metric in one variant: units in the metric and their value/covariate sums."""

    n: int
    sum: float
    sum_sq: float
    sum_pre: float
    sum_pre_sq: float
    sum_cross: float
    binary: bool
    #: rows with a NaN, infinite or NULL value (left out of their unit's value)
    bad: int
    rows: int
    #: units whose every row was non-finite (left out of this metric)
    dropped: int = 0
    #: finite rows in the units' pre-exposure lookback (recorded data)
    pre_rows: int = 0
    #: the sums are of ``value - shift`` and ``pre - shift_pre`` (whole numbers near the
    #: means: moments on shifted values keep their digits, issue 19)
    shift: float = 0.0
    shift_pre: float = 0.0

    @staticmethod
    def zero() -> MetricSums:
        return MetricSums(0, 0.0, 0.0, 0.0, 0.0, 0.0, True, 0, 0)


@dataclass(frozen=True)
class RatioSums:
    """One ratio in one variant, over units with a usable value for both metrics."""

    n: int
    sum_y: float
    sum_y2: float
    sum_x: float
    sum_x2: float
    sum_xy: float
    shift_y: float = 0.0
    shift_x: float = 0.0


@dataclass
class Gathered:
    """Per-experiment sufficient statistics as read back from DuckDB."""

    #: experiment -> variant -> distinct exposed units
    units: dict[str, dict[str, int]] = field(default_factory=dict)
    #: experiment -> units seen in several variants (left out)
    excluded: dict[str, int] = field(default_factory=dict)
    #: (experiment, variant, metric) -> MetricSums
    metrics: dict[tuple[str, str, str], MetricSums] = field(default_factory=dict)
    #: (experiment, variant, ratio name) -> RatioSums
    ratios: dict[tuple[str, str, str], RatioSums] = field(default_factory=dict)
    #: experiment -> outcome rows left out by the exposure rule: early, late, untimed
    timing: dict[str, dict[str, int]] = field(default_factory=dict)

    def present(self, experiment: str) -> list[str]:
        """Metrics with at least one row for this experiment's units."""
        return sorted({m for (e, _, m), s in self.metrics.items() if e == experiment and s.rows})


def _interval(span: timedelta) -> str:
    return f"INTERVAL {int(span.total_seconds() * 1_000_000)} MICROSECONDS"


def _pivot(metrics: Sequence[str], pre: str | None, post: str, counts: bool,
           clean: frozenset[str] = frozenset()) -> str:
    """Per-unit columns for metric i: v (finite value sum), f (has a finite row; NULL
    without rows), p (covariate sum) with ``pre``, and with ``counts`` r (rows), b
    (non-finite rows) and c (finite covariate rows). Metrics in ``clean`` have no
    non-finite value at all and skip the f aggregate (a quarter of the pass's cost)."""
    cols = []
    for i, m in enumerate(metrics):
        is_m = f"metric = {sql_quote(m)} AND {post}"
        cols.append(f"coalesce(sum(value) FILTER (WHERE {is_m} AND isfinite(value)), 0) AS v_{i}")
        if m in clean:  # no non-finite value anywhere: every unit is in the metric
            cols.append(f"NULL::BOOLEAN AS f_{i}")
        else:
            cols.append(f"bool_or(coalesce(isfinite(value), false)) FILTER (WHERE {is_m})"
                        f" AS f_{i}")
        if pre is not None:
            cols.append(_pre_col(i, m, pre))
        if counts:
            cols.append(f"count(*) FILTER (WHERE {is_m}) AS r_{i}")
            cols.append(f"count(*) FILTER (WHERE {is_m} AND (value IS NULL OR NOT isfinite(value)))"
                        f" AS b_{i}")
            if pre is not None:
                cols.append(f"count(*) FILTER (WHERE metric = {sql_quote(m)} AND {pre} "
                            f"AND isfinite(value)) AS c_{i}")
    return ",\n".join(cols)


def _pre_col(i: int, metric: str, pre: str) -> str:
    """The covariate sum: the ``pre_value`` column of an analyst table, or (recorded) the
    metric's own finite values in the lookback before exposure."""
    is_m = f"metric = {sql_quote(metric)}"
    if pre == "pre_value":
        return (f"coalesce(sum(pre_value) FILTER (WHERE {is_m} AND isfinite(pre_value)), 0)"
                f" AS p_{i}")
    return f"coalesce(sum(value) FILTER (WHERE {is_m} AND {pre} AND isfinite(value)), 0) AS p_{i}"


def _recorded_units(
    metrics: Sequence[str], *, since: Any, until: Any, versions: str,
    window: timedelta | None, lookback: timedelta | None, part: tuple[int, int] = (0, 1),
) -> str:
    """``unit_rows`` CTE body for the recorded schema: one row per (experiment, unit);
    ``part`` (k, K) keeps the units whose id hashes to k modulo K (:func:`unit_passes`)."""
    start, end = parse_time(since), parse_time(until)
    req_w = "".join([f" AND ts >= {sql_timestamp(start)}" if start else "",
                     f" AND ts < {sql_timestamp(end)}" if end else ""])
    # Outcomes are bounded by ``until`` only: the covariate's lookback reaches before since.
    out_w = f" AND o.ts < {sql_timestamp(end)}" if end else ""
    late = f"WHEN o.ts >= e.t0 + {_interval(window)}" if window else "WHEN false"
    pre = (f"WHEN o.ts >= e.t0 - {_interval(lookback)} THEN 'pre'" if lookback else "")
    carry = [f"coalesce(p.{c}_{i}, 0) AS {c}_{i}" for i in range(len(metrics))
             for c in ("v", "r", "b", *(("p", "c") if lookback else ()))]
    carry += [f"p.f_{i}" for i in range(len(metrics))]
    carry += [f"coalesce(p.{k}, 0) AS {k}" for k in ("early", "late", "untimed")]
    pivot = _pivot(metrics, "phase = 'pre'" if lookback else None,
                   "phase IN ('post', 'untimed')", True)
    per_unit = f"""SELECT experiment, unit_id, {pivot + ',' if metrics else ''}
                   count(*) FILTER (WHERE phase = 'early') AS early,
                   count(*) FILTER (WHERE phase = 'late') AS late,
                   count(*) FILTER (WHERE phase = 'untimed') AS untimed
            FROM joined GROUP BY experiment, unit_id"""
    # Outcomes reach a unit directly or through the request that carried them.
    return f"""
        exposed AS (
            SELECT experiment, unit_id, min(variant) AS variant,
                   min(variant) = max(variant) AS single, min(ts) AS t0
            FROM requests
            WHERE exposed AND experiment IS NOT NULL AND unit_id IS NOT NULL
                  AND variant IS NOT NULL{req_w} AND {versions}{unit_share("unit_id", part)}
                  AND NOT (experiment = {sql_quote(CANARY_EXPERIMENT)}
                           AND variant IN ('stable', 'canary'))
            GROUP BY experiment, unit_id
        ), orphan AS (
            SELECT request_id, any_value(unit_id) AS unit_id FROM requests
            WHERE request_id IN (SELECT request_id FROM outcomes WHERE unit_id IS NULL)
            GROUP BY request_id
        ), o AS (
            SELECT coalesce(o.unit_id, r.unit_id) AS unit_id, o.metric, o.value,
                   coalesce(o.ts, o.received_at) AS ts
            FROM outcomes o LEFT JOIN orphan r
                 ON o.unit_id IS NULL AND o.request_id = r.request_id
            WHERE o.metric IS NOT NULL{out_w}{unit_share("coalesce(o.unit_id, r.unit_id)", part)}
        ), joined AS (
            SELECT e.experiment, e.unit_id, o.metric, o.value,
                   CASE WHEN o.ts IS NULL OR e.t0 IS NULL THEN 'untimed'
                        WHEN o.ts >= e.t0 THEN CASE {late} THEN 'late' ELSE 'post' END
                        {pre} ELSE 'early' END AS phase
            FROM exposed e JOIN o ON o.unit_id = e.unit_id
        ), per_unit AS ({per_unit}
        ), unit_rows AS (
            SELECT e.experiment, e.variant, e.single, {', '.join(carry)}
            FROM exposed e LEFT JOIN per_unit p USING (experiment, unit_id)
        )"""


def unit_share(column: str, part: tuple[int, int]) -> str:
    """The condition keeping pass k of K's units (nothing in one pass)."""
    k, passes = part
    return f" AND hash({column}) % {passes} = {k}" if passes > 1 else ""


def unit_passes(con: duckdb.DuckDBPyConnection) -> int:
    """How many passes the per-unit aggregate of recorded exposures takes: one while the
    exposed units' rows (:data:`_UNIT_BYTES` each, an upper bound from the exposures'
    count) fit twice the memory limit, else enough to keep each pass's share there. 100M
    units needed a 1500MB cap in one pass; a unit's exposures and outcomes always fall in
    the same pass, and the per-variant sums of the passes add up."""
    from analysis.engine import memory_limit_bytes

    (exposures,) = con.execute("SELECT count(*) FROM requests WHERE exposed").fetchall()[0]
    return max(1, math.ceil(int(exposures) * _UNIT_BYTES / (2 * memory_limit_bytes(con))))


#: Bytes of one unit's row in the per-unit aggregate (ids, first exposure, sums and counts).
_UNIT_BYTES = 100


def add_passes(rows: Iterable[Mapping[Any, Any]], group: Sequence[Any],
               anded: Callable[[Any], bool],
               kept: Callable[[Any], bool] = lambda _: False) -> list[dict[Any, Any]]:
    """Per-group rows of several passes added up (the ``group`` columns name a row's group):
    sums and counts add, the columns ``anded`` says are flags combine with AND, those
    ``kept`` says are the same in every pass keep the first, and NULL (a pass without such
    units) is neutral."""
    found: dict[tuple[Any, ...], dict[Any, Any]] = {}
    for row in rows:
        key = tuple(row[g] for g in group)
        if key not in found:
            found[key] = dict(row)
            continue
        acc = found[key]
        for name, value in row.items():
            if name in group or value is None:
                continue
            if acc[name] is None:
                acc[name] = value
            elif kept(name):
                continue
            elif anded(name):
                acc[name] = bool(acc[name]) and bool(value)
            else:
                acc[name] = acc[name] + value
    return list(found.values())


def add_pass_rows(rows: Iterable[Sequence[Any]], group: Sequence[int],
                  anded: Collection[int] = (), kept: Collection[int] = ()) -> list[tuple[Any, ...]]:
    """:func:`add_passes` for positional rows (``fetchall``'s tuples): the columns at the
    positions in ``group``, ``anded`` and ``kept`` play those parts."""
    merged = add_passes((dict(enumerate(r)) for r in rows), group, anded.__contains__,
                        kept=kept.__contains__)
    return [tuple(r[i] for i in range(len(r))) for r in merged]


def _table_units(metrics: Sequence[str], name: str, has_pre: bool,
                 clean: frozenset[str]) -> str:
    """``unit_rows`` CTE body for the analyst table: one row per unit.

    Row and non-finite counts are additive over rows, so :func:`_table_counts` takes them
    straight from the table and this wide aggregate stays narrow (it is the costly one).
    """
    pivot = (",\n" + _pivot(metrics, "pre_value" if has_pre else None, "true", False, clean)
             ) if metrics else ""
    return f"""
        unit_rows AS (
            SELECT {sql_quote(name)} AS experiment, CAST(min(variant) AS VARCHAR) AS variant,
                   min(variant) = max(variant) AS single{pivot}
            FROM {INPUT_TABLE}
            WHERE unit_id IS NOT NULL AND variant IS NOT NULL
            GROUP BY unit_id
        )"""


def _table_counts(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], tuple[int, int]]:
    """(variant, metric) -> (rows, non-finite values) of the analyst table."""
    return {
        (str(v), str(m)): (int(r), int(b))
        for v, m, r, b in con.execute(
            f"""SELECT variant, metric, count(*),
                   count(*) FILTER (WHERE value IS NULL OR NOT isfinite(value))
            FROM {INPUT_TABLE}
            WHERE unit_id IS NOT NULL AND variant IS NOT NULL AND metric IS NOT NULL
            GROUP BY ALL"""
        ).fetchall()
    }


def _ok(i: int) -> str:
    """A unit is in metric i unless every one of its rows was non-finite."""
    return f"f_{i} IS DISTINCT FROM false"


def _clip(metrics: Sequence[str], level: float) -> str:
    """Clip each metric's unit values to its [1 - level, level] linear quantiles over the
    experiment's units in the metric (units without rows count as 0), in one statement."""
    qs = [f"quantile_cont(v_{i}, [{1.0 - level!r}, {level!r}]) FILTER (WHERE {_ok(i)}) AS q_{i}"
          for i in range(len(metrics))]
    ends = [f"q_{i}[1] AS lo_{i}, q_{i}[2] AS hi_{i}" for i in range(len(metrics))]
    return f""", bounds AS (
            SELECT experiment, {', '.join(ends)} FROM (
                SELECT experiment, {', '.join(qs)} FROM unit_rows WHERE single GROUP BY experiment)
        ), {_clipped(metrics, "bounds")}"""


def _clipped(metrics: Sequence[str], bounds: str) -> str:
    """The ``clipped`` CTE: ``unit_rows`` with each value clipped to its experiment's
    ``lo_i``/``hi_i`` in ``bounds``."""
    clipped = [f"least(greatest(u.v_{i}, q.lo_{i}), q.hi_{i}) AS v_{i}"
               for i in range(len(metrics))]
    return f"""clipped AS (
            SELECT u.* REPLACE ({', '.join(clipped)})
            FROM unit_rows u JOIN {bounds} q ON q.experiment = u.experiment
        )"""


#: Temporary tables of a winsorized report whose units are aggregated in passes.
UNITS_TABLE, BOUNDS_TABLE = "_shadowcar_units", "_shadowcar_bounds"


def clip_bounds(con: duckdb.DuckDBPyConnection, units: str, count: int, level: float,
                into: str) -> None:
    """Table ``into`` (experiment, lo_i, hi_i for each of ``count`` metrics): the [1 - level,
    level] linear quantiles of each metric's values over each experiment's single-variant
    units in the metric, in table ``units``, read at the order statistics of a sort that
    spills. ``quantile_cont`` holds an experiment's every unit: with 10M units a 300MB cap
    ran out of memory winsorizing while the plain report ran."""
    from analysis.operations import ordered_quantiles

    experiments = [str(r[0]) for r in con.execute(
        f"SELECT DISTINCT experiment FROM {units} WHERE single ORDER BY 1").fetchall()]
    bounds: dict[str, list[float | None]] = {e: [] for e in experiments}
    for i in range(count):
        kept = f"FROM {units} WHERE single AND {_ok(i)}"
        sizes = {(str(e),): int(n) for e, n in con.execute(
            f"SELECT experiment, count(v_{i}) {kept} GROUP BY experiment").fetchall()}
        found = ordered_quantiles(con, f"SELECT experiment, v_{i} AS v {kept}", ["experiment"],
                                  sizes, [1.0 - level, level])
        for e in experiments:
            bounds[e] += found.get((e,)) or [None, None]
    columns = ", ".join(f"lo_{i} DOUBLE, hi_{i} DOUBLE" for i in range(count))
    con.execute(f"CREATE OR REPLACE TEMP TABLE {into} (experiment VARCHAR, {columns})")
    if experiments:
        marks = ", ".join("?" for _ in range(1 + 2 * count))
        con.executemany(f"INSERT INTO {into} VALUES ({marks})",
                        [[e, *bounds[e]] for e in experiments])


def metric_shifts(
    con: duckdb.DuckDBPyConnection, table: str, has_pre: bool
) -> dict[str, tuple[float, float]]:
    """Each metric's shifts: a unit's value and covariate are summed less a whole number
    near the mean of units' values, so variances from sums keep their digits when the mean
    dwarfs the spread. Whole numbers keep 0/1 metrics exact; the list is also the pivot's
    fixed set of metrics. One cheap pass: the finite rows' mean times the whole number of
    rows per unit (an exact distinct count of 10M units would double the report's time)."""
    pre = ("avg(pre_value) FILTER (WHERE isfinite(pre_value))"
           if has_pre and table == INPUT_TABLE else "NULL")
    rows = con.execute(f"""
        SELECT metric, sum(value) FILTER (WHERE isfinite(value)),
               count(*) FILTER (WHERE isfinite(value)),
               approx_count_distinct(unit_id) FILTER (WHERE isfinite(value)), {pre}
        FROM {table} WHERE metric IS NOT NULL GROUP BY metric ORDER BY metric
    """).fetchall()
    return {str(m): shift_pair(total, finite, units, pre_mean)
            for m, total, finite, units, pre_mean in rows}


def shift_pair(total: Any, rows: Any, units: Any, pre_mean: Any) -> tuple[float, float]:
    """(value shift, covariate shift) from a metric's finite total and rows, its (approximate)
    distinct units and the mean of its ``pre_value`` (None: the covariate is the metric)."""
    value = 0.0
    if total is not None and rows:
        per_unit = max(round(int(rows) / int(units)), 1) if units else 1
        value = whole(float(total) / int(rows) * per_unit)
    return value, value if pre_mean is None else whole(float(pre_mean))


def whole(value: float) -> float:
    """The nearest whole number; 0 for a value that is not finite or beyond 2**52."""
    return float(round(value)) if abs(value) < 2.0**52 else 0.0


def gather(
    con: duckdb.DuckDBPyConnection,
    *,
    source: Source,
    name: str,
    has_pre: bool,
    since: Any,
    until: Any,
    winsorize: float | None,
    ratios: Mapping[str, tuple[str, str]],
    versions: str = "TRUE",
    window: timedelta | None = None,
    lookback: timedelta | None = None,
    passes: int | None = None,
) -> Gathered:
    """One SQL statement: rows -> units (one wide row each) -> per-variant sums.

    Metric names come first (a cheap DISTINCT) so the per-unit pivot has fixed columns.
    ``lookback`` (recorded data) makes each metric's covariate its own pre-exposure sum.
    Recorded units past the memory limit are aggregated in ``passes`` over shares of the
    unit ids (default :func:`unit_passes`) and their per-variant sums added; winsorized,
    the passes' units are kept in a temporary table (it spills), the clip bounds are read
    from sorts that spill (:func:`clip_bounds`) and one statement sums the clipped units.
    """
    table = INPUT_TABLE if source == "table" else "outcomes"
    shifts = metric_shifts(con, table, has_pre)
    metrics = list(shifts)
    counts: dict[tuple[str, str], tuple[int, int]] | None = None
    if source == "table":
        counts = _table_counts(con)
        dirty = {m for (_, m), (_, bad) in counts.items() if bad}
        ctes = _table_units(metrics, name, has_pre, frozenset(metrics) - dirty)
        lookback = None
    else:
        has_pre = lookback is not None
    parts = passes or unit_passes(con) if source != "table" else 1
    staged = winsorize is not None and bool(metrics) and parts > 1
    relation = "unit_rows"
    if winsorize is not None and metrics:
        relation = "clipped"
        if source == "table":
            ctes += _clip(metrics, winsorize)
    index = {m: i for i, m in enumerate(metrics)}
    recorded = counts is None
    aggs = ["count(*)"]
    def less(column: str, shift: float) -> str:
        return f"({column} - {shift!r})" if shift else column

    for i, m in enumerate(metrics):
        v = less(f"v_{i}", shifts[m][0])
        p, ok = (less(f"p_{i}", shifts[m][1]) if has_pre else "0"), f"FILTER (WHERE {_ok(i)})"
        aggs += [f"count(*) {ok}", f"sum({v}) {ok}", f"sum({v} * {v}) {ok}",
                 f"sum({p}) {ok}", f"sum({p} * {p}) {ok}", f"sum({v} * {p}) {ok}",
                 f"bool_and(v_{i} = 0 OR v_{i} = 1) {ok}", f"count(*) FILTER (WHERE f_{i} = false)",
                 *((f"sum(b_{i})", f"sum(r_{i})") if recorded else ("0", "0")),
                 f"sum(c_{i})" if recorded and lookback is not None else "0"]
    usable = {k: (index[a], index[b]) for k, (a, b) in ratios.items()
              if a in index and b in index}
    for a, b in usable.values():
        ok = f"FILTER (WHERE {_ok(a)} AND {_ok(b)})"
        va, vb = less(f"v_{a}", shifts[metrics[a]][0]), less(f"v_{b}", shifts[metrics[b]][0])
        aggs += [f"count(*) {ok}", f"sum({va}) {ok}", f"sum({va} * {va}) {ok}",
                 f"sum({vb}) {ok}", f"sum({vb} * {vb}) {ok}", f"sum({va} * {vb}) {ok}"]
    if recorded:
        aggs += ["sum(early)", "sum(late)", "sum(untimed)"]
    width, rwidth = 11, 6
    def sums(ctes: str) -> list[tuple[Any, ...]]:
        return con.execute(f"""WITH {ctes}
            SELECT experiment, CASE WHEN single THEN variant END AS variant, {', '.join(aggs)}
            FROM {relation} GROUP BY ALL""").fetchall()

    def units(k: int) -> str:
        return _recorded_units(metrics, since=since, until=until, versions=versions,
                               window=window, lookback=lookback, part=(k, parts))

    found: list[tuple[Any, ...]] = []
    if staged:
        assert winsorize is not None
        try:
            for k in range(parts):
                into = (f"CREATE OR REPLACE TEMP TABLE {UNITS_TABLE} AS" if k == 0
                        else f"INSERT INTO {UNITS_TABLE} BY NAME")
                con.execute(f"{into} WITH {units(k)} SELECT * FROM unit_rows")
            clip_bounds(con, UNITS_TABLE, len(metrics), winsorize, BOUNDS_TABLE)
            found = sums(f"unit_rows AS (SELECT * FROM {UNITS_TABLE}), "
                         + _clipped(metrics, BOUNDS_TABLE))
        finally:
            for table in (UNITS_TABLE, BOUNDS_TABLE):
                con.execute(f"DROP TABLE IF EXISTS {table}")
        parts = 1
    for k in range(0 if staged else parts):
        if source != "table":
            ctes = units(k)
            if winsorize is not None and metrics:
                ctes += _clip(metrics, winsorize)
        found += sums(ctes)
    if parts > 1:
        flags = {3 + width * i + 6 for i in range(len(metrics))}  # the bool_and columns
        found = add_pass_rows(found, (0, 1), anded=flags)
    g = Gathered()
    for row in found:
        exp, variant, n = str(row[0]), row[1], int(row[2])
        if recorded:
            timing = g.timing.setdefault(exp, {"early": 0, "late": 0, "untimed": 0})
            for key, value in zip(("early", "late", "untimed"), row[-3:], strict=True):
                timing[key] += int(value or 0)
        if variant is None:
            g.excluded[exp] = n
            continue
        variant = str(variant)
        g.units.setdefault(exp, {})[variant] = n
        for m, i in index.items():
            s = row[3 + width * i: 3 + width * (i + 1)]
            rows, bad = (int(s[9] or 0), int(s[8] or 0)) if recorded else \
                counts.get((variant, m), (0, 0))  # type: ignore[union-attr]
            g.metrics[(exp, variant, m)] = MetricSums(
                int(s[0] or 0), float(s[1] or 0), float(s[2] or 0), float(s[3] or 0),
                float(s[4] or 0), float(s[5] or 0), bool(s[6]) if s[6] is not None else True,
                bad, rows, int(s[7] or 0), int(s[10] or 0), *shifts[m])
        base = 3 + width * len(metrics)
        for j, ratio in enumerate(usable):
            r = row[base + rwidth * j: base + rwidth * (j + 1)]
            a, b = usable[ratio]
            y, y2, x, x2, xy = (float(v or 0) for v in r[1:])
            g.ratios[(exp, variant, ratio)] = RatioSums(
                int(r[0] or 0), y, y2, x, x2, xy, shifts[metrics[a]][0], shifts[metrics[b]][0])
    return g
