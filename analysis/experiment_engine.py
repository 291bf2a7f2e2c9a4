"""The experiment's row work as Ibis expressions: the same reduction on DuckDB and on Spark.

Mirrors :func:`analysis.exposure.gather` rule for rule (first exposure, metric window,
CUPED lookback, non-finite rows, units in several variants, winsorizing, ratios) and
returns the same :class:`~analysis.exposure.Gathered`: a few numbers per experiment,
variant and metric, whatever the number of rows. Moments are of shifted values
(:func:`analysis.exposure.shift_pair`). The version scope and the newest config are read
here too, so a report on Spark needs nothing but the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from analysis.engine import Engine
from analysis.exposure import (
    CANARY_EXPERIMENT,
    INPUT_TABLE,
    UNITS_TABLE,
    Gathered,
    MetricSums,
    RatioSums,
    add_passes,
    shift_pair,
    unit_passes,
)
from analysis.load import VersionScope, parse_time, pick_versions

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = [
    "exposed_condition", "gather_engine", "newest_config_json", "scope_engine",
    "table_columns",
]


def _finite(value: ir.NumericValue) -> ir.BooleanValue:
    """True for a finite number; false (not NULL) for NULL, NaN and infinities on every
    engine (Spark's isnan(NULL) is false where DuckDB's isfinite(NULL) is NULL)."""
    return value.notnull() & ~value.isnan() & ~value.isinf()


def _time_bounds(t: ir.Table, since: Any, until: Any, column: str = "ts") -> ir.BooleanValue:
    import ibis

    cond: ir.BooleanValue = ibis.literal(True)
    start, end = parse_time(since), parse_time(until)
    if start is not None:
        cond &= t[column] >= ibis.literal(start, type="timestamp")
    if end is not None:
        cond &= t[column] < ibis.literal(end, type="timestamp")
    return cond


def _kept(t: ir.Table, scope: VersionScope | None) -> ir.BooleanValue:
    import ibis

    if scope is None or scope.keep is None:
        return ibis.literal(scope is None or scope.rule == "all" or scope.condition == "TRUE")
    cond: ir.BooleanValue = ibis.literal(False)
    for route, version in scope.keep:
        cond |= (t.route.identical_to(ibis.literal(route, type="string"))
                 & t.config_version.identical_to(ibis.literal(version, type="string")))
    return cond


def table_columns(engine: Engine, name: str) -> set[str]:
    return {c.lower() for c in engine.columns(name)}


def newest_config_json(engine: Engine) -> str | None:
    """The ``config_json`` of the newest ``configs`` row (None without one)."""
    if not engine.has("configs"):
        return None
    c = engine.table("configs")
    rows = engine.rows(c.order_by(c.ts.desc(nulls_first=False)).select("config_json").limit(1))
    return None if not rows else rows[0]["config_json"]


def scope_engine(
    engine: Engine, table: str, cond: ir.BooleanValue | None, *, version: str | None,
    all_versions: bool,
) -> VersionScope:
    """:func:`analysis.load.version_scope` on any engine (``cond`` filters ``table``)."""
    if version is not None and all_versions:
        raise ValueError("give either a config version or all versions, not both")
    cols = engine.columns(table)
    if "config_version" not in cols or "route" not in cols:
        return VersionScope("all", "TRUE", {}, f"{table} has no config_version: all rows kept")
    t = engine.table(table)
    if cond is not None:
        t = t.filter(cond)
    per = t.group_by(["route", "config_version"]).aggregate(first_ts=t.ts.min())
    if engine.has("configs") and "ts" in engine.columns("configs"):
        c = engine.table("configs")
        acc = c.group_by("config_version").aggregate(accepted=c.ts.max())
        per = per.left_join(acc, "config_version").select(
            "route", "config_version", "accepted", "first_ts")
    else:
        import ibis

        per = per.mutate(accepted=ibis.null("timestamp"))
    rows = [(r["route"], r["config_version"], r["accepted"], r["first_ts"])
            for r in engine.rows(per)]
    return pick_versions(rows, version=version, all_versions=all_versions)


def exposed_condition(t: ir.Table, since: Any, until: Any) -> ir.BooleanValue:
    """The requests that expose a unit, inside ``[since, until)``."""
    return (t.exposed & t.experiment.notnull() & t.unit_id.notnull() & t.variant.notnull()
            & _time_bounds(t, since, until))


def _shifts(engine: Engine, table: str, has_pre: bool) -> dict[str, tuple[float, float]]:
    t = engine.table(table)
    t = t.filter(t.metric.notnull())
    fin = _finite(t.value)
    aggs: dict[str, Any] = {"total": t.value.sum(where=fin), "rows": t.count(where=fin),
                            "units": t.unit_id.approx_nunique(where=fin)}
    if has_pre and table == INPUT_TABLE:
        aggs["pre_mean"] = t.pre_value.mean(where=_finite(t.pre_value))
    rows = engine.rows(t.group_by("metric").aggregate(**aggs))
    return {str(r["metric"]): shift_pair(r["total"], r["rows"], r["units"], r.get("pre_mean"))
            for r in sorted(rows, key=lambda r: str(r["metric"]))}


def _pivot(j: ir.Table, metrics: Sequence[str], *, pre: ir.BooleanValue | None,
           pre_column: str | None, post: ir.BooleanValue, counts: bool,
           clean: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Per-unit aggregates of metric i (see :func:`analysis.exposure._pivot`)."""
    import ibis

    out: dict[str, Any] = {}
    fin = _finite(j.value)
    for i, m in enumerate(metrics):
        is_m = j.metric == m
        out[f"v_{i}"] = ibis.coalesce(j.value.sum(where=is_m & post & fin), 0.0)
        if not counts:  # with the counts, f is r > b (NULL without rows): one aggregate less
            out[f"f_{i}"] = (ibis.null("boolean") if m in clean
                             else fin.any(where=is_m & post))
        if pre_column == "pre_value":
            out[f"p_{i}"] = ibis.coalesce(
                j.pre_value.sum(where=is_m & _finite(j.pre_value)), 0.0)
        elif pre is not None:
            out[f"p_{i}"] = ibis.coalesce(j.value.sum(where=is_m & pre & fin), 0.0)
        if counts:
            out[f"r_{i}"] = j.count(where=is_m & post)
            out[f"b_{i}"] = j.count(where=is_m & post & ~fin)
            if pre is not None:
                out[f"c_{i}"] = j.count(where=is_m & pre & fin)
    return out


def _share(unit_id: ir.StringValue, part: tuple[int, int]) -> ir.BooleanValue:
    """Pass k of K's units: their id's hash modulo K is k (always true in one pass)."""
    import ibis

    k, passes = part
    if passes <= 1:
        return ibis.literal(True)
    h = unit_id.hash() % passes  # a signed hash: the remainder may be negative
    return ((h + passes) % passes) == k


def _recorded_units(
    engine: Engine, metrics: Sequence[str], *, since: Any, until: Any,
    scope: VersionScope | None, window: timedelta | None, lookback: timedelta | None,
    part: tuple[int, int] = (0, 1),
) -> ir.Table:
    import ibis

    r = engine.table("requests")
    exposed = r.filter(exposed_condition(r, since, until) & _kept(r, scope)
                       & ~((r.experiment == CANARY_EXPERIMENT)
                           & r.variant.isin(["stable", "canary"]))
                       & _share(r.unit_id, part))
    exposed = exposed.group_by(["experiment", "unit_id"]).aggregate(
        variant=exposed.variant.min(), single=exposed.variant.min() == exposed.variant.max(),
        t0=exposed.ts.min())
    o = engine.table("outcomes")
    orphan_ids = o.filter(o.unit_id.isnull()).select("request_id").distinct()
    orphan = r.filter(r.request_id.isin(orphan_ids.request_id))
    orphan = orphan.group_by("request_id").aggregate(o_unit=orphan.unit_id.arbitrary())
    o = o.left_join(orphan, (o.unit_id.isnull()) & (o.request_id == orphan.request_id))
    o = o.select(unit_id=ibis.coalesce(o.unit_id, o.o_unit), metric=o.metric, value=o.value,
                 ts=ibis.coalesce(o.ts, o.received_at))
    o = o.filter(o.metric.notnull() & _share(o.unit_id, part))
    end = parse_time(until)
    if end is not None:
        o = o.filter(o.ts < ibis.literal(end, type="timestamp"))
    # One pass per unit: the first exposures LEFT JOINed to their outcomes and grouped once
    # (a unit without outcomes keeps one row of NULLs, counted nowhere), instead of summing
    # the joined outcomes per unit and joining the sums back to the exposures (which built
    # the first exposures twice).
    j = exposed.left_join(o, "unit_id")
    has = j.metric.notnull()
    after = j.ts >= j.t0
    late = (j.ts >= j.t0 + ibis.interval(microseconds=int(window.total_seconds() * 1e6))
            if window else ibis.literal(False))
    cases: list[tuple[ir.BooleanValue, str]] = [
        (~has, "none"), (j.ts.isnull() | j.t0.isnull(), "untimed"), (after & late, "late"),
        (after, "post")]
    if lookback:
        span = ibis.interval(microseconds=int(lookback.total_seconds() * 1e6))
        cases.append((j.ts >= j.t0 - span, "pre"))
    j = j.select("experiment", "unit_id", "variant", "single", "metric", "value",
                 phase=ibis.cases(*cases, else_="early"))
    pivot = _pivot(j, metrics, pre=(j.phase == "pre") if lookback else None, pre_column=None,
                   post=j.phase.isin(["post", "untimed"]), counts=True)
    u = j.group_by(["experiment", "unit_id"]).aggregate(
        variant=j.variant.arbitrary(), single=j.single.arbitrary(), **pivot,
        early=j.count(where=j.phase == "early"), late=j.count(where=j.phase == "late"),
        untimed=j.count(where=j.phase == "untimed")).drop("unit_id")
    # a unit has a finite row of metric i when it has more rows than non-finite ones
    return u.mutate(**{f"f_{i}": ibis.ifelse(u[f"r_{i}"] == 0, ibis.null("boolean"),
                                            u[f"r_{i}"] > u[f"b_{i}"])
                       for i in range(len(metrics))})


def _table_units(engine: Engine, metrics: Sequence[str], name: str, has_pre: bool,
                 clean: frozenset[str]) -> ir.Table:
    import ibis

    t = engine.table(INPUT_TABLE)
    t = t.filter(t.unit_id.notnull() & t.variant.notnull())
    pivot = _pivot(t, metrics, pre=None, pre_column="pre_value" if has_pre else None,
                   post=ibis.literal(True), counts=False, clean=clean)
    return t.group_by("unit_id").aggregate(
        experiment=ibis.literal(name, type="string"), variant=t.variant.min(),
        single=t.variant.min() == t.variant.max(), **pivot).drop("unit_id")


def _table_counts(engine: Engine) -> dict[tuple[str, str], tuple[int, int]]:
    t = engine.table(INPUT_TABLE)
    t = t.filter(t.unit_id.notnull() & t.variant.notnull() & t.metric.notnull())
    rows = engine.rows(t.group_by(["variant", "metric"]).aggregate(
        rows=t.count(), bad=t.count(where=~_finite(t.value))))
    return {(str(r["variant"]), str(r["metric"])): (int(r["rows"]), int(r["bad"])) for r in rows}


def _ok(u: ir.Table, i: int) -> ir.BooleanValue:
    """A unit is in metric i unless every one of its rows was non-finite."""
    return u[f"f_{i}"].isnull() | u[f"f_{i}"]


def _clip(u: ir.Table, metrics: Sequence[str], level: float) -> ir.Table:
    single = u.filter(u.single)
    bounds = single.group_by("experiment").aggregate(**{
        f"{side}_{i}": single[f"v_{i}"].quantile(q, where=_ok(single, i))
        for i in range(len(metrics)) for side, q in (("lo", 1.0 - level), ("hi", level))})
    joined = u.join(bounds, "experiment")
    return joined.mutate(**{
        f"v_{i}": joined[f"v_{i}"].clip(lower=joined[f"lo_{i}"], upper=joined[f"hi_{i}"])
        for i in range(len(metrics))})


def gather_engine(
    engine: Engine,
    *,
    source: str,
    name: str,
    has_pre: bool,
    since: Any,
    until: Any,
    winsorize: float | None,
    ratios: Mapping[str, tuple[str, str]],
    scope: VersionScope | None = None,
    window: timedelta | None = None,
    lookback: timedelta | None = None,
    passes: int | None = None,
) -> Gathered:
    """:func:`analysis.exposure.gather` as one Ibis expression run by ``engine``.

    On DuckDB, recorded units past twice the memory limit are aggregated in passes over
    shares of the unit ids (:func:`analysis.exposure.unit_passes`, as the SQL path does) and
    the per-variant sums added; Spark spills its aggregates itself. Winsorized past the cap,
    and always on Spark, the clip bounds come from sorts that spill (:func:`_winsorized`)."""

    table = INPUT_TABLE if source == "table" else "outcomes"
    shifts = _shifts(engine, table, has_pre)
    metrics = list(shifts)
    counts: dict[tuple[str, str], tuple[int, int]] | None = None
    if source == "table":
        counts = _table_counts(engine)
        dirty = {m for (_, m), (_, bad) in counts.items() if bad}
        u = _table_units(engine, metrics, name, has_pre, frozenset(metrics) - dirty)
        lookback = None
    else:
        has_pre = lookback is not None
    parts = 1
    if source != "table" and engine.con is not None:
        parts = passes or unit_passes(engine.con)
    found: list[dict[str, Any]] = []
    if winsorize is not None and metrics and (parts > 1 or engine.con is None):
        table_units = u if source == "table" else None

        def units(k: int) -> ir.Table:
            return table_units if table_units is not None else _recorded_units(
                engine, metrics, since=since, until=until, scope=scope, window=window,
                lookback=lookback, part=(k, parts))

        found = _winsorized(engine, parts, winsorize, len(metrics), units, lambda clipped:
                            _per_arm(clipped, metrics, shifts, None, has_pre, counts is None,
                                     lookback, ratios))
        parts = 0
    for k in range(parts):
        if source != "table":
            u = _recorded_units(engine, metrics, since=since, until=until, scope=scope,
                                window=window, lookback=lookback, part=(k, parts))
        found += engine.rows(_per_arm(u, metrics, shifts, winsorize, has_pre, counts is None,
                                      lookback, ratios))
    if parts > 1:
        found = add_passes(found, ("experiment", "arm"), lambda name: name.startswith("bin_"))
    usable = _usable(metrics, ratios)
    return _assemble(found, metrics, shifts, usable, counts, counts is None,
                     lookback is not None)


def _winsorized(
    engine: Engine, parts: int, level: float, count: int, units: Callable[[int], ir.Table],
    per_arm: Callable[[ir.Table], ir.Table],
) -> list[dict[str, Any]]:
    """Winsorizing that never holds an experiment's units at once: the units of ``parts``
    passes kept as one table (DuckDB: a temporary table, Spark: a view persisted on disk;
    both spill), each metric's clip bounds from order statistics a sort picks
    (:func:`analysis.distribution_engine.linear_quantiles`; DuckDB's ``quantile_cont`` and
    Spark's exact ``percentile`` hold every unit), and one aggregate of the clipped units."""
    try:
        for k in range(parts):
            table = engine.materialize(units(k), UNITS_TABLE, append=k > 0)
        bounds = _clip_bounds(engine, table, count, level)
        return engine.rows(per_arm(_clip_literal(table, bounds, count)))
    finally:
        engine.drop(UNITS_TABLE)


def _clip_bounds(engine: Engine, u: ir.Table, count: int,
                 level: float) -> dict[str, list[float | None]]:
    """experiment -> [lo_0, hi_0, lo_1, ...]: each metric's [1 - level, level] linear
    quantiles over the experiment's single-variant units in the metric (None: no such
    unit), for every experiment with a single-variant unit."""
    from analysis.distribution_engine import linear_quantiles

    single = u.filter(u.single)
    bounds: dict[str, list[float | None]] = {
        str(r["experiment"]): [] for r in engine.rows(single.select("experiment").distinct())}
    for i in range(count):
        kept = single.filter(_ok(single, i)).select("experiment", v=single[f"v_{i}"])
        found = linear_quantiles(engine, kept, "v", ["experiment"], [1.0 - level, level])
        for experiment, values in bounds.items():
            values += found.get((experiment,)) or [None, None]
    return bounds


def _clip_literal(u: ir.Table, bounds: Mapping[str, Sequence[float | None]],
                  count: int) -> ir.Table:
    """``u``'s values clipped to their experiment's bounds, given as literals (the units of
    experiments without bounds left out, as the join of :func:`_clip` leaves them)."""
    import ibis

    none = ibis.null("float64")
    u = u.filter(u.experiment.isin(list(bounds)) if bounds else ibis.literal(False))

    def side(j: int) -> Any:
        given = {e: b[j] for e, b in bounds.items() if b[j] is not None}
        return u.experiment.substitute(given, else_=none) if given else none

    return u.mutate(**{f"v_{i}": u[f"v_{i}"].clip(lower=side(2 * i), upper=side(2 * i + 1))
                       for i in range(count)})


def _usable(metrics: Sequence[str],
            ratios: Mapping[str, tuple[str, str]]) -> dict[str, tuple[int, int]]:
    index = {m: i for i, m in enumerate(metrics)}
    return {k: (index[a], index[b]) for k, (a, b) in ratios.items()
            if a in index and b in index}


def _per_arm(u: ir.Table, metrics: Sequence[str], shifts: Mapping[str, tuple[float, float]],
             winsorize: float | None, has_pre: bool, recorded: bool,
             lookback: timedelta | None, ratios: Mapping[str, tuple[str, str]]) -> ir.Table:
    """The per-(experiment, arm) sufficient statistics of the units ``u``."""
    import ibis

    if winsorize is not None and metrics:
        u = _clip(u, metrics, winsorize)
    u = u.mutate(arm=ibis.ifelse(u.single, u.variant, ibis.null("string")))
    aggs: dict[str, Any] = {"n": u.count()}
    for i, m in enumerate(metrics):
        ok = _ok(u, i)
        v = u[f"v_{i}"] - shifts[m][0]
        aggs |= {f"n_{i}": u.count(where=ok), f"s_{i}": v.sum(where=ok),
                 f"ss_{i}": (v * v).sum(where=ok)}
        if has_pre:  # without a covariate its sums are 0
            p = u[f"p_{i}"] - shifts[m][1]
            aggs |= {f"sp_{i}": p.sum(where=ok), f"spp_{i}": (p * p).sum(where=ok),
                     f"sx_{i}": (v * p).sum(where=ok)}
        aggs |= {f"bin_{i}": ((u[f"v_{i}"] == 0) | (u[f"v_{i}"] == 1)).all(where=ok),
                 f"drop_{i}": u.count(where=u[f"f_{i}"].notnull() & ~u[f"f_{i}"])}
        if recorded:
            aggs |= {f"bad_{i}": u[f"b_{i}"].sum(), f"rows_{i}": u[f"r_{i}"].sum()}
            if lookback is not None:
                aggs[f"pre_{i}"] = u[f"c_{i}"].sum()
    for j, (a, b) in enumerate(_usable(metrics, ratios).values()):
        ok = _ok(u, a) & _ok(u, b)
        y = u[f"v_{a}"] - shifts[metrics[a]][0]
        x = u[f"v_{b}"] - shifts[metrics[b]][0]
        aggs |= {f"rn_{j}": u.count(where=ok), f"ry_{j}": y.sum(where=ok),
                 f"ryy_{j}": (y * y).sum(where=ok), f"rx_{j}": x.sum(where=ok),
                 f"rxx_{j}": (x * x).sum(where=ok), f"rxy_{j}": (x * y).sum(where=ok)}
    if recorded:
        aggs |= {"early": u.early.sum(), "late": u.late.sum(), "untimed": u.untimed.sum()}
    return u.group_by(["experiment", "arm"]).aggregate(**aggs)


def _num(value: Any) -> float:
    return float(value) if value is not None else 0.0


def _assemble(rows: list[dict[str, Any]], metrics: Sequence[str],
              shifts: Mapping[str, tuple[float, float]], usable: Mapping[str, tuple[int, int]],
              counts: Mapping[tuple[str, str], tuple[int, int]] | None, recorded: bool,
              has_lookback: bool) -> Gathered:
    g = Gathered()
    for row in rows:
        exp, variant, n = str(row["experiment"]), row["arm"], int(row["n"])
        if recorded:
            timing = g.timing.setdefault(exp, {"early": 0, "late": 0, "untimed": 0})
            for key in ("early", "late", "untimed"):
                timing[key] += int(row[key] or 0)
        if variant is None:
            g.excluded[exp] = n
            continue
        variant = str(variant)
        g.units.setdefault(exp, {})[variant] = n
        for i, m in enumerate(metrics):
            if recorded:
                rows_i, bad = int(row[f"rows_{i}"] or 0), int(row[f"bad_{i}"] or 0)
            else:
                assert counts is not None
                rows_i, bad = counts.get((variant, m), (0, 0))
            binary = row[f"bin_{i}"]
            g.metrics[(exp, variant, m)] = MetricSums(
                int(row[f"n_{i}"] or 0), _num(row[f"s_{i}"]), _num(row[f"ss_{i}"]),
                _num(row.get(f"sp_{i}")), _num(row.get(f"spp_{i}")), _num(row.get(f"sx_{i}")),
                bool(binary) if binary is not None else True, bad, rows_i,
                int(row[f"drop_{i}"] or 0),
                int(row[f"pre_{i}"] or 0) if recorded and has_lookback else 0, *shifts[m])
        for j, (ratio, (a, b)) in enumerate(usable.items()):
            y, y2, x, x2, xy = (_num(row[f"{k}_{j}"]) for k in ("ry", "ryy", "rx", "rxx", "rxy"))
            g.ratios[(exp, variant, ratio)] = RatioSums(
                int(row[f"rn_{j}"] or 0), y, y2, x, x2, xy, shifts[metrics[a]][0],
                shifts[metrics[b]][0])
    return g
