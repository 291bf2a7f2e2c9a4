"""The drift report's row work as Ibis expressions: the same figures on DuckDB and Spark.

Mirrors :func:`analysis.drift.analyze_drift`: the recorded input tensors are unnested in
the engine (``posexplode`` on Spark), each feature's windows are reduced to counts, the
exact two-sample figures of :func:`analysis.distribution_engine.sample_figures` (KS,
Wasserstein, PSI on reference deciles, Sturges histograms for Jensen-Shannon) and
category counts; the tests and verdicts run in Python on those.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from analysis.distribution_engine import sample_figures, shift_of
from analysis.drift import (
    DriftMethod,
    DriftReport,
    FeatureDrift,
    Window,
    _categorical_shift,
    _flags,
    _js,
    _notes,
    _window,
    check_drift_options,
    drift_report,
    feature_counts,
)
from analysis.engine import Engine
from analysis.experiment_engine import _finite, _kept, _time_bounds, scope_engine

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = ["analyze_drift_engine"]


def analyze_drift_engine(
    engine: Engine, *, reference: Window | None = None, current: Window | None = None,
    route: str | None = None, ranges: dict[str, tuple[float, float]] | None = None,
    since: str | datetime | None = None, until: str | datetime | None = None,
    method: DriftMethod = "auto", threshold: float | None = None,
    version: str | None = None, all_versions: bool = False,
) -> DriftReport:
    """:func:`analysis.drift.analyze_drift` with its row work in ``engine``."""
    import ibis

    check_drift_options(method, threshold)
    ranges = dict(ranges or {})
    notes = _notes(method, threshold)
    if not engine.has("requests"):
        return DriftReport({}, {}, (), "the source has no requests table", notes)
    r = engine.table("requests")
    cond = r.inputs.notnull() & _time_bounds(r, since, until)
    if route is not None:
        cond &= r.route == ibis.literal(route, type="string")
    scope = scope_engine(engine, "requests", cond, version=version, all_versions=all_versions)
    cond &= _kept(r, scope)
    notes = (*notes, scope.note)
    span = engine.rows(r.filter(cond).aggregate(lo=r.ts.min(), hi=r.ts.max()))
    if not span or span[0]["lo"] is None:
        return DriftReport({}, {}, (), "no request has decoded inputs", notes, scope.to_dict())
    start, end = span[0]["lo"], span[0]["hi"]
    middle = start + (end - start) / 2
    ref = _window(reference, (start, middle))
    cur = _window(current, (middle, end + timedelta(microseconds=1)))
    picked = r.filter(cond)
    wins = []
    for name, (lo, hi) in (("reference", ref), ("current", cur)):
        w = picked.filter((picked.ts >= ibis.literal(lo, type="timestamp"))
                          & (picked.ts < ibis.literal(hi, type="timestamp")))
        wins.append(w.select("route", "inputs", win=ibis.literal(name)))
    req = wins[0].union(wins[1], distinct=False)
    n_requests: dict[str, dict[str, int]] = {}
    for row in engine.rows(req.aggregate(by=["win", "route"], n=req.count())):
        n_requests.setdefault(str(row["win"]), {})[str(row["route"])] = int(row["n"])
    rows = _elements(req)
    return drift_report(_features(engine, rows, n_requests, ranges), method, threshold, ref,
                        cur, n_requests, notes, scope)


def _elements(req: ir.Table) -> ir.Table:
    """Every tensor element as (route, feature, kind, win, v, c), as drift._extract."""
    import ibis

    t = req.unnest("inputs")
    t = t.select("route", "win", tname=t.inputs["name"], data=t.inputs["data"],
                 text=t.inputs["text"])
    num = t.filter(t.data.length() > 0)
    num = num.mutate(width=num.data.length()).unnest("data", offset="i")
    cat = t.filter((t.text.length() > 0) & (t.data.isnull() | (t.data.length() == 0)))
    cat = cat.mutate(width=cat.text.length()).unnest("text", offset="i")

    def name(x: ir.Table) -> Any:
        return ibis.ifelse(x.width == 1, x.tname,
                           x.tname.concat("[", x.i.cast("string"), "]"))

    return num.select("route", "win", feature=name(num), kind=ibis.literal("numeric"),
                      v=num.data.cast("float64"), c=ibis.null("string")).union(
        cat.select("route", "win", feature=name(cat), kind=ibis.literal("categorical"),
                   v=ibis.null("float64"), c=cat.text.cast("string")), distinct=False)


def _features(engine: Engine, t: ir.Table, n_requests: dict[str, dict[str, int]],
              ranges: dict[str, tuple[float, float]]) -> list[FeatureDrift]:
    import ibis

    finite = _finite(t.v)
    valid = ((t.kind == "numeric") & finite) | t.c.notnull()
    outside: Any = ibis.literal(False)
    for feature, (lo, hi) in ranges.items():
        outside |= ((t.feature == ibis.literal(feature, type="string"))
                    & ((t.v < ibis.literal(float(lo), type="float64"))
                       | (t.v > ibis.literal(float(hi), type="float64"))))
    summary = t.aggregate(by=["route", "feature", "kind", "win"], valid=t.count(where=valid),
                          outside=t.count(where=finite & outside))
    grouped: dict[tuple[str, str, str], dict[str, tuple[int, int]]] = {}
    for row in sorted(engine.rows(summary),
                      key=lambda x: (x["route"], x["feature"], x["kind"], x["win"])):
        grouped.setdefault((row["route"], row["feature"], row["kind"]), {})[row["win"]] = (
            int(row["valid"]), int(row["outside"]))
    nums = t.filter((t.kind == "numeric") & finite)
    figures = sample_figures(engine, nums.select("route", "feature", "v",
                                                 first=nums.win == "reference"),
                             ["route", "feature"])
    cats = t.filter((t.kind == "categorical") & t.c.notnull())
    categories: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
    for row in engine.rows(cats.aggregate(by=["route", "feature", "c"],
                                          r=cats.count(where=cats.win == "reference"),
                                          k=cats.count(where=cats.win == "current"))):
        categories.setdefault((str(row["route"]), str(row["feature"])), {})[str(row["c"])] = (
            int(row["r"]), int(row["k"]))
    out: list[FeatureDrift] = []
    for (rt, feature, kind), by_win in grouped.items():
        result = feature_counts(rt, feature, kind, by_win, n_requests, ranges)
        if kind == "numeric":
            result = _numeric_shift(result, figures.get((rt, feature)))
        else:
            result = _categorical_shift(result, categories.get((rt, feature), {}))
        out.append(replace(result, flags=_flags(result)))
    return out


def _numeric_shift(result: FeatureDrift, fig: dict[str, Any] | None) -> FeatureDrift:
    import numpy as np

    n, m = (int(fig["n"]), int(fig["m"])) if fig else (0, 0)
    if n == 0 or m == 0:
        side = "reference" if n == 0 else "current"
        return replace(result, message=f"no finite values in the {side} window")
    assert fig is not None
    shift = shift_of(fig)
    ref_counts, cur_counts = fig["js_counts"]
    js = _js(np.asarray(ref_counts), np.asarray(cur_counts))
    message = shift.message if shift.wasserstein is None else None
    return replace(result, psi=shift.psi, ks_stat=shift.ks_stat, ks_p=shift.ks_p,
                   wasserstein=shift.wasserstein, js_distance=js, message=message)
