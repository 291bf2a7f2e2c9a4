"""AUC and DeLong's covariance as engine reductions (the quality report on any engine).

DeLong's variance of an AUC needs, for each positive, the share of negatives scored below
it (V10, a tie counting half), and for each negative the share of positives scored above it
(V01) (Sun & Xu's midrank form, as :func:`analysis.quality.auc_delong`). Both are running
counts over the scores: a RANGE window ordered by score counts the rows at or below a
score, a window over the score's ties counts the rows equal to it. The AUC is the mean of
V10, and the variances and covariances are sums of products centred on the means (a window
over the group), so nothing cancels and a few numbers per group come back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.engine import Engine

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = ["auc_sums", "paired_auc_sums", "with_delong"]


def with_delong(t: ir.Table, keys: Sequence[str], score: str, tag: str) -> ir.Table:
    """``t`` (rows with ``keys``, a 0/1 outcome ``y`` and ``score``) with each row's V10
    (``v10_TAG``, for a positive) and V01 (``v01_TAG``, for a negative) within its group,
    and the group's positives ``_m`` and negatives ``_n``."""
    import ibis

    g = list(keys)
    t = t.mutate(_pos=(t.y == 1).cast("float64"), _neg=(t.y == 0).cast("float64"))
    whole = ibis.window(group_by=g)
    upto = ibis.range_window(preceding=None, following=0, group_by=g, order_by=[t[score]])
    ties = ibis.window(group_by=[*g, score])
    t = t.mutate(
        _m=t._pos.sum().over(whole), _n=t._neg.sum().over(whole),
        _le_pos=t._pos.sum().over(upto), _le_neg=t._neg.sum().over(upto),
        _eq_pos=t._pos.sum().over(ties), _eq_neg=t._neg.sum().over(ties))
    half = ibis.literal(0.5, type="float64")
    t = t.mutate(**{
        f"v10_{tag}": (t._le_neg - half * t._eq_neg) / t._n,
        f"v01_{tag}": 1 - (t._le_pos - half * t._eq_pos) / t._m})
    return t.drop("_le_pos", "_le_neg", "_eq_pos", "_eq_neg")


def _centred(t: ir.Table, keys: Sequence[str], tags: Sequence[str]) -> ir.Table:
    """``t`` with each V column less its mean over the group's positives (V10) or
    negatives (V01): ``c10_TAG``, ``c01_TAG`` (NULL on the other class)."""
    import ibis

    whole = ibis.window(group_by=list(keys))
    none = ibis.null("float64")
    cols: dict[str, Any] = {}
    for tag in tags:
        m10 = (t._pos * t[f"v10_{tag}"]).sum().over(whole) / t._m
        m01 = (t._neg * t[f"v01_{tag}"]).sum().over(whole) / t._n
        cols[f"c10_{tag}"] = ibis.ifelse(t.y == 1, t[f"v10_{tag}"] - m10, none)
        cols[f"c01_{tag}"] = ibis.ifelse(t.y == 0, t[f"v01_{tag}"] - m01, none)
    return t.mutate(**cols)


def auc_sums(engine: Engine, t: ir.Table, keys: Sequence[str]
             ) -> dict[tuple[Any, ...], tuple[float | None, float | None]]:
    """Per group of ``keys`` of rows with ``pred`` and a 0/1 ``y``: the AUC (ties count
    half) and its DeLong standard error, None where :func:`analysis.quality.auc_delong`
    gives None (one class; one member in a class)."""
    g = list(keys)
    r = _centred(with_delong(t.select(*g, "pred", "y"), g, "pred", "a"), g, ["a"])
    agg = r.aggregate(by=g, m=r._m.max(), n=r._n.max(),
                      a10=(r._pos * r.v10_a).sum(), q10=(r.c10_a * r.c10_a).sum(),
                      q01=(r.c01_a * r.c01_a).sum())
    out: dict[tuple[Any, ...], tuple[float | None, float | None]] = {}
    for row in engine.rows(agg):
        m, n = int(row["m"] or 0), int(row["n"] or 0)
        key = tuple(row[k] for k in g)
        if m == 0 or n == 0:
            out[key] = (None, None)
            continue
        auc = float(row["a10"]) / m
        if m < 2 or n < 2:
            out[key] = (auc, None)
            continue
        var = float(row["q10"]) / (m - 1) / m + float(row["q01"]) / (n - 1) / n
        out[key] = (auc, float(np.sqrt(max(var, 0.0))))
    return out


def paired_auc_sums(engine: Engine, t: ir.Table, keys: Sequence[str]
                    ) -> dict[tuple[Any, ...], tuple[int, float, float, float | None]]:
    """Per group of ``keys`` of paired rows (``ps``, ``ss`` scores of the same request and
    its 0/1 ``y``): (positives, AUC of ps, AUC of ss, DeLong variance of the difference;
    None with a class of one member) as :func:`analysis.quality.paired_auc_delong`."""
    g = list(keys)
    r = with_delong(t.select(*g, "ps", "ss", "y"), g, "ps", "p")
    r = with_delong(r.drop("_pos", "_neg", "_m", "_n"), g, "ss", "s")
    r = _centred(r, g, ["p", "s"])
    agg = r.aggregate(
        by=g, m=r._m.max(), n=r._n.max(), ap=(r._pos * r.v10_p).sum(),
        as_=(r._pos * r.v10_s).sum(), pp10=(r.c10_p * r.c10_p).sum(),
        ss10=(r.c10_s * r.c10_s).sum(), ps10=(r.c10_p * r.c10_s).sum(),
        pp01=(r.c01_p * r.c01_p).sum(), ss01=(r.c01_s * r.c01_s).sum(),
        ps01=(r.c01_p * r.c01_s).sum())
    out: dict[tuple[Any, ...], tuple[int, float, float, float | None]] = {}
    for row in engine.rows(agg):
        m, n = int(row["m"] or 0), int(row["n"] or 0)
        key = tuple(row[k] for k in g)
        if m == 0 or n == 0:
            out[key] = (m, 0.0, 0.0, None)
            continue
        var = None
        if m >= 2 and n >= 2:
            var = (_cov(row, "pp", m, n) + _cov(row, "ss", m, n)
                   - 2 * _cov(row, "ps", m, n))
        out[key] = (m, float(row["ap"]) / m, float(row["as_"]) / m, var)
    return out


def _cov(row: dict[str, Any], name: str, m: int, n: int) -> float:
    """One entry of DeLong's covariance: S10 / m + S01 / n (sample covariances)."""
    return float(row[f"{name}10"]) / (m - 1) / m + float(row[f"{name}01"]) / (n - 1) / n
