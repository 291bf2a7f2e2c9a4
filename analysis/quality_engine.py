"""The quality report's row work as Ibis expressions: the same figures on DuckDB and Spark.

Mirrors :func:`analysis.quality.analyze_quality` rule for rule (a request's latest outcome,
one prediction per model and request, per-request losses, calibration bins, time windows,
paired shadow-vs-primary tests). The AUC and its DeLong interval, which the DuckDB path
computes in numpy from every score, are reductions here: per model, each distinct score's
positives and negatives, running sums of them (a window ordered by score) give every
positive's share of negatives below it (DeLong's V10, ties counting half) and every
negative's share of positives above it (V01); their means are the AUC and their variances,
summed about the means in the engine, DeLong's. The paired DeLong test joins each request's
V10/V01 under both models and sums their centred cross products. A few numbers per model
or pair come back, whatever the number of requests.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.auc_engine import auc_sums, paired_auc_sums
from analysis.engine import Engine
from analysis.experiment_engine import _finite, _time_bounds
from analysis.load import AnalysisSourceError
from analysis.quality import (
    _BINS,
    _EPS,
    _LOSSES,
    _UNITS,
    _WINDOW,
    Kind,
    ModelQuality,
    PairedTest,
    QualityReport,
    _paired_t,
    _regression,
    binary_quality,
    paired_auc_test,
)
from analysis.stats import finite_or_none

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = ["analyze_quality_engine"]

#: DuckDB's ``time_bucket`` origin for widths in minutes, hours and days.
_ORIGIN = datetime(2000, 1, 3)
_SECONDS = {"m": 60, "h": 3600, "d": 86400}
_KEYS = ["route", "backend", "version", "bucket"]


def _width(window: str | None) -> int | None:
    """A window (``1h``, ``30m``, ``1d``) in seconds, checked as the DuckDB path checks it."""
    if window is None:
        return None
    match = _WINDOW.match(window.strip())
    if not match or int(match.group(1)) == 0 or match.group(2) not in _UNITS:
        raise AnalysisSourceError(f"window {window!r}: use a count and a unit, e.g. 1h or 1d")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def analyze_quality_engine(
    engine: Engine, *, metric: str = "label", kind: Kind = "binary",
    since: str | datetime | None = None, until: str | datetime | None = None,
    window: str | None = None, route: str | None = None,
) -> QualityReport:
    """:func:`analysis.quality.analyze_quality` with its row work in ``engine``."""
    params: dict[str, Any] = {"metric": metric, "kind": kind, "since": since, "until": until,
                              "window": window, "route": route}
    if kind not in _LOSSES:
        raise AnalysisSourceError(f"kind {kind!r}: use binary or regression")
    width = _width(window)
    if missing := {"calls", "outcomes"} - engine.names():
        return QualityReport(kind, metric, params, (), (), (),
                             f"the source has no {' or '.join(sorted(missing))} table")
    one = _extract(engine, metric, kind, since, until, route)
    models = _models(engine, one, kind, None)
    windows = _models(engine, one, kind, width) if width else []
    comparisons = _comparisons(engine, one, kind)
    params["invalid_outcomes"] = _invalid(engine, metric) if kind == "binary" else 0
    message = None if models else f"no successful call answered a {metric!r} outcome"
    return QualityReport(kind, metric, params, tuple(models), tuple(windows),
                         tuple(comparisons), message)


def _invalid(engine: Engine, metric: str) -> int:
    o = engine.table("outcomes")
    bad = o.filter((o.metric == metric) & o.request_id.notnull() & ~o.value.isin([0.0, 1.0]))
    return int(engine.scalar(bad.request_id.nunique()) or 0)


def _extract(engine: Engine, metric: str, kind: Kind, since: Any, until: Any,
             route: str | None) -> ir.Table:
    """One row per (route, backend, version, request) with its outcome ``y``, prediction,
    first call time, roles and per-request losses (the DuckDB path's temporary table)."""
    import ibis

    o = engine.table("outcomes")
    when = (ibis.coalesce(o.ts, o.received_at) if "received_at" in engine.columns("outcomes")
            else o.ts)
    o = o.filter((o.metric == metric) & o.request_id.notnull() & o.value.notnull())
    lab = o.group_by("request_id").aggregate(y=o.value.argmax(when)).rename(l_rid="request_id")
    calls = engine.table("calls")
    cols = engine.columns("calls")
    cond = ibis.coalesce(calls.status, ibis.literal("OK")) == "OK"
    cond &= _time_bounds(calls, since, until)
    if route is not None:
        cond &= calls.route == ibis.literal(route, type="string")
    served = calls.served if "served" in cols else ibis.literal(False)
    primary = ((calls.role == "primary")
               | (served & calls.role.isin(["variant", "stable", "canary"]))).fill_null(False)
    pred: Any = calls.score
    if kind == "regression" and "output" in cols:
        pred = ibis.ifelse(calls.output.length() == 1, calls.output[0], calls.score)
    version = (ibis.coalesce(calls.backend_version, ibis.literal("")) if "backend_version" in cols
               else ibis.literal(""))
    c = calls.filter(cond).select(
        request_id=calls.request_id, route=calls.route, backend=calls.backend, version=version,
        role=calls.role, is_primary=primary, ts=calls.ts, pred=pred.cast("float64"))
    c = c.inner_join(lab, c.request_id == lab.l_rid)
    c = c.filter(_finite(c.pred))
    one = c.group_by(["route", "backend", "version", "request_id"]).aggregate(
        ts=c.ts.min(), pred=c.pred.argmin(c.ts), is_primary=c.is_primary.any(),
        is_shadow=(c.role == "shadow").any(), y=c.y.arbitrary(),
        roles=c.role.collect(distinct=True))
    if kind == "binary":
        one = one.filter(one.y.isin([0.0, 1.0]))
        p_ok = one.pred.between(0.0, 1.0)
        clip = ibis.least(ibis.greatest(one.pred, _EPS), 1 - _EPS)
        none = ibis.null("float64")
        return one.mutate(
            p_ok=p_ok,
            ll=ibis.ifelse(p_ok, -(one.y * clip.ln() + (1 - one.y) * (1 - clip).ln()), none),
            br=ibis.ifelse(p_ok, (one.pred - one.y) * (one.pred - one.y), none),
            bin=ibis.least((one.pred * _BINS).floor(), _BINS - 1).cast("int32"))
    one = one.filter(_finite(one.y))
    return one.mutate(p_ok=ibis.literal(True), ae=(one.pred - one.y).abs(),
                      se=(one.pred - one.y) * (one.pred - one.y))


def _bucketed(one: ir.Table, width: int | None) -> ir.Table:
    """``one`` with its time bucket as a whole number of widths since DuckDB's origin
    (NULL without a window): the group key; :func:`_bucket_time` gives the time back."""
    import ibis

    if width is None:
        return one.mutate(bucket=ibis.null("int64"))
    origin = int((_ORIGIN - datetime(1970, 1, 1)).total_seconds())
    secs = one.ts.epoch_seconds().cast("float64")
    return one.mutate(bucket=((secs - origin) / width).floor().cast("int64"))


def _bucket_time(bucket: Any, width: int | None) -> datetime | None:
    return None if bucket is None or width is None else (
        _ORIGIN + timedelta(seconds=int(bucket) * width))


def _models(engine: Engine, one: ir.Table, kind: Kind, width: int | None) -> list[ModelQuality]:
    t = _bucketed(one, width)
    aggs: dict[str, Any] = {"n": t.count()}
    for _, col in _LOSSES[kind]:
        aggs[f"m_{col}"] = t[col].mean()
        aggs[f"v_{col}"] = t[col].var(how="sample")
    if kind == "binary":
        aggs |= {"positives": t.y.sum().cast("int64"), "n_bad": t.count(where=~t.p_ok)}
    records = engine.rows(t.aggregate(by=_KEYS, **aggs))
    roles_t = t.select(*_KEYS, role=t.roles.unnest()).distinct()
    roles: dict[tuple[Any, ...], set[str]] = {}
    for row in engine.rows(roles_t):
        roles.setdefault(tuple(row[k] for k in _KEYS), set()).add(str(row["role"]))
    records.sort(key=lambda r: (r["route"], r["backend"], r["version"], r["bucket"] is None,
                                r["bucket"] or 0))
    for r in records:
        r["roles"] = sorted(roles.get(tuple(r[k] for k in _KEYS), set()))
    if kind == "regression":
        for r in records:
            r["bucket"] = _bucket_time(r["bucket"], width)
        return [_regression(r) for r in records]
    bins = _reliability(engine, t)
    aucs = auc_sums(engine, t, _KEYS)
    out = []
    for r in records:
        key = tuple(r[k] for k in _KEYS)
        r["bucket"] = _bucket_time(r["bucket"], width)
        auc, se = aucs.get(key) or (None, None)
        out.append(binary_quality(r, auc, se, bins.get(key, [])))
    return out


def _reliability(engine: Engine, t: ir.Table) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    ok = t.filter(t.p_ok)
    agg = ok.aggregate(by=[*_KEYS, "bin"], n=ok.count(), mean_score=ok.pred.mean(),
                       observed=ok.y.mean())
    rows = sorted(engine.rows(agg), key=lambda r: int(r["bin"]))
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        b = int(r["bin"])
        out.setdefault(tuple(r[k] for k in _KEYS), []).append({
            "low": b / _BINS, "high": (b + 1) / _BINS, "n": int(r["n"]),
            "mean_score": float(r["mean_score"]), "observed": float(r["observed"])})
    return out


def _comparisons(engine: Engine, one: ir.Table, kind: Kind) -> list[PairedTest]:
    cols = _LOSSES[kind]
    s = one.filter(one.is_shadow & ~one.is_primary)
    p = one.filter(one.is_primary).view()
    j = s.inner_join(p, (p.route == s.route) & (p.request_id == s.request_id))
    j = j.select(route=s.route, primary=p.backend.concat("@", p.version),
                 shadow=s.backend.concat("@", s.version), ps=p.pred, ss=s.pred, y=s.y,
                 **{f"p_{c}": p[c] for _, c in cols}, **{f"s_{c}": s[c] for _, c in cols})
    keys = ["route", "primary", "shadow"]
    aggs: dict[str, Any] = {"n": j.count()}
    for _, c in cols:
        d = j[f"s_{c}"] - j[f"p_{c}"]
        aggs |= {f"n_{c}": d.count(), f"p_{c}": j[f"p_{c}"].mean(),
                 f"s_{c}": j[f"s_{c}"].mean(), f"m_{c}": d.mean(),
                 f"v_{c}": d.var(how="sample")}
    rows = sorted(engine.rows(j.aggregate(by=keys, **aggs)),
                  key=lambda r: tuple(r[k] for k in keys))
    out: list[PairedTest] = []
    for r in rows:
        for name, c in cols:
            out.append(_paired_t(str(r["route"]), str(r["primary"]), str(r["shadow"]), name,
                                 int(r[f"n_{c}"]), finite_or_none(r[f"p_{c}"]),
                                 finite_or_none(r[f"s_{c}"]), finite_or_none(r[f"m_{c}"]),
                                 finite_or_none(r[f"v_{c}"])))
    if kind == "binary" and rows:
        found = paired_auc_sums(engine, j, keys)
        for r in rows:
            key = (r["route"], r["primary"], r["shadow"])
            out.append(_paired_auc(str(r["route"]), str(r["primary"]), str(r["shadow"]),
                                   int(r["n"]), found.get(key)))
    return out


def _paired_auc(route: str, primary: str, shadow: str, n: int,
                fig: tuple[int, float, float, float | None] | None) -> PairedTest:
    """:func:`analysis.quality._paired_auc` from the engine's sums."""
    if fig is None or fig[0] in (0, n):
        return paired_auc_test(route, primary, shadow, n, None)
    _, a_p, a_s, var = fig
    se = float(np.sqrt(var)) if var is not None and var > 1e-300 else None
    return paired_auc_test(route, primary, shadow, n, (a_p, a_s, se))
