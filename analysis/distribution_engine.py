"""Exact two-sample figures of paired scores computed in the engine (DuckDB or Spark).

The divergence report compares each shadow's scores with its primary's: KS, Wasserstein-1,
Spearman, PSI on the primary's deciles and two 30-bin histograms. In numpy these read every
score; here each is a reduction whose result does not grow with the rows, run by Ibis on
either engine (docs/engines.md), and the figures are the same as numpy's/scipy's, not
approximations:

- **KS** is ``max |F_p - F_s|`` over the pooled distinct values: counts per (group, value),
  then running sums (a cumulative window) of each side's counts, each divided by its size.
- **Wasserstein-1** is ``sum |F_p(v) - F_s(v)| * (next v - v)`` over the same rows (scipy's
  ``_cdf_distance``), with ``lead`` giving the next distinct value.
- **Spearman** is Pearson's r of average ranks: ``rank()`` plus half the ties beyond the
  first (scipy's ``rankdata``), centred on the known mean rank ``(n + 1) / 2`` before the
  products are summed, so no digits cancel.
- **PSI edges** are numpy's ``quantile`` (method ``linear``) written out: the order
  statistics at ``floor((n - 1) q)`` and the next (``row_number``), combined by numpy's own
  ``_lerp``, so the edges are numpy's bit for bit and the bin counts are exact.
- **Histograms** use ``numpy.linspace``'s edges computed in the engine from the sides'
  minima and maxima (same IEEE operations), each value's bin being the number of inner
  edges at or below it (``numpy.histogram``'s half-open bins, the last one closed).

Summation order differs between engines and numpy, so sums agree to the last few bits
(1e-12 relative), counts and maxima exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.distribution import (
    PSI_FLOOR,
    SCIPY_MAX_N,
    DistributionShift,
    lerp,
    quantile_plan,
)
from analysis.engine import Engine

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = ["HIST_BINS", "PSI_BINS", "ScoreFigures", "diff_range", "linear_quantiles", "plot_edges",
           "sample_figures", "score_figures", "shift_of"]

#: Bins of the plotted score and difference histograms (as :func:`analysis.divergence._plots`).
HIST_BINS = 30
#: PSI bins: cut at the primary's nine deciles.
PSI_BINS = 10

ScoreFigures = dict[str, Any]


def plot_edges(low: float, high: float) -> np.ndarray:
    """``numpy.histogram``'s edges for 30 equal bins on [low, high]."""
    return np.linspace(low, high, HIST_BINS + 1)


def diff_range(low: float, high: float) -> tuple[float, float]:
    # The divergence report's rule: differences within a few ulps get a drawable range.
    pad = max(abs(low), abs(high), 1.0) * 1e-9 if high - low < 1e-9 else 0.0
    return low - pad, high + pad


def score_figures(engine: Engine, pairs: ir.Table, keys: Sequence[str]) -> dict[tuple[Any, ...],
                                                                                ScoreFigures]:
    """Per group of ``keys``: the exact distribution figures of finite paired scores.

    ``pairs`` has the ``keys`` columns and ``ps`` (primary) and ``ss`` (shadow) scores, all
    finite. Each group's result holds ``n``, the sides' minima and maxima, ``p_std``
    (population), ``ks_stat``, ``wasserstein`` (raw distance), ``spearman`` (None for a
    constant side), ``psi`` and the ``plots`` of :func:`analysis.divergence._plots`.
    """
    keys = list(keys)
    # The summary's windows run once: the bins read its few rows back from a kept table.
    summary = engine.materialize(_summary(pairs, keys), "shadowcar_score_summary")
    try:
        found: dict[tuple[Any, ...], ScoreFigures] = {}
        for row in engine.rows(summary.drop(*[c for c in summary.columns
                                              if c.startswith("_")])):
            found[tuple(row[k] for k in keys)] = row
        if not found:
            return {}
        for row in engine.rows(_ks_wasserstein(pairs, keys)):
            found[tuple(row[k] for k in keys)].update(ks_stat=row["ks"], wasserstein=row["w"])
        bins = _bin_figures(engine.rows(_bin_counts(pairs, summary, keys)), keys)
        for key, fig in found.items():
            fig["psi_counts"] = bins[key]["psi"]
            fig["hist_counts"] = bins[key]["hist"]
    finally:
        engine.drop("shadowcar_score_summary")
    return {key: _finish(fig) for key, fig in found.items()}


def linear_quantiles(
    engine: Engine, t: ir.Table, value: str, keys: Sequence[str], probs: Sequence[float],
) -> dict[tuple[Any, ...], list[float]]:
    """Per group of ``keys``: numpy's ``quantile(values, probs)`` (method ``linear``) of the
    non-NULL ``value``, from order statistics (``row_number``), as the PSI edges are.

    Spark's exact ``percentile`` and DuckDB's ``quantile_cont`` hold a group's every value in
    memory (a 10M-call group overflowed a 1.5 GB heap, 100M a 3GB DuckDB); a sort spills
    instead. The sizes come first, so the sort only picks out the few rows numpy's
    interpolation reads (positions and weights computed here as numpy does).
    """
    import ibis

    g = list(keys)
    t = t.filter(t[value].notnull())
    sizes = {tuple(r[k] for k in g): int(r["_n"])
             for r in engine.rows(t.aggregate(by=g, _n=t.count()))}
    plans: dict[tuple[Any, ...], list[tuple[int, int, float]]] = {}
    positions: set[int] = set()
    for key, n in sizes.items():
        plans[key] = quantile_plan(n, probs)
        positions |= {i for lo, hi, _ in plans[key] for i in (lo, hi)}
    if not plans:
        return {}
    ranked = t.mutate(_rn=ibis.row_number().over(ibis.window(group_by=g, order_by=[t[value]])))
    picked = ranked.filter(ranked._rn.isin(sorted(positions))).select(*g, "_rn",
                                                                       _v=ranked[value])
    found = {(tuple(r[k] for k in g), int(r["_rn"])): float(r["_v"])
             for r in engine.rows(picked)}
    return {key: [lerp(found[(key, lo)], found[(key, hi)], w) for lo, hi, w in plan]
            for key, plan in plans.items()}


def shift_of(fig: ScoreFigures) -> DistributionShift:
    """:func:`analysis.distribution.compare_distributions` of the two sides, from the
    engine's figures: the same PSI, KS statistic and p-value (scipy's exact one up to
    :data:`SCIPY_MAX_N` values, else its asymptotic one) and scaled Wasserstein."""
    from scipy import stats
    from scipy.stats._stats_py import _attempt_exact_2kssamp  # scipy's exact KS p-value

    n, d = int(fig["n"]), float(fig["ks_stat"])
    m = int(fig.get("m", n))  # the other side's size (paired scores: the same)
    if n == 0 or m == 0:
        return DistributionShift(None, None, None, None, "one of the samples is empty")
    ok, p_value = False, 0.0
    if max(n, m) <= SCIPY_MAX_N:
        ok, _, p_value = _attempt_exact_2kssamp(n, m, math.gcd(n, m), d, "two-sided")
    if not ok:
        big, small = sorted((float(n), float(m)), reverse=True)
        p_value = stats.kstwo.sf(d, np.round(big * small / (big + small)))
    ks_p = float(np.clip(p_value, 0, 1))
    spread = 0.0 if fig["p_min"] == fig["p_max"] else float(fig["p_std"])
    if spread > 0:
        return DistributionShift(fig["psi"], d, ks_p, fig["wasserstein"] / spread)
    return DistributionShift(fig["psi"], d, ks_p, None,
                             "wasserstein is undefined: the reference sample is constant")


def _finish(fig: dict[str, Any]) -> ScoreFigures:
    n = int(fig["n"])
    sxx, syy = float(fig["sxx"]), float(fig["syy"])
    rho = None
    if n >= 2 and fig["p_min"] != fig["p_max"] and fig["s_min"] != fig["s_max"]:
        value = float(fig["sxy"]) / np.sqrt(sxx * syy)
        rho = float(np.clip(value, -1.0, 1.0)) if np.isfinite(value) else None
    exp_counts, act_counts = (np.asarray(c, dtype=np.int64) for c in fig.pop("psi_counts"))
    p = np.maximum(exp_counts / n, PSI_FLOOR)
    s = np.maximum(act_counts / n, PSI_FLOOR)
    primary, shadow, diff = fig.pop("hist_counts")
    plots: dict[str, Any] = {}
    low, high = min(fig["p_min"], fig["s_min"]), max(fig["p_max"], fig["s_max"])
    if high > low:
        d_low, d_high = diff_range(fig["d_min"], fig["d_max"])
        plots = {
            "score_hist": {"edges": plot_edges(low, high).tolist(),
                           "primary": primary, "shadow": shadow},
            "diff_hist": {"edges": np.linspace(d_low, d_high, HIST_BINS + 1).tolist(),
                          "counts": diff},
        }
    return {"n": n, "p_min": fig["p_min"], "p_max": fig["p_max"], "p_std": fig["p_std"],
            # one distinct value in all: no step, no distance
            "ks_stat": float(fig["ks_stat"]), "wasserstein": float(fig["wasserstein"] or 0.0),
            "spearman": rho, "psi": float(np.sum((s - p) * np.log(s / p))), "plots": plots}


def _summary(pairs: ir.Table, keys: list[str]) -> ir.Table:
    """Per group: size, extremes, the primary's spread, centred rank products and the PSI
    edges (numpy's linear quantiles from the order statistics)."""
    import ibis

    g = keys
    # One sort per side: the row number, the lowest rank of a value's ties (rank) and the
    # highest (the rows at or below it: a RANGE frame takes the ties in) share it.
    by_p = ibis.window(group_by=g, order_by=[pairs.ps])
    by_s = ibis.window(group_by=g, order_by=[pairs.ss])
    upto_p = ibis.range_window(preceding=None, following=0, group_by=g, order_by=[pairs.ps])
    upto_s = ibis.range_window(preceding=None, following=0, group_by=g, order_by=[pairs.ss])
    n = pairs.ps.count().over(by_p)
    mid = (n + 1).cast("float64") / 2  # the mean of ranks 1..n

    def average_rank(rank: Any, upto: Any) -> Any:
        # scipy's rankdata: the mean of the lowest (rank() + 1) and highest rank of the ties
        return (rank.cast("float64") + 1 + upto.cast("float64")) / 2 - mid

    ranked = pairs.mutate(
        _n=n,
        _rn=ibis.row_number().over(by_p),
        _rx=average_rank(ibis.rank().over(by_p), pairs.ps.count().over(upto_p)),
        _ry=average_rank(ibis.rank().over(by_s), pairs.ss.count().over(upto_s)),
    )
    idx = {i: (ranked._n - 1).cast("float64") * (ibis.literal(i).cast("float64") / 10)
           for i in range(1, PSI_BINS)}
    order_stats = {}
    for i, at in idx.items():
        prev = at.floor()
        nxt = ibis.least(prev + 1, ranked._n - 1)
        order_stats[f"_lo{i}"] = ranked.ps.max(where=ranked._rn == prev)
        order_stats[f"_hi{i}"] = ranked.ps.max(where=ranked._rn == nxt)
    diff = ranked.ss - ranked.ps
    agg = ranked.aggregate(
        by=g, n=ranked.ps.count(), p_min=ranked.ps.min(), p_max=ranked.ps.max(),
        s_min=ranked.ss.min(), s_max=ranked.ss.max(), d_min=diff.min(), d_max=diff.max(),
        p_std=ranked.ps.std(how="pop"), sxy=(ranked._rx * ranked._ry).sum(),
        sxx=(ranked._rx * ranked._rx).sum(), syy=(ranked._ry * ranked._ry).sum(),
        **order_stats)
    edges = {}
    for i in range(1, PSI_BINS):
        # the interpolation weight once per group (the same operations as per row)
        at = (agg.n - 1).cast("float64") * (ibis.literal(i).cast("float64") / 10)
        lo, hi, t = agg[f"_lo{i}"], agg[f"_hi{i}"], at - at.floor()
        span = hi - lo
        # numpy's _lerp, both branches, so the edge is numpy's to the last bit
        edges[f"_e{i}"] = ibis.ifelse(t >= 0.5, hi - span * (1 - t), lo + span * t)
    return agg.mutate(**edges)


def _ks_wasserstein(pairs: ir.Table, keys: list[str]) -> ir.Table:
    import ibis

    g = keys
    sides = pairs.select(*g, v=pairs.ps, u=ibis.literal(1), w=ibis.literal(0)).union(
        pairs.select(*g, v=pairs.ss, u=ibis.literal(0), w=ibis.literal(1)), distinct=False)
    return _ks_w_of(sides, g)


def _ks_w_of(sides: ir.Table, g: list[str]) -> ir.Table:
    """KS and Wasserstein-1 per group of a table of values ``v`` flagged ``u`` (first
    sample) or ``w`` (second sample)."""
    import ibis

    # One sort of both samples: running counts of each side (ROWS frames, cheap) over its
    # size. Only the last row of a value's ties holds that value's CDFs (every tie sits at
    # or before it), and ``lead`` gives it the next distinct value: the step's width.
    order = [sides.v, sides.u]
    running = ibis.cumulative_window(group_by=g, order_by=order)
    whole = ibis.window(group_by=g, order_by=order)
    nxt = sides.v.lead().over(whole)
    steps = sides.mutate(
        gap=sides.u.sum().over(running) / sides.u.sum().over(whole)
        - sides.w.sum().over(running) / sides.w.sum().over(whole),
        delta=nxt - sides.v, last=nxt.isnull() | (nxt != sides.v),
    )
    return steps.aggregate(by=g, ks=steps.gap.abs().max(where=steps.last),
                           w=(steps.gap.abs() * steps.delta).sum(where=steps.last))


def _bin_counts(pairs: ir.Table, summary: ir.Table, keys: list[str]) -> ir.Table:
    import ibis

    g = keys
    s = summary
    low, high = ibis.least(s.p_min, s.s_min), ibis.greatest(s.p_max, s.s_max)
    pad = ibis.ifelse(s.d_max - s.d_min < 1e-9,
                      ibis.greatest(s.d_min.abs(), s.d_max.abs(), 1.0) * 1e-9, 0.0)
    d_low, d_high = s.d_min - pad, s.d_max + pad
    bounds = s.select(*g, *[f"_e{i}" for i in range(1, PSI_BINS)],
                      _low=low, _step=(high - low) / HIST_BINS,
                      _dlow=d_low, _dstep=(d_high - d_low) / HIST_BINS)
    j = pairs.inner_join(bounds, g)
    d = j.ss - j.ps

    def inner_bin(x: ir.NumericValue, start: ir.NumericValue, step: ir.NumericValue) -> Any:
        # numpy.histogram's rule: the bin is the number of inner edges at or below x, edge
        # k being numpy.linspace's k * step + start (the last edge, the maximum, closes the
        # last bin). Like numpy, guess it from (x - start) / step, then correct the guess by
        # one against the edges themselves (the guess is off by one at most, near an edge).
        def edge(k: Any) -> Any:
            return k.cast("float64") * step + start

        # clamped as a float (a zero step or a huge ratio has no integer), then cut
        at = ibis.ifelse(step > 0, (x - start) / step, 0.0)
        guess = ibis.least(ibis.greatest(at, 0.0), float(HIST_BINS - 1)).floor().cast("int64")
        low = (x < edge(guess)).cast("int64")
        high = ((x >= edge(guess + 1)) & (guess < HIST_BINS - 1)).cast("int64")
        return guess - low + high

    def psi_bin(x: ir.NumericValue) -> Any:
        return sum((x > j[f"_e{i}"]).cast("int64") for i in range(1, PSI_BINS))

    # Each value's two bins as one code (PSI bin * 30 + histogram bin), counted by a GROUP
    # BY of at most 630 codes per pair: four times cheaper than 150 conditional sums.
    width = ibis.literal(HIST_BINS, type="int64")
    sides = [
        j.select(*g, _k=ibis.literal(0, type="int8"),
                 _c=psi_bin(j.ps) * width + inner_bin(j.ps, j._low, j._step)),
        j.select(*g, _k=ibis.literal(1, type="int8"),
                 _c=psi_bin(j.ss) * width + inner_bin(j.ss, j._low, j._step)),
        j.select(*g, _k=ibis.literal(2, type="int8"), _c=inner_bin(d, j._dlow, j._dstep)),
    ]
    codes = sides[0].union(sides[1], distinct=False).union(sides[2], distinct=False)
    return codes.aggregate(by=[*g, "_k", "_c"], _count=codes.count())


def _bin_figures(rows: list[dict[str, Any]], keys: list[str]) -> dict[tuple[Any, ...],
                                                                       dict[str, Any]]:
    """Per group: the PSI counts of both sides and the three histograms, from the codes of
    :func:`_bin_counts`."""
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        if key not in found:
            found[key] = {"psi": ([0] * PSI_BINS, [0] * PSI_BINS),
                          "hist": ([0] * HIST_BINS, [0] * HIST_BINS, [0] * HIST_BINS)}
        side, code, count = int(row["_k"]), int(row["_c"]), int(row["_count"])
        if side < 2:
            found[key]["psi"][side][code // HIST_BINS] += count
            found[key]["hist"][side][code % HIST_BINS] += count
        else:
            found[key]["hist"][2][code] += count
    return found


def sample_figures(
    engine: Engine, values: ir.Table, keys: Sequence[str],
) -> dict[tuple[Any, ...], ScoreFigures]:
    """Per group of ``keys``: two unpaired samples' exact figures (the drift report's).

    ``values`` has the ``keys``, ``first`` (True for the expected sample) and ``v`` (finite).
    Each result holds ``n`` and ``m`` (sizes), the first sample's ``p_min``, ``p_max`` and
    ``p_std``, ``ks_stat``, ``wasserstein``, ``psi`` on the first sample's deciles, and
    ``js_counts``: both samples' counts on ``numpy.histogram_bin_edges(pooled, "sturges")``.
    """
    import ibis

    g = list(keys)
    t = values
    one = t.first.cast("int64")
    ref = t.filter(t.first)
    n = ref.v.count().over(group_by=g)
    ranked = ref.mutate(_n=n, _rn=ibis.row_number().over(group_by=g, order_by=[ref.v]))
    stats_ = {}
    for i in range(1, PSI_BINS):
        at = (ranked._n - 1).cast("float64") * (ibis.literal(i).cast("float64") / 10)
        prev = at.floor()
        stats_[f"_lo{i}"] = ranked.v.max(where=ranked._rn == prev)
        stats_[f"_hi{i}"] = ranked.v.max(where=ranked._rn == ibis.least(prev + 1, ranked._n - 1))
        stats_[f"_t{i}"] = (at - prev).max()
    agg = ranked.aggregate(by=g, p_min=ranked.v.min(), p_max=ranked.v.max(),
                           p_std=ranked.v.std(how="pop"), **stats_)
    edges = {}
    for i in range(1, PSI_BINS):
        lo, hi, w = agg[f"_lo{i}"], agg[f"_hi{i}"], agg[f"_t{i}"]
        edges[f"_e{i}"] = ibis.ifelse(w >= 0.5, hi - (hi - lo) * (1 - w), lo + (hi - lo) * w)
    cuts = agg.mutate(**edges).select(*g, *edges)
    sizes = t.aggregate(by=g, n=one.sum(), m=(1 - one).sum(), lo=t.v.min(), hi=t.v.max())
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in engine.rows(sizes):
        found[tuple(row[k] for k in g)] = dict(row)
    if not found:
        return {}
    for row in engine.rows(agg.select(*g, "p_min", "p_max", "p_std")):
        found[tuple(row[k] for k in g)].update(row)
    sides = t.select(*g, v=t.v, u=one, w=1 - one)
    for row in engine.rows(_ks_w_of(sides, g)):
        found[tuple(row[k] for k in g)].update(ks_stat=row["ks"], wasserstein=row["w"])
    bins = {key: _sturges(int(f["n"]) + int(f["m"]), float(f["lo"]), float(f["hi"]))
            for key, f in found.items()}
    j = t.inner_join(cuts, g)
    psi_bin = sum((j.v > j[f"_e{i}"]).cast("int64") for i in range(1, PSI_BINS))
    counts: dict[str, Any] = {}
    for i in range(PSI_BINS):
        counts[f"pp{i}"] = j.count(where=j.first & (psi_bin == i))
        counts[f"sp{i}"] = j.count(where=~j.first & (psi_bin == i))
    for row in engine.rows(j.aggregate(by=g, **counts)):
        fig = found[tuple(row[k] for k in g)]
        exp_counts = np.array([int(row[f"pp{i}"]) for i in range(PSI_BINS)])
        act_counts = np.array([int(row[f"sp{i}"]) for i in range(PSI_BINS)])
        p = np.maximum(exp_counts / int(fig["n"]), PSI_FLOOR)
        s = np.maximum(act_counts / max(int(fig["m"]), 1), PSI_FLOOR)
        fig["psi"] = float(np.sum((s - p) * np.log(s / p)))
    for key, both in _sturges_counts(engine, t, g, bins).items():
        found[key]["js_counts"] = both
    return found


def _sturges(size: int, low: float, high: float) -> tuple[float, float, int]:
    """``numpy.histogram_bin_edges(a, "sturges")``'s range and number of bins."""
    if low == high:
        return low - 0.5, high + 0.5, 1
    width = (high - low) / (np.log2(size) + 1.0)
    return low, high, int(np.ceil((high - low) / width))


def _sturges_counts(
    engine: Engine, t: ir.Table, g: list[str],
    bins: Mapping[tuple[Any, ...], tuple[float, float, int]],
) -> dict[tuple[Any, ...], tuple[list[int], list[int]]]:
    """Both samples' counts per Sturges bin: one pass per distinct number of bins (a few),
    edges computed in the engine as ``numpy.linspace`` does from the pooled extremes."""
    import ibis

    out: dict[tuple[Any, ...], tuple[list[int], list[int]]] = {}
    for nb in sorted({b[2] for b in bins.values()}):
        groups = [k for k, b in bins.items() if b[2] == nb]
        member: Any = ibis.literal(False)
        for key in groups:
            cond: Any = ibis.literal(True)
            for col, value in zip(g, key, strict=True):
                cond &= t[col] == ibis.literal(value, type=t[col].type())
            member |= cond
        part = t.filter(member)
        ext = part.aggregate(by=g, _lo=part.v.min(), _hi=part.v.max())
        one_bin = ext._lo == ext._hi
        ext = ext.mutate(_first=ibis.ifelse(one_bin, ext._lo - 0.5, ext._lo),
                         _last=ibis.ifelse(one_bin, ext._hi + 0.5, ext._hi))
        ext = ext.mutate(_step=(ext._last - ext._first) / nb)
        j = part.inner_join(ext.select(*g, "_first", "_step"), g)
        at = sum((j.v >= ibis.literal(k).cast("float64") * j._step + j._first).cast("int64")
                 for k in range(1, nb)) if nb > 1 else ibis.literal(0)
        counts = {f"{side}{i}": j.count(where=(j.first if side == "r" else ~j.first) & (at == i))
                  for i in range(nb) for side in ("r", "c")}
        for row in engine.rows(j.aggregate(by=g, **counts)):
            out[tuple(row[k] for k in g)] = ([int(row[f"r{i}"]) for i in range(nb)],
                                             [int(row[f"c{i}"]) for i in range(nb)])
    return out
