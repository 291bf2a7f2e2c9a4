"""The canary readout's row work as Ibis expressions: the same readout on DuckDB and Spark.

Mirrors :func:`analysis.canary_readout.analyze_canaries` rule for rule: canary state changes
become steps per route, each canary request falls in the step whose span holds it (DuckDB's
``ASOF`` join written as a range join on ``[ts, next ts)``), units are counted in the arm of
their first exposure within the step, and the per-arm sums (requests, errors, latency and
their cross products for the delta method) and per-metric outcome sums come back, a few
numbers per (route, step, arm). Latency quantiles are exact order statistics
(:func:`analysis.distribution_engine.linear_quantiles`); the inference is
:mod:`analysis.canary_readout`'s own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from analysis.canary_readout import METHOD, CanaryReport, _assemble
from analysis.distribution_engine import linear_quantiles
from analysis.engine import Engine
from analysis.experiment_engine import _finite, _kept, _shifts, _time_bounds, scope_engine
from analysis.exposure import CANARY_EXPERIMENT
from analysis.load import parse_time
from analysis.noise_floor import routes_by_match
from analysis.significance import DEFAULT_ALPHA

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = ["analyze_canaries_engine", "route_configs"]

_FAR = datetime(9999, 12, 31)


def route_configs(engine: Engine) -> dict[str, dict[str, Any]]:
    """:func:`analysis.noise_floor.newest_route_configs` from the engine's configs."""
    if not engine.has("configs") or "config_json" not in engine.columns("configs"):
        return {}
    c = engine.table("configs")
    rows = engine.rows(c.select("config_json", "ts"))
    # newest first, NULLs last (DuckDB's ORDER BY ts DESC NULLS LAST; both sorts stable)
    rows.sort(key=lambda r: r["ts"] or datetime.min, reverse=True)
    rows.sort(key=lambda r: r["ts"] is None)
    return routes_by_match(row["config_json"] for row in rows)


def _steps(engine: Engine) -> tuple[ir.Table, ir.Table]:
    """Canary state changes as segments [ts, next ts) per route, and the steps they make."""
    import ibis

    cols = engine.columns("canary_state") if engine.has("canary_state") else set()
    if {"route", "ts", "step_index", "state"} <= cols:
        c = engine.table("canary_state")
        c = c.filter(c.ts.notnull())
        seg = c.select(s_route=c.route, step_index=c.step_index.cast("int32"), state=c.state,
                       s_ts=c.ts, next_ts=c.ts.lead().over(group_by=c.route, order_by=c.ts))
    else:  # no recorded state: every request in one step of its route (index NULL)
        r = engine.table("requests")
        seg = r.filter(ibis.literal(False)).select(
            s_route=r.route, step_index=ibis.null("int32"), state=ibis.null("string"),
            s_ts=r.ts, next_ts=r.ts)
    far = ibis.literal(_FAR, type="timestamp")
    steps = seg.group_by(["s_route", "step_index"]).aggregate(
        since=seg.s_ts.min(), last=seg.next_ts.max(),
        open=seg.count(where=seg.next_ts.isnull()) > 0,
        until=ibis.coalesce(seg.next_ts, far).max(), state=seg.state.argmax(seg.s_ts))
    return seg, steps


def analyze_canaries_engine(
    engine: Engine, *, since: str | datetime | None = None, until: str | datetime | None = None,
    window: timedelta | None = None, version: str | None = None, all_versions: bool = False,
    alpha: float = DEFAULT_ALPHA,
) -> CanaryReport | None:
    """:func:`analysis.canary_readout.analyze_canaries` with its row work in ``engine``."""
    import ibis

    if not engine.has("requests"):
        return None
    r = engine.table("requests")
    canary = (r.exposed & (r.experiment == CANARY_EXPERIMENT)
              & r.variant.isin(["stable", "canary"]) & r.unit_id.notnull())
    scope = scope_engine(engine, "requests", canary & _time_bounds(r, since, until),
                         version=version, all_versions=all_versions)
    latency = (r.latency_ms.cast("float64") if "latency_ms" in engine.columns("requests")
               else ibis.null("float64"))
    req = r.filter(canary & _time_bounds(r, since, until) & _kept(r, scope)).select(
        route=r.route, unit_id=r.unit_id, variant=r.variant, ts=r.ts, status=r.status,
        latency_ms=latency)
    seg, steps = _steps(engine)
    far = ibis.literal(_FAR, type="timestamp")
    j = req.left_join(seg, (seg.s_route == req.route) & (req.ts >= seg.s_ts)
                      & (req.ts < ibis.coalesce(seg.next_ts, far)))
    req = j.select("route", "step_index", "unit_id", "variant", "ts", "status", "latency_ms")
    fin = _finite(req.latency_ms)
    units = req.group_by(["route", "step_index", "unit_id"]).aggregate(
        variant=req.variant.argmin(req.ts), t0=req.ts.min(),
        switched=req.variant.min() != req.variant.max(), n_req=req.count().cast("float64"),
        n_err=req.count(where=~req.status.identical_to(ibis.literal("OK"))).cast("float64"),
        lat=req.latency_ms.sum(where=fin).fill_null(0.0),
        n_lat=req.count(where=fin).cast("float64"))
    st = steps.rename(st_route="s_route", st_index="step_index")
    us = units.left_join(st, (st.st_route == units.route)
                         & st.st_index.identical_to(units.step_index))
    arm = us.aggregate(
        by=["route", "step_index", "variant"], state=us.state.arbitrary(),
        since=us.since.arbitrary(), last=us.last.arbitrary(), open=us.open.arbitrary(),
        units=us.count(), switched=us.switched.cast("int64").sum(), n_req=us.n_req.sum(),
        n_req2=(us.n_req * us.n_req).sum(), n_err=us.n_err.sum(),
        n_err2=(us.n_err * us.n_err).sum(), n_re=(us.n_req * us.n_err).sum(),
        n_lat=us.n_lat.sum(), n_lat2=(us.n_lat * us.n_lat).sum(), lat=us.lat.sum(),
        lat2=(us.lat * us.lat).sum(), lat_n=(us.lat * us.n_lat).sum())
    per_arm = [
        (a["route"], a["step_index"], a["state"], a["since"],
         None if a["open"] or a["open"] is None else a["last"], a["variant"], a["units"],
         a["switched"], a["n_req"], a["n_req2"], a["n_err"], a["n_err2"], a["n_re"],
         a["n_lat"], a["n_lat2"], a["lat"], a["lat2"], a["lat_n"])
        for a in engine.rows(arm)]
    if not per_arm:
        return None
    per_arm.sort(key=lambda a: (a[0], a[1] is None, a[1] or 0, a[5]))
    u = units.select(u_route="route", u_index="step_index", u_unit="unit_id", arm="variant")
    timed = req.filter(fin)
    timed = timed.inner_join(u, (u.u_route == timed.route)
                             & u.u_index.identical_to(timed.step_index)
                             & (u.u_unit == timed.unit_id))
    timed = timed.select("route", "step_index", "arm", "latency_ms")
    quantiles = {key: {"p50": q[0], "p99": q[1]} for key, q in linear_quantiles(
        engine, timed, "latency_ms", ["route", "step_index", "arm"], [0.5, 0.99]).items()}
    outcomes = _outcome_sums(engine, units, steps, window, parse_time(until))
    return _assemble(per_arm, quantiles, outcomes, route_configs(engine), alpha,
                     scope.to_dict(), [METHOD, scope.note])


def _outcome_sums(engine: Engine, units: ir.Table, steps: ir.Table, window: timedelta | None,
                  end: datetime | None) -> list[tuple[Any, ...]]:
    """(route, step, variant, metric, units with a finite row, units left out, sum, sum of
    squares, non-finite rows, shift): :func:`analysis.canary_readout._outcome_sums`."""
    import ibis

    if not engine.has("outcomes") or not {"unit_id", "metric", "value", "ts"} <= set(
            engine.columns("outcomes")):
        return []
    o = engine.table("outcomes")
    r = engine.table("requests")
    orphan_ids = o.filter(o.unit_id.isnull()).select("request_id").distinct()
    orphan = r.filter(r.request_id.isin(orphan_ids.request_id))
    orphan = orphan.group_by("request_id").aggregate(o_unit=orphan.unit_id.arbitrary())
    orphan = orphan.rename(o_rid="request_id")
    o = o.left_join(orphan, o.unit_id.isnull() & (o.request_id == orphan.o_rid))
    o = o.filter(o.metric.notnull() & o.ts.notnull()).select(
        o_unit=ibis.coalesce(o.unit_id, o.o_unit), metric=o.metric, value=o.value, o_ts=o.ts)
    st = steps.select(st_route="s_route", st_index="step_index", st_until="until")
    us = units.left_join(st, (st.st_route == units.route)
                         & st.st_index.identical_to(units.step_index))
    cond = ((o.o_unit == us.unit_id) & (o.o_ts >= us.t0)
            & (o.o_ts < ibis.coalesce(us.st_until, ibis.literal(_FAR, type="timestamp"))))
    if window is not None:
        cond &= o.o_ts < us.t0 + ibis.interval(seconds=int(window.total_seconds()))
    if end is not None:
        cond &= o.o_ts < ibis.literal(end, type="timestamp")
    m = us.inner_join(o, cond)
    fin = _finite(m.value)
    per_unit = m.group_by(["route", "step_index", "variant", "unit_id", "metric"]).aggregate(
        v=m.value.sum(where=fin).fill_null(0.0), f=m.count(where=fin) > 0,
        bad=m.count(where=~fin))
    shifts = {m: v for m, (v, _) in _shifts(engine, "outcomes", False).items()}
    shift = (per_unit.metric.substitute(shifts, else_=0.0) if shifts
             else ibis.literal(0.0, type="float64"))
    per_unit = per_unit.mutate(d=per_unit.v - shift, sh=shift)
    agg = per_unit.aggregate(
        by=["route", "step_index", "variant", "metric"], n_f=per_unit.count(where=per_unit.f),
        n_out=per_unit.count(where=~per_unit.f), s=per_unit.d.sum(where=per_unit.f),
        s2=(per_unit.d * per_unit.d).sum(where=per_unit.f), bad=per_unit.bad.sum(),
        sh=per_unit.sh.max())
    return [(x["route"], x["step_index"], x["variant"], x["metric"], x["n_f"], x["n_out"],
             x["s"], x["s2"], x["bad"], x["sh"]) for x in engine.rows(agg)]
