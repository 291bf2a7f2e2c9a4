"""The divergence report's row work as Ibis expressions: the same figures on DuckDB and Spark.

Mirrors :func:`analysis.divergence.analyze_divergence` rule for rule (version scope, the
pair join on request id, finite scores, tolerance, labels, replicas paired with what they
copy, unmatched shadow calls, byte-identical answers, latency and errors per backend) and
hands the same rows to its Python side. The score distributions (KS, Wasserstein,
Spearman, PSI, histograms) are the exact reductions of :mod:`analysis.distribution_engine`,
so nothing that grows with the rows comes back. Output vectors (Jensen-Shannon, whole
vectors) are :mod:`analysis.vector_engine`'s, recorded streams :mod:`analysis.stream_engine`'s.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from analysis.distribution import wilson_interval
from analysis.distribution_engine import linear_quantiles, score_figures
from analysis.divergence import (
    NOTES,
    DivergenceReport,
    PairDivergence,
    _apply_noise_floor,
    _attach_unmatched,
    _build_pair,
    report_message,
    without_identical,
)
from analysis.engine import Engine
from analysis.experiment_engine import _finite
from analysis.identical import with_identical
from analysis.load import AnalysisSourceError
from analysis.models import label
from analysis.noise_floor import ReplicaRule
from analysis.operations import CDF_POINTS, Operations
from analysis.pair_scope import shadow_scope
from analysis.stats import finite_or_none
from analysis.stream_diff import STREAM_NOTE
from analysis.stream_engine import attach_streams_engine
from analysis.vector_engine import vector_rows, with_vectors

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = ["analyze_divergence_engine"]

_NULL_SEG = "\x00"  # the group key of a NULL segment value (joins do not match NULLs)


def analyze_divergence_engine(
    engine: Engine, *, since: str | datetime | None = None, until: str | datetime | None = None,
    route: str | None = None, atol: float = 1e-6, rtol: float = 1e-3,
    segment: str | None = None, version: str | None = None, all_versions: bool = False,
) -> DivergenceReport:
    """:func:`analysis.divergence.analyze_divergence` with its row work in ``engine``."""

    params = {"since": since, "until": until, "route": route, "atol": atol, "rtol": rtol,
              "segment": segment, "version": version, "all_versions": all_versions}
    if not engine.has("calls"):
        return DivergenceReport((), params, "the source has no calls table")
    calls = engine.table("calls")
    cond, shadow_role, scope = shadow_scope(engine, calls, since, until, route, version,
                                            all_versions)
    notes: tuple[str, ...] = (*NOTES, scope.note)
    primary = (calls.role == "primary") | (
        calls.served & calls.role.isin(["variant", "stable", "canary"]))
    j = _joined(engine, calls, cond, primary, shadow_role, segment)
    rows = _pair_rows(engine, j, atol, rtol)
    rows, whole = vector_rows(engine, calls, cond, primary, shadow_role, segment, atol, rtol,
                              rows)
    if not rows:
        return DivergenceReport((), params, "no shadow calls in the selected window", notes,
                                scope.to_dict())
    ops = _operations(engine, calls, cond, primary, shadow_role)
    replicas = _replica_rule(engine, calls, cond)
    finite = j.filter(j.d.notnull() & j.pb.notnull())
    figures = score_figures(engine, finite.select("route", "pb", "sb", "seg", "ps", "ss"),
                            ["route", "pb", "sb", "seg"])
    pairs: list[PairDivergence] = []
    orphans: list[dict[str, Any]] = []
    skipped: dict[tuple[str, str, str], int] = {}
    for row in rows:
        if row["pb"] is None:
            orphans.append(_seg_back(row))
            continue
        if not replicas.pairs(row["route"], row["pb"], row["sb"]):
            key = (row["route"], row["sb"], row["pb"])
            skipped[key] = skipped.get(key, 0) + int(row["matched"])
            continue
        fig = figures.get((row["route"], row["pb"], row["sb"], row["seg"]))
        row = _seg_back(row)
        pairs.append(_build_pair(row, fig, ops, replicas))
    pairs = with_vectors(pairs, whole)
    pairs = _attach_unmatched(pairs, orphans, ops, replicas, segment)
    pairs = _apply_noise_floor(pairs)
    pairs, streamed = attach_streams_engine(engine, calls, cond, primary, shadow_role, pairs,
                                            atol, rtol)
    notes = (*notes, STREAM_NOTE) if streamed else notes
    if "response_hash" in engine.columns("calls") and segment is None:
        pairs = _attach_identical(engine, calls, cond, primary, shadow_role, pairs)
    else:
        pairs = without_identical(pairs, segment)
    return DivergenceReport(tuple(pairs), params, report_message(pairs, skipped, replicas),
                            notes, scope.to_dict(),
                            _labels(engine))


def _joined(engine: Engine, calls: ir.Table, cond: ir.BooleanValue, primary: ir.BooleanValue,
            shadow_role: ir.BooleanValue, segment: str | None) -> ir.Table:
    """Every shadow call with its primary's (NULLs when unmatched) and the row figures."""
    import ibis

    p = calls.filter(cond & primary).select(
        p_rid=calls.request_id, pb=calls.backend, raw_p=calls.score, pl=calls.label,
        p_lat=calls.latency_ms)
    seg: Any = ibis.null("string")
    s = calls.filter(cond & shadow_role)
    if segment is not None:
        if segment in engine.columns("calls"):
            seg = s[segment].cast("string")
        elif engine.has("requests") and segment in engine.columns("requests"):
            r = engine.table("requests")
            r = r.select(r_rid=r.request_id, r_seg=r[segment].cast("string"))
            s = s.left_join(r, s.request_id == r.r_rid)
            seg = s.r_seg
        else:
            raise AnalysisSourceError(f"segment {segment!r} is not a column of calls or requests")
    s = s.select(request_id=s.request_id, route=s.route, sb=s.backend, raw_s=s.score,
                 sl=s.label, s_lat=s.latency_ms, seg=seg.fill_null(_NULL_SEG))
    j = s.left_join(p, s.request_id == p.p_rid)
    ok = _finite(j.raw_p) & _finite(j.raw_s)
    return j.mutate(
        matched=j.p_rid.notnull(), ps=ibis.ifelse(ok, j.raw_p, ibis.null("float64")),
        ss=ibis.ifelse(ok, j.raw_s, ibis.null("float64")),
        d=ibis.ifelse(ok, j.raw_s - j.raw_p, ibis.null("float64")),
        ratio=ibis.ifelse((j.p_lat > 0) & (j.s_lat >= 0), j.s_lat / j.p_lat,
                          ibis.null("float64")))


def _pair_rows(engine: Engine, j: ir.Table, atol: float, rtol: float) -> list[dict[str, Any]]:
    import ibis

    keys = ["route", "pb", "sb", "seg"]
    labelled = j.pl.notnull() & j.sl.notnull()
    empty = j.matched & ((j.raw_p.isnull() & j.pl.isnull()) | (j.raw_s.isnull() & j.sl.isnull()))
    out = j.d.abs() > ibis.literal(atol, type="float64") + ibis.literal(
        rtol, type="float64") * j.ps.abs()
    agg = j.aggregate(
        by=keys, unmatched=j.count(where=~j.matched), matched=j.count(where=j.matched),
        n=j.d.count(), n_nonfinite=j.count(where=j.d.isnull() & j.raw_p.notnull()
                                           & j.raw_s.notnull()),
        n_without_output=j.count(where=empty), sum_d=j.d.sum(), var_d=j.d.var(how="sample"),
        sum_abs_d=j.d.abs().sum(), sum_d2=(j.d * j.d).sum(), max_abs=j.d.abs().max(),
        pearson=j.ss.corr(j.ps, how="pop"), p_min=j.ps.min(), p_max=j.ps.max(), s_min=j.ss.min(),
        s_max=j.ss.max(), n_out=j.count(where=out), n_labels=j.count(where=labelled),
        n_agree=j.count(where=labelled & (j.pl == j.sl)))
    # The median ratio from order statistics (Spark's exact percentile holds a pair's 10M
    # ratios in one task's heap).
    medians = linear_quantiles(engine, j.select(*keys, "ratio"), "ratio", keys, [0.5])
    both = j.filter(labelled)
    cells = both.aggregate(by=[*keys, "pl", "sl"], c=both.count())
    found: dict[tuple[Any, ...], dict[tuple[str, str], int]] = {}
    for cell in engine.rows(cells):
        found.setdefault(tuple(cell[k] for k in keys), {})[
            (str(cell["pl"]), str(cell["sl"]))] = int(cell["c"])
    rows = []
    for row in engine.rows(agg):
        row["p_varies"] = row["p_min"] is not None and row["p_min"] < row["p_max"]
        row["s_varies"] = row["s_min"] is not None and row["s_min"] < row["s_max"]
        labels = found.get(tuple(row[k] for k in keys), {})
        row["label_pairs"] = [({"p": p, "s": s}, c) for (p, s), c in sorted(labels.items())]
        row |= {"n_vectors": 0, "n_js": 0, "sum_js": None,
                "latency_ratio": medians.get(tuple(row[k] for k in keys), [None])[0]}
        rows.append(row)
    # DuckDB's order: route, shadow, primary (NULLs last), segment
    return sorted(rows, key=lambda r: (r["route"], r["sb"], r["pb"] is None, r["pb"] or "",
                                       r["seg"] == _NULL_SEG, r["seg"]))


def _seg_back(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "seg": None if row["seg"] == _NULL_SEG else row["seg"]}


def _operations(engine: Engine, calls: ir.Table, cond: ir.BooleanValue,
                primary: ir.BooleanValue, shadow_role: ir.BooleanValue) -> Operations:
    """:func:`analysis.operations.backend_operations` in the engine."""
    import ibis

    t = calls.filter((shadow_role | primary) & cond)
    t = t.mutate(side=ibis.ifelse(t.role.isin(["shadow", "replay"]), "shadow", "primary"))
    attempted = t.status.isnull() | (t.status != "DROPPED")
    keys = ["route", "backend", "side"]
    # Quantiles from order statistics (row_number): Spark's exact percentile buffers a
    # backend's every latency in one task (10M calls overflowed a 1.5 GB heap).
    cdfs = linear_quantiles(engine, t.filter(attempted).select(*keys, "latency_ms"),
                            "latency_ms", keys, CDF_POINTS)
    ttfm: dict[tuple[Any, ...], list[float]] = {}
    if "first_message_ms" in engine.columns("calls"):
        ttfm = linear_quantiles(engine, t.select(*keys, "first_message_ms"),
                                "first_message_ms", keys, [0.5])
    agg = t.aggregate(
        by=keys, attempts=t.count(where=attempted),
        errors=t.count(where=~t.status.isin(["OK", "DROPPED"])),
        timeouts=t.count(where=t.status == "DEADLINE_EXCEEDED"),
        dropped=t.count(where=t.status == "DROPPED"))
    out: Operations = {}
    for row in engine.rows(agg):
        key = tuple(row[k] for k in keys)
        has_q = key in cdfs
        q: list[Any] = cdfs.get(key) or [None] * len(CDF_POINTS)
        row["ttfm"] = ttfm.get(key, [None])[0]
        n, errors, timeouts = int(row["attempts"]), int(row["errors"]), int(row["timeouts"])
        out[(row["route"], row["backend"], row["side"])] = {
            "latency": {
                "n": n,
                "p50": finite_or_none(q[CDF_POINTS.index(0.5)]) if has_q else None,
                "p95": finite_or_none(q[CDF_POINTS.index(0.95)]) if has_q else None,
                "p99": finite_or_none(q[CDF_POINTS.index(0.99)]) if has_q else None,
                "first_message_p50": finite_or_none(row["ttfm"]) if row["ttfm"] is not None
                else None,
            },
            "errors": {
                "n": n, "errors": errors, "error_rate": errors / n if n else None,
                "error_rate_ci": wilson_interval(errors, n), "timeouts": timeouts,
                "timeout_rate": timeouts / n if n else None,
                "timeout_rate_ci": wilson_interval(timeouts, n),
                "dropped": int(row["dropped"]),
            },
            "cdf": {"p": CDF_POINTS, "x": [finite_or_none(x) for x in q]} if has_q else None,
        }
    return out


def _configs(engine: Engine) -> list[str]:
    """The recorded configs' JSON, oldest first (one row per accepted config: few)."""
    if not engine.has("configs") or "config_json" not in engine.columns("configs"):
        return []
    c = engine.table("configs")
    rows = engine.rows(c.filter(c.config_json.notnull()).select("config_json", "ts"))
    rows.sort(key=lambda r: (r["ts"] is None, r["ts"] or datetime.min))
    return [str(r["config_json"]) for r in rows]


def _loads(text: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def _replica_rule(engine: Engine, calls: ir.Table, cond: ir.BooleanValue) -> ReplicaRule:
    """:func:`analysis.noise_floor.replica_rule` from the engine's configs and calls."""
    routes: dict[str, dict[str, Any]] = {}
    for text in reversed(_configs(engine)):  # the newest config naming a route wins
        for r in _loads(text).get("routes") or []:
            match = r.get("match") if isinstance(r, dict) else None
            if isinstance(match, str) and match not in routes:
                routes[match] = r
    replicas = {
        match: {str(s.get("backend")): (str(s["replica_of"]) if s.get("replica_of") else None)
                for s in r.get("shadows") or []
                if isinstance(s, dict) and s.get("replica") is True}
        for match, r in routes.items()}
    primaries = {m: (str(r["primary"]) if r.get("primary") else None) for m, r in routes.items()}
    versions: dict[str, str] = {}
    if "backend_version" in engine.columns("calls"):
        t = calls.filter(cond & calls.backend.notnull() & calls.backend_version.notnull())
        for row in engine.rows(t.aggregate(by="backend", v=t.backend_version.arbitrary())):
            versions[str(row["backend"])] = str(row["v"])
    return ReplicaRule(replicas, primaries, versions)


def _labels(engine: Engine) -> dict[str, str]:
    """:func:`analysis.models.backend_labels` from the engine's configs."""
    found: dict[str, str] = {}
    for text in _configs(engine):
        backends = _loads(text).get("backends") or []
        for b in backends if isinstance(backends, list) else []:
            if isinstance(b, dict) and isinstance(b.get("name"), str):
                found[b["name"]] = label(b["name"], b.get("version"), b.get("model"))
    return {name: text for name, text in found.items() if text != name}


def _attach_identical(engine: Engine, calls: ir.Table, cond: ir.BooleanValue,
                      primary: ir.BooleanValue, shadow_role: ir.BooleanValue,
                      pairs: list[PairDivergence]) -> list[PairDivergence]:
    hashed = cond & calls.response_hash.notnull()
    p = calls.filter(hashed & primary).select(p_rid=calls.request_id, pb=calls.backend,
                                             ph=calls.response_hash)
    s = calls.filter(hashed & shadow_role).select("request_id", "route", sb=calls.backend,
                                                  sh=calls.response_hash)
    j = s.inner_join(p, s.request_id == p.p_rid)
    agg = j.aggregate(by=["route", "pb", "sb"], n=j.count(), same=j.count(where=j.ph == j.sh))
    found = {(r["route"], r["pb"], r["sb"]): (int(r["n"]), int(r["same"]))
             for r in engine.rows(agg)}
    return with_identical(pairs, found)
