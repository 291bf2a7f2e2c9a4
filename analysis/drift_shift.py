"""The drift report's numeric figures from two sorted samples, counted by binary search.

:func:`analysis.distribution.compare_distributions` (``presorted=True``) and the
Jensen-Shannon histogram of :func:`analysis.drift._numeric_shift` do the same operations on
the same arrays, so the figures are the same to the last bit; on sorted samples the PSI
bins and the histogram are a few ``searchsorted`` calls instead of a search per value
(PSI) and a sort of every 65,536 values (``numpy.histogram`` with explicit edges), which
were half of the report's statistics at a million values a window.
"""

from __future__ import annotations

import numpy as np

from analysis.distribution import (
    PSI_FLOOR,
    PSI_QUANTILES,
    SCIPY_MAX_N,
    DistributionShift,
    compare_distributions,
    sorted_ks_shift,
)

__all__ = ["sorted_histogram", "sorted_shift"]


def sorted_shift(expected: np.ndarray, actual: np.ndarray) -> DistributionShift:
    """``compare_distributions(expected, actual, presorted=True)`` for sorted, finite samples."""
    if expected.size == 0 or actual.size == 0 or max(expected.size, actual.size) <= SCIPY_MAX_N:
        return compare_distributions(expected, actual, presorted=True)
    # A constant sample's np.std can be a few ulps above 0; min == max is the exact test.
    spread = 0.0 if expected[0] == expected[-1] else float(np.std(expected))
    return sorted_ks_shift(expected, actual, _psi(expected, actual), spread)


def sorted_histogram(ordered: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``numpy.histogram(ordered, edges)[0]`` of a sorted sample: numpy's own cumulative
    counts (``_search_sorted_inclusive``: the last bin closed) without its sorting."""
    cumulative = np.concatenate((ordered.searchsorted(edges[:-1], "left"),
                                 ordered.searchsorted(edges[-1:], "right")))
    counts: np.ndarray = np.diff(cumulative)
    return counts


def _psi_counts(ordered: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # population_stability_index puts x in bin i when e[i-1] < x <= e[i] (a side="left"
    # search of x in the edges): the count is #(x <= e[i]) - #(x <= e[i-1]).
    at_or_below = np.searchsorted(ordered, edges, side="right")
    counts: np.ndarray = np.diff(at_or_below, prepend=0, append=ordered.size)
    return counts


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """population_stability_index of two sorted samples."""
    edges = np.quantile(expected, PSI_QUANTILES)
    p = np.maximum(_psi_counts(expected, edges) / expected.size, PSI_FLOOR)
    s = np.maximum(_psi_counts(actual, edges) / actual.size, PSI_FLOOR)
    return float(np.sum((s - p) * np.log(s / p)))
