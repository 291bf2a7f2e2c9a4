"""The divergence report's score figures of one pair, from its two score columns in numpy.

The embedded engine's path (DuckDB): the pair table hands back each pair's finite primary
and shadow scores once, and these figures are computed on their sorted copies, the same
ones :func:`analysis.distribution_engine.score_figures` computes as engine reductions for
Spark (whose windows ran single-threaded in DuckDB, several times slower). Both sides have
the same size (paired scores), which makes each figure a pass over the sorted columns:

- **KS**: at the last of each run of equal values of one side, that side's ECDF count is
  the run's end position; the other's is a ``searchsorted`` of the value. The largest gap
  over both sides' runs is ``max |F_p - F_s|`` over the pooled values.
- **Wasserstein-1** of two equal-size samples is the mean distance between their order
  statistics (the area between the ECDFs, summed by rank instead of by value).
- **Spearman**: twice each average rank (an integer, scipy's ``rankdata`` times two),
  centred on ``n + 1`` and summed as products, like the engine's expression.
- **PSI** edges are ``numpy.quantile`` of the primary (linear), bins right-closed;
  **histograms** ``numpy.histogram``'s bins (half-open, the last closed), all counted by
  ``searchsorted`` on the sorted columns.

Work is done in chunks, so the temporaries stay small beside the columns: at 10M pairs the
peak is the two columns, their sorted copies and two int32 rank arrays (about 400 MB).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from analysis.distribution import PSI_FLOOR, PSI_QUANTILES, sorted_quantiles
from analysis.distribution_engine import HIST_BINS, ScoreFigures, diff_range, plot_edges

__all__ = ["BYTES_PER_PAIR", "paired_figures"]

#: Peak bytes per finite pair of :func:`paired_figures` (both columns, both sorted copies,
#: one side's argsort and both int32 rank arrays), for the caller's memory budget.
BYTES_PER_PAIR = 16 + 16 + 8 + 8 + 4
_CHUNK = 1 << 20


def paired_figures(columns: list[np.ndarray]) -> ScoreFigures:
    """The figures of :func:`analysis.distribution_engine.score_figures` for one pair.

    ``columns`` holds the pair's finite primary and shadow scores, row by row; it is
    emptied, so each column is freed as soon as its sorted copy exists (the caller should
    hold no other reference)."""
    ps, ss = columns
    n = int(ps.size)
    if n == 0 or ss.size != n:
        raise ValueError("paired_figures needs two non-empty columns of the same length")
    diff_hist = _diff_hist(ps, ss)
    p_std = float(np.std(ps))
    del ps, ss
    sides = [[columns.pop(0)], [columns.pop(0)]]
    with ThreadPoolExecutor(max_workers=2) as pool:  # numpy's sorts and searches release the GIL
        (p_sorted, p_r2), (s_sorted, s_r2) = pool.map(_sorted_with_ranks, sides)
        p_min, p_max = float(p_sorted[0]), float(p_sorted[-1])
        s_min, s_max = float(s_sorted[0]), float(s_sorted[-1])
        rho = None
        if n >= 2 and p_min != p_max and s_min != s_max:
            rho = _spearman(p_r2, s_r2)
        del p_r2, s_r2
        ks, distance = _ks_wasserstein(p_sorted, s_sorted, pool)
    edges = np.array(sorted_quantiles(p_sorted, PSI_QUANTILES.tolist()), dtype=np.float64)
    # bin i is (e[i-1], e[i]]: the values at or below each edge, differenced
    exp_counts = np.diff(np.searchsorted(p_sorted, edges, side="right"), prepend=0, append=n)
    act_counts = np.diff(np.searchsorted(s_sorted, edges, side="right"), prepend=0, append=n)
    p = np.maximum(exp_counts / n, PSI_FLOOR)
    s = np.maximum(act_counts / n, PSI_FLOOR)
    plots = {}
    low, high = min(p_min, s_min), max(p_max, s_max)
    if high > low:
        hist_edges = plot_edges(low, high)
        plots = {"score_hist": {"edges": hist_edges.tolist(),
                                "primary": _sorted_hist(p_sorted, hist_edges),
                                "shadow": _sorted_hist(s_sorted, hist_edges)},
                 "diff_hist": diff_hist}
    return {"n": n, "p_min": p_min, "p_max": p_max, "p_std": p_std, "ks_stat": ks,
            "wasserstein": distance, "spearman": rho,
            "psi": float(np.sum((s - p) * np.log(s / p))), "plots": plots}


def _sorted_with_ranks(holder: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The sorted values of ``holder``'s one column (taken out of it, freed once sorted)
    and twice each value's average rank (int32), in row order."""
    values = holder.pop()
    n = values.size
    kind: type[np.signedinteger[Any]] = np.int32 if 2 * n + 1 < 2**31 else np.int64
    order = np.argsort(values)
    ordered = values[order]
    del values
    # Twice the average rank of a run of ties [start, end) (1-based ranks start+1..end) is
    # start + 1 + end, written chunk by chunk: the starts by a running maximum carried
    # from the chunk before, the ends by a running minimum from the chunk's last run end.
    r2 = np.empty(n, dtype=kind)
    start = 0
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        block = ordered[lo:hi]
        new = np.empty(hi - lo, dtype=bool)
        new[0] = lo == 0 or block[0] != ordered[lo - 1]
        np.not_equal(block[1:], block[:-1], out=new[1:])
        starts = np.where(new, np.arange(lo, hi, dtype=kind), kind(start))
        np.maximum.accumulate(starts, out=starts)
        start = int(starts[-1])
        last = np.empty(hi - lo, dtype=bool)
        last[:-1] = new[1:]
        last[-1] = True
        # the exclusive end of a run is the position after its last value; the chunk's
        # last run may go on into the next chunks
        ends = np.where(last, np.arange(lo + 1, hi + 1, dtype=kind), kind(n))
        ends[-1] = np.searchsorted(ordered, block[-1], side="right")
        ends = np.minimum.accumulate(ends[::-1])[::-1]
        starts += 1
        starts += ends
        r2[order[lo:hi]] = starts
    return ordered, r2


def _spearman(x_r2: np.ndarray, y_r2: np.ndarray) -> float | None:
    """Pearson's r of the ranks, centred on the mean rank (twice: n + 1) before the
    products are summed, so no digits cancel."""
    mid = float(x_r2.size + 1)
    sxy = sxx = syy = 0.0
    for lo in range(0, x_r2.size, _CHUNK):
        x = x_r2[lo:lo + _CHUNK].astype(np.float64) - mid
        y = y_r2[lo:lo + _CHUNK].astype(np.float64) - mid
        sxy += float(np.dot(x, y))
        sxx += float(np.dot(x, x))
        syy += float(np.dot(y, y))
    value = sxy / np.sqrt(sxx * syy)
    return float(np.clip(value, -1.0, 1.0)) if np.isfinite(value) else None


def _ks_wasserstein(p_sorted: np.ndarray, s_sorted: np.ndarray,
                    pool: ThreadPoolExecutor) -> tuple[float, float]:
    n = p_sorted.size
    gaps = pool.map(_largest_gap, (p_sorted, s_sorted), (s_sorted, p_sorted))
    distance = 0.0
    for lo in range(0, n, _CHUNK):
        distance += float(np.abs(p_sorted[lo:lo + _CHUNK] - s_sorted[lo:lo + _CHUNK]).sum())
    return max(gaps) / n, distance / n


def _largest_gap(mine: np.ndarray, other: np.ndarray) -> int:
    """The largest ECDF count gap at the last of each run of equal values of ``mine``."""
    n, gap = mine.size, 0
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        block = mine[lo:hi]
        # the last of each run of equal values: the next value differs (or none follows)
        follows = mine[lo + 1:hi + 1]
        last = np.ones(hi - lo, dtype=bool)
        last[:follows.size] = block[:follows.size] != follows
        at = np.flatnonzero(last)
        if not at.size:
            continue
        mine_count = at + (lo + 1)
        # the block's values fall in a narrow slice of the other side: search only there
        first = int(np.searchsorted(other, block[0], side="right"))
        stop = int(np.searchsorted(other, block[-1], side="right"))
        other_count = np.searchsorted(other[first:stop], block[at], side="right") + first
        gap = max(gap, int(np.abs(mine_count - other_count).max()))
    return gap


def _sorted_hist(ordered: np.ndarray, edges: np.ndarray) -> list[int]:
    """``numpy.histogram(values, edges)`` of sorted values: half-open bins, the last closed."""
    below = np.searchsorted(ordered, edges[1:-1], side="left")
    counts: list[int] = np.diff(below, prepend=0, append=ordered.size).tolist()
    return counts


def _diff_hist(ps: np.ndarray, ss: np.ndarray) -> dict[str, list[float] | list[int]]:
    d_low = d_high = None
    for lo in range(0, ps.size, _CHUNK):
        d = ss[lo:lo + _CHUNK] - ps[lo:lo + _CHUNK]
        low, high = float(d.min()), float(d.max())
        d_low = low if d_low is None else min(d_low, low)
        d_high = high if d_high is None else max(d_high, high)
    assert d_low is not None and d_high is not None
    start, stop = diff_range(d_low, d_high)
    counts = np.zeros(HIST_BINS, dtype=np.int64)
    for lo in range(0, ps.size, _CHUNK):
        d = ss[lo:lo + _CHUNK] - ps[lo:lo + _CHUNK]
        counts += np.histogram(d, bins=HIST_BINS, range=(start, stop))[0]
    return {"edges": np.linspace(start, stop, HIST_BINS + 1).tolist(),
            "counts": counts.tolist()}
