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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.distribution import PSI_FLOOR, SCIPY_MAX_N, DistributionShift
from analysis.engine import Engine

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = ["HIST_BINS", "PSI_BINS", "ScoreFigures", "plot_edges", "score_figures", "shift_of"]

#: Bins of the plotted score and difference histograms (as :func:`analysis.divergence._plots`).
HIST_BINS = 30
#: PSI bins: cut at the primary's nine deciles.
PSI_BINS = 10

ScoreFigures = dict[str, Any]


def plot_edges(low: float, high: float) -> np.ndarray:
    """``numpy.histogram``'s edges for 30 equal bins on [low, high]."""
    return np.linspace(low, high, HIST_BINS + 1)


def _diff_range(low: float, high: float) -> tuple[float, float]:
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
    summary = _summary(pairs, keys)
    found: dict[tuple[Any, ...], ScoreFigures] = {}
    for row in engine.rows(summary.drop(*[c for c in summary.columns if c.startswith("_")])):
        found[tuple(row[k] for k in keys)] = row
    for row in engine.rows(_ks_wasserstein(pairs, keys)):
        found[tuple(row[k] for k in keys)].update(ks_stat=row["ks"], wasserstein=row["w"])
    for row in engine.rows(_bin_counts(pairs, summary, keys)):
        fig = found[tuple(row[k] for k in keys)]
        fig["psi_counts"] = ([int(row[f"pp{i}"]) for i in range(PSI_BINS)],
                             [int(row[f"sp{i}"]) for i in range(PSI_BINS)])
        fig["hist_counts"] = ([int(row[f"ph{i}"] or 0) for i in range(HIST_BINS)],
                              [int(row[f"sh{i}"] or 0) for i in range(HIST_BINS)],
                              [int(row[f"dh{i}"] or 0) for i in range(HIST_BINS)])
    return {key: _finish(fig) for key, fig in found.items()}


def shift_of(fig: ScoreFigures) -> DistributionShift:
    """:func:`analysis.distribution.compare_distributions` of the two sides, from the
    engine's figures: the same PSI, KS statistic and p-value (scipy's exact one up to
    :data:`SCIPY_MAX_N` values, else its asymptotic one) and scaled Wasserstein."""
    from scipy import stats
    from scipy.stats._stats_py import _attempt_exact_2kssamp  # scipy's exact KS p-value

    n, d = int(fig["n"]), float(fig["ks_stat"])
    if n == 0:
        return DistributionShift(None, None, None, None, "one of the samples is empty")
    ok, p_value = False, 0.0
    if n <= SCIPY_MAX_N:
        ok, _, p_value = _attempt_exact_2kssamp(n, n, n, d, "two-sided")
    if not ok:
        p_value = stats.kstwo.sf(d, np.round(n * n / (n + n)))
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
        d_low, d_high = _diff_range(fig["d_min"], fig["d_max"])
        plots = {
            "score_hist": {"edges": plot_edges(low, high).tolist(),
                           "primary": primary, "shadow": shadow},
            "diff_hist": {"edges": np.linspace(d_low, d_high, HIST_BINS + 1).tolist(),
                          "counts": diff},
        }
    return {"n": n, "p_min": fig["p_min"], "p_max": fig["p_max"], "p_std": fig["p_std"],
            "ks_stat": float(fig["ks_stat"]), "wasserstein": float(fig["wasserstein"]),
            "spearman": rho, "psi": float(np.sum((s - p) * np.log(s / p))), "plots": plots}


def _summary(pairs: ir.Table, keys: list[str]) -> ir.Table:
    """Per group: size, extremes, the primary's spread, centred rank products and the PSI
    edges (numpy's linear quantiles from the order statistics)."""
    import ibis

    g = keys
    n = pairs.ps.count().over(group_by=g)
    mid = (n + 1).cast("float64") / 2  # the mean of ranks 1..n
    ranked = pairs.mutate(
        _n=n,
        _rn=ibis.row_number().over(group_by=g, order_by=[pairs.ps]),
        _rx=ibis.rank().over(group_by=g, order_by=[pairs.ps]).cast("float64") + 1
        + (pairs.ps.count().over(group_by=[*g, "ps"]) - 1).cast("float64") / 2 - mid,
        _ry=ibis.rank().over(group_by=g, order_by=[pairs.ss]).cast("float64") + 1
        + (pairs.ss.count().over(group_by=[*g, "ss"]) - 1).cast("float64") / 2 - mid,
    )
    idx = {i: (ranked._n - 1).cast("float64") * (ibis.literal(i).cast("float64") / 10)
           for i in range(1, PSI_BINS)}
    order_stats = {}
    for i, at in idx.items():
        prev = at.floor()
        nxt = ibis.least(prev + 1, ranked._n - 1)
        order_stats[f"_lo{i}"] = ranked.ps.max(where=ranked._rn == prev)
        order_stats[f"_hi{i}"] = ranked.ps.max(where=ranked._rn == nxt)
        order_stats[f"_t{i}"] = (at - prev).max()
    diff = ranked.ss - ranked.ps
    agg = ranked.aggregate(
        by=g, n=ranked.ps.count(), p_min=ranked.ps.min(), p_max=ranked.ps.max(),
        s_min=ranked.ss.min(), s_max=ranked.ss.max(), d_min=diff.min(), d_max=diff.max(),
        p_std=ranked.ps.std(how="pop"), sxy=(ranked._rx * ranked._ry).sum(),
        sxx=(ranked._rx * ranked._rx).sum(), syy=(ranked._ry * ranked._ry).sum(),
        **order_stats)
    edges = {}
    for i in range(1, PSI_BINS):
        lo, hi, t = agg[f"_lo{i}"], agg[f"_hi{i}"], agg[f"_t{i}"]
        span = hi - lo
        # numpy's _lerp, both branches, so the edge is numpy's to the last bit
        edges[f"_e{i}"] = ibis.ifelse(t >= 0.5, hi - span * (1 - t), lo + span * t)
    return agg.mutate(**edges)


def _ks_wasserstein(pairs: ir.Table, keys: list[str]) -> ir.Table:
    import ibis

    g = keys
    sides = pairs.select(*g, v=pairs.ps, u=ibis.literal(1), w=ibis.literal(0)).union(
        pairs.select(*g, v=pairs.ss, u=ibis.literal(0), w=ibis.literal(1)), distinct=False)
    counts = sides.aggregate(by=[*g, "v"], cu=sides.u.sum(), cv=sides.w.sum())
    running = ibis.cumulative_window(group_by=g, order_by=[counts.v])
    whole = ibis.window(group_by=g)
    steps = counts.mutate(
        gap=counts.cu.sum().over(running) / counts.cu.sum().over(whole)
        - counts.cv.sum().over(running) / counts.cv.sum().over(whole),
        delta=counts.v.lead().over(group_by=g, order_by=[counts.v]) - counts.v,
    )
    return steps.aggregate(by=g, ks=steps.gap.abs().max(),
                           w=(steps.gap.abs() * steps.delta).sum())


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
        # numpy.linspace's edge k is k * step + start; the last edge (the maximum) is
        # never passed by a value, so 29 inner edges decide the bin.
        return sum((x >= ibis.literal(k).cast("float64") * step + start).cast("int64")
                   for k in range(1, HIST_BINS))

    binned = j.mutate(
        _pb=sum((j.ps > j[f"_e{i}"]).cast("int64") for i in range(1, PSI_BINS)),
        _sb=sum((j.ss > j[f"_e{i}"]).cast("int64") for i in range(1, PSI_BINS)),
        _ph=inner_bin(j.ps, j._low, j._step), _sh=inner_bin(j.ss, j._low, j._step),
        _dh=inner_bin(d, j._dlow, j._dstep),
    )
    b = binned
    counts: dict[str, Any] = {}
    for i in range(PSI_BINS):
        counts[f"pp{i}"] = (b._pb == i).cast("int64").sum()
        counts[f"sp{i}"] = (b._sb == i).cast("int64").sum()
    for i in range(HIST_BINS):
        counts[f"ph{i}"] = (b._ph == i).cast("int64").sum()
        counts[f"sh{i}"] = (b._sh == i).cast("int64").sum()
        counts[f"dh{i}"] = (b._dh == i).cast("int64").sum()
    return b.aggregate(by=g, **counts)
