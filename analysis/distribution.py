"""Comparisons of two samples of one quantity (PSI, KS, Wasserstein) and a Wilson interval.

Shared by the divergence report (primary vs shadow score) and the drift report (reference vs
current feature); the binning conventions are DESIGN section 5.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PSI_FLOOR",
    "PSI_QUANTILES",
    "SCIPY_MAX_N",
    "DistributionShift",
    "compare_distributions",
    "lerp",
    "population_stability_index",
    "quantile_plan",
    "sort_with_ranks",
    "sorted_ks_shift",
    "sorted_quantiles",
    "spearman",
    "spearman_sorted",
    "wilson_interval",
]

#: Reference deciles that cut the PSI bins.
PSI_QUANTILES = np.arange(1, 10) / 10
#: A bin's share is floored here (without renormalising) so empty bins keep PSI finite.
PSI_FLOOR = 1e-4
#: Up to this many values per side, KS and Wasserstein are scipy's own calls.
SCIPY_MAX_N = 10_000
#: ``scipy.stats.norm.ppf(0.975)`` (tests check it), written out: scipy.stats takes 0.4 s to
#: import and reports warm it beside their first queries.
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class DistributionShift:
    """How far ``actual`` has moved from ``expected``; ``wasserstein`` is in expected-std units."""

    psi: float | None
    ks_stat: float | None
    ks_p: float | None
    wasserstein: float | None
    message: str | None = None


def population_stability_index(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI with decile edges of ``expected``, right-closed bins, open outer bins, shares floored."""
    edges = np.quantile(expected, PSI_QUANTILES)
    # side="left" counts the edges strictly below x: bin i is (e[i-1], e[i]].
    exp_counts = np.bincount(np.searchsorted(edges, expected, side="left"), minlength=10)
    act_counts = np.bincount(np.searchsorted(edges, actual, side="left"), minlength=10)
    p = np.maximum(exp_counts / expected.size, PSI_FLOOR)
    s = np.maximum(act_counts / actual.size, PSI_FLOOR)
    return float(np.sum((s - p) * np.log(s / p)))


def compare_distributions(
    expected: np.ndarray, actual: np.ndarray, *, presorted: bool = False
) -> DistributionShift:
    """PSI, two-sample KS (scipy's default method) and Wasserstein-1 scaled by std(expected).

    Both inputs must be finite; an empty side yields a result with a message. Small samples
    go to scipy itself; above :data:`SCIPY_MAX_N` the same figures come from one merge of the
    sorted samples, which is several times cheaper at millions of values.
    """
    if expected.size == 0 or actual.size == 0:
        return DistributionShift(None, None, None, None, "one of the samples is empty")
    psi = population_stability_index(expected, actual)
    # A constant sample's np.std can be a few ulps above 0; min == max is the exact test.
    spread = 0.0 if expected.min() == expected.max() else float(np.std(expected))
    if max(expected.size, actual.size) > SCIPY_MAX_N:
        return sorted_ks_shift(expected if presorted else np.sort(expected),
                               actual if presorted else np.sort(actual), psi, spread)
    from scipy import stats

    with warnings.catch_warnings():
        # scipy falls back to its asymptotic p-value by itself and says so; the
        # report's figure is that fallback (its documented behaviour), not an error.
        warnings.filterwarnings("ignore", "ks_2samp: Exact calculation unsuccessful",
                                RuntimeWarning)
        ks = stats.ks_2samp(expected, actual)
    distance = float(stats.wasserstein_distance(expected, actual)) if spread > 0 else 0.0
    return _shift(psi, float(ks.statistic), float(ks.pvalue), distance, spread)


def sorted_ks_shift(expected: np.ndarray, actual: np.ndarray, psi: float,
                    spread: float) -> DistributionShift:
    """The shift of two sorted samples above :data:`SCIPY_MAX_N`: KS and Wasserstein by one
    merge, the KS p-value scipy's asymptotic branch of ``ks_2samp`` (taken there for more
    than 10000 values); ``psi`` and ``spread`` (std of ``expected``) as computed."""
    from scipy import stats

    ks_stat, distance = _merged_ks_wasserstein(expected, actual)
    big, small = sorted((float(expected.size), float(actual.size)), reverse=True)
    ks_p = float(np.clip(stats.kstwo.sf(ks_stat, np.round(big * small / (big + small))), 0, 1))
    return _shift(psi, ks_stat, ks_p, distance, spread)


def _shift(psi: float, ks_stat: float, ks_p: float, distance: float,
           spread: float) -> DistributionShift:
    if spread > 0:
        return DistributionShift(psi, ks_stat, ks_p, distance / spread)
    return DistributionShift(psi, ks_stat, ks_p, None,
                             "wasserstein is undefined: the reference sample is constant")


def _merged_ks_wasserstein(u: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """KS statistic and Wasserstein-1 distance of two sorted samples, by one stable merge.

    Written for 10M-value samples: temporaries are released as soon as they are used.
    """
    merged = np.concatenate([u, v])
    order = np.argsort(merged, kind="stable")  # two sorted runs: a linear merge
    values = merged[order]
    del merged
    from_u = np.cumsum(order < u.size, dtype=np.int64)  # ECDF counts of u at each value
    del order
    from_v = np.arange(1, values.size + 1, dtype=np.int64)
    from_v -= from_u
    cdf_v = from_v / v.size
    del from_v
    gap = from_u / u.size
    del from_u
    gap -= cdf_v
    del cdf_v
    deltas = np.diff(values)
    del values
    # Inside a run of ties the partial counts are not the ECDF, but there the step is 0.
    ends = np.append(deltas != 0, True)
    at_ends = gap[ends]
    del ends
    ks_stat = max(float(at_ends.max()), float(np.clip(-at_ends.min(), 0, 1)))
    del at_ends
    np.abs(gap, out=gap)
    np.multiply(gap[:-1], deltas, out=deltas)
    return ks_stat, float(np.sum(deltas))


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho: Pearson's r of average ranks; ``None`` when either side is constant."""
    return spearman_sorted(*sort_with_ranks(x), *sort_with_ranks(y))


def sort_with_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted values and each value's 1-based average rank (scipy ``rankdata``)."""
    order = np.argsort(values)
    ordered = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    starts_block = np.empty(values.size, dtype=bool)
    starts_block[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_block[1:])
    if starts_block.all():  # no ties: ranks are positions
        ranks[order] = np.arange(1, values.size + 1, dtype=np.float64)
        return ordered, ranks
    block = np.cumsum(starts_block) - 1
    starts = np.flatnonzero(starts_block)
    del starts_block
    ends = np.append(starts[1:], values.size)
    ranks[order] = ((starts + 1 + ends) / 2.0)[block]
    return ordered, ranks


def spearman_sorted(
    x_sorted: np.ndarray, x_ranks: np.ndarray, y_sorted: np.ndarray, y_ranks: np.ndarray
) -> float | None:
    """Spearman's rho from :func:`sort_with_ranks` of both sides."""
    rho: float | None = None
    if x_ranks.size >= 2 and x_sorted[0] != x_sorted[-1] and y_sorted[0] != y_sorted[-1]:
        value = float(np.corrcoef(x_ranks, y_ranks)[0, 1])
        rho = value if np.isfinite(value) else None
    return rho


def lerp(low: float, high: float, t: float) -> float:
    """numpy's ``_lerp`` (both branches), so a quantile read at its order statistics is
    numpy's ``quantile`` (method ``linear``) to the last bit."""
    span = high - low
    return float(high - span * (1 - t)) if t >= 0.5 else float(low + span * t)


def quantile_plan(n: int, probs: Sequence[float]) -> list[tuple[int, int, float]]:
    """For ``numpy.quantile`` (method ``linear``) of ``n`` values: per probability, the two
    0-based order statistics it reads and the weight :func:`lerp` gives the second."""
    plan = []
    for q in probs:
        at = float(n - 1) * float(q)  # numpy's virtual index
        prev = math.floor(at)
        plan.append((prev, min(prev + 1, n - 1), at - prev))
    return plan


def sorted_quantiles(ordered: np.ndarray, probs: Sequence[float]) -> list[float]:
    """``numpy.quantile(values, probs)`` (method ``linear``) of sorted values, read at the
    order statistics (no selection pass over the values), interpolated as numpy does."""
    return [lerp(float(ordered[lo]), float(ordered[hi]), w)
            for lo, hi, w in quantile_plan(ordered.size, probs)]


def wilson_interval(successes: int, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval for ``successes / n``; ``None`` when ``n == 0``."""
    if n <= 0:
        return None
    share = successes / n
    z2 = _Z95 * _Z95
    denom = 1 + z2 / n
    center = (share + z2 / (2 * n)) / denom
    half = _Z95 * np.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes <= 0 else max(0.0, float(center - half))
    high = 1.0 if successes >= n else min(1.0, float(center + half))
    return (low, high)
