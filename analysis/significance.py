"""Significance procedures for A/B experiments, each working on sufficient statistics.

SRM chi-square, Welch t, two-proportion z, ratio (delta method), CUPED, each also on an
asymptotic confidence sequence (:mod:`analysis.confidence_sequence`, whose names are
re-exported here), Holm/BH adjustment and power. Degenerate input gives a result
whose undefined figures are None beside a ``message``; nothing here raises on data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy import stats as _sps

from analysis.confidence_sequence import (
    DEFAULT_ALPHA,
    DEFAULT_SEQUENTIAL_N_OPT,
    HORIZON_LEVELS,
    cs_multiplier,
    cs_p_value,
    horizon_alpha,
    mixture_rho2,
)
from analysis.stats import P_FLOOR, PairStats, SampleStats

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_POWER",
    "DEFAULT_SEQUENTIAL_N_OPT",
    "HORIZON_LEVELS",
    "P_FLOOR",
    "SRM_THRESHOLD",
    "Comparison",
    "Inference",
    "Method",
    "SrmResult",
    "benjamini_hochberg",
    "cs_multiplier",
    "cs_p_value",
    "cuped_test",
    "holm",
    "horizon_alpha",
    "minimum_detectable_effect",
    "mixture_rho2",
    "proportions_test",
    "ratio_test",
    "sample_size_per_arm",
    "sequential_test",
    "srm_test",
    "welch_test",
]

DEFAULT_POWER = 0.8
#: SRM flag level (DESIGN section 5).
SRM_THRESHOLD = 0.001


Method = Literal[
    "welch",
    "welch_sequential",
    "ztest",
    "ratio_delta",
    "ratio_delta_sequential",
    "cuped",
    "cuped_sequential",
]
Inference = Literal["fixed", "sequential"]
_Interval = Literal["t", "z", "cs"]


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, tuples become lists, numpy unboxed."""
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (tuple, list)):
        return [_clean(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    return value


def _fin(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _join(messages: Sequence[str]) -> str | None:
    return "; ".join(messages) if messages else None


# --------------------------------------------------------------------------- SRM


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio mismatch: chi-square goodness of fit of units per variant to the weights."""

    counts: dict[str, int]
    expected_share: dict[str, float]
    statistic: float | None
    p_value: float | None
    flag: bool
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "p_value": _clean(self.p_value),
            "flag": self.flag,
            "counts": dict(self.counts),
            "expected_share": _clean(self.expected_share),
            "statistic": _clean(self.statistic),
            "message": self.message,
        }


def srm_test(
    counts: Mapping[str, int],
    weights: Mapping[str, float] | None = None,
    *,
    threshold: float = SRM_THRESHOLD,
) -> SrmResult:
    """Chi-square test of distinct units per variant against relative ``weights``.

    Without weights the expected split is equal over the variants with units. With
    weights, every weighted variant is a category (an empty one is itself a mismatch)
    and a variant with units but no weight makes the test undefined, naming it.
    """
    counts = {str(k): int(v) for k, v in counts.items()}
    present = [k for k, v in counts.items() if v > 0]
    if weights is None:
        names = present
        raw = {k: 1.0 for k in names}
    else:
        unweighted = [k for k in present if k not in weights]
        if unweighted:
            listed = ", ".join(repr(k) for k in unweighted)
            return SrmResult(counts, {}, None, None, False,
                             f"variant(s) {listed} have units but no configured weight")
        bad = [k for k, w in weights.items() if not (math.isfinite(w) and w >= 0)]
        if bad:
            return SrmResult(counts, {}, None, None, False,
                             f"weight of {', '.join(map(repr, bad))} is not a finite number >= 0")
        zero = [k for k in present if weights[k] == 0]
        names = [k for k, w in weights.items() if w > 0]
        raw = {k: float(weights[k]) for k in names}
        if zero:
            total = sum(raw.values())
            share = {k: w / total for k, w in raw.items()} if total > 0 else {}
            return SrmResult(counts, share, None, 0.0, True,
                             f"variant(s) {', '.join(map(repr, zero))} have units but weight 0")
    total_w = sum(raw.values())
    obs = np.array([counts.get(k, 0) for k in names], dtype=float)
    n = float(obs.sum())
    share = {k: raw[k] / total_w for k in names} if total_w > 0 else {}
    full_counts = {**{k: 0 for k in names}, **counts}
    if n == 0:
        return SrmResult(full_counts, share, None, None, False, "no units")
    if len(names) < 2:
        return SrmResult(full_counts, share, None, None, False,
                         "fewer than two variants: nothing to compare")
    expected = np.array([share[k] for k in names]) * n
    statistic = float(np.sum((obs - expected) ** 2 / expected))
    p = float(_sps.chi2.sf(statistic, len(names) - 1))
    return SrmResult(full_counts, share, statistic, p, p < threshold)


# ------------------------------------------------------------------ comparisons


@dataclass(frozen=True)
class Comparison:
    """One variant against the control on one metric: effect, 95% CI, p-value.

    ``abs_effect`` is variant - control; ``rel_effect`` is that over |control mean|.
    ``mde`` is the fixed-horizon minimal detectable effect at the current n (alpha 0.05
    two-sided, power 0.8), also for sequential methods. Figures that are undefined for
    the input are None and ``message`` says why.
    """

    method: Method
    n_control: int
    n_variant: int
    mean_control: float | None
    mean_variant: float | None
    abs_effect: float | None = None
    abs_ci: tuple[float, float] | None = None
    rel_effect: float | None = None
    rel_ci: tuple[float, float] | None = None
    p_value: float | None = None
    statistic: float | None = None
    df: float | None = None
    se: float | None = None
    mde: float | None = None
    message: str | None = None
    extra: dict[str, float | None] = field(default_factory=dict)
    #: what ``rel_effect`` divides by (the control figure it is relative to)
    rel_base: str = "control mean"

    def to_dict(self) -> dict[str, Any]:
        p = self.p_value
        bound = p is not None and p == 0.0
        out: dict[str, Any] = {
            "n_control": self.n_control,
            "n_variant": self.n_variant,
            "mean_control": self.mean_control,
            "mean_variant": self.mean_variant,
            "abs_effect": self.abs_effect,
            "abs_ci": self.abs_ci,
            "rel_effect": self.rel_effect,
            "rel_ci": self.rel_ci,
            "p_value": P_FLOOR if bound else p,
            "method": self.method,
            "message": self.message,
            "p_value_is_bound": bound,
            "rel_effect_of": self.rel_base,
            "statistic": self.statistic,
            "df": self.df,
            "se": self.se,
            "mde": self.mde,
            **self.extra,
        }
        return {k: _clean(v) for k, v in out.items()}


@dataclass(frozen=True)
class _Arms:
    """Per-arm estimate m, per-unit variance v and n: the input every method reduces to."""

    n_a: int
    m_a: float
    v_a: float
    n_b: int
    m_b: float
    v_b: float
    #: m_b - m_a taken from sums around one shift (its digits survive a mean of 1e7)
    d: float | None = None


def _compare(
    method: Method,
    arms: _Arms,
    interval: _Interval,
    *,
    alpha: float,
    power: float = DEFAULT_POWER,
    n_opt: float | None = DEFAULT_SEQUENTIAL_N_OPT,
    level: float | None = None,
    means: tuple[float, float] | None = None,
    messages: Sequence[str] = (),
    extra: Mapping[str, float | None] | None = None,
) -> Comparison:
    msgs = list(messages)
    mean_a, mean_b = means if means is not None else (arms.m_a, arms.m_b)
    extras = dict(extra or {})
    empty = Comparison(
        method=method,
        n_control=arms.n_a,
        n_variant=arms.n_b,
        mean_control=_fin(mean_a) if arms.n_a > 0 else None,
        mean_variant=_fin(mean_b) if arms.n_b > 0 else None,
        extra=extras,
    )
    if arms.n_a < 2 or arms.n_b < 2:
        missing = [w for w, n in (("control", arms.n_a), ("variant", arms.n_b)) if n == 0]
        msgs.append(f"{' and '.join(missing)} has no units" if missing else
                    f"n_control={arms.n_a}, n_variant={arms.n_b}: at least 2 units per arm needed")
        return replace(empty, message=_join(msgs))
    values = (arms.m_a, arms.v_a, arms.m_b, arms.v_b)
    if not all(math.isfinite(v) for v in values):
        msgs.append("statistics are not finite (NaN or infinite input)")
        return replace(empty, message=_join(msgs))
    d = arms.m_b - arms.m_a if arms.d is None else arms.d
    va, vb = arms.v_a / arms.n_a, arms.v_b / arms.n_b
    se = math.sqrt(va + vb)
    if se == 0.0:
        msgs.append("zero variance in both variants: no interval or p-value")
        return replace(empty, abs_effect=d, se=0.0, message=_join(msgs))

    df: float | None = None
    z = d / se
    if interval == "t":
        df = (va + vb) ** 2 / (va**2 / (arms.n_a - 1) + vb**2 / (arms.n_b - 1))
        q = float(_sps.t.ppf(1.0 - alpha / 2.0, df))
        p = float(2.0 * _sps.t.sf(abs(z), df))
    elif interval == "z":
        q = float(_sps.norm.ppf(1.0 - alpha / 2.0))
        p = float(2.0 * _sps.norm.sf(abs(z)))
    else:
        # n_opt None: tuned to this comparison's own units; level: the boundary's alpha
        # (a planned sample size raises it, see horizon_alpha).
        n_total = arms.n_a + arms.n_b
        tuned = float(n_total) if n_opt is None else float(n_opt)
        boundary = alpha if level is None else level
        rho2 = mixture_rho2(tuned, boundary)
        q = float(cs_multiplier(n_total, boundary, rho2))
        p = float(cs_p_value(z, n_total, rho2)) * alpha / boundary
        p = min(1.0, p)
        extras["sequential_rho2"] = rho2
        extras["sequential_n_opt"] = tuned
        extras["sequential_level"] = boundary
    mde = _z_sum(alpha, power) * se

    rel = rel_ci = None
    if arms.m_a == 0.0:
        msgs.append("control mean is 0: relative effect undefined")
    else:
        if arms.m_a < 0.0:
            msgs.append("control mean is negative: relative effect is over |control mean|")
        ma2 = arms.m_a * arms.m_a
        rel = d / abs(arms.m_a)
        se_rel = math.sqrt(vb / ma2 + va * arms.m_b * arms.m_b / (ma2 * ma2))
        rel_ci = (rel - q * se_rel, rel + q * se_rel)
    return replace(
        empty,
        abs_effect=d,
        abs_ci=(d - q * se, d + q * se),
        rel_effect=rel,
        rel_ci=rel_ci,
        p_value=p,
        statistic=z,
        df=df,
        se=se,
        mde=mde,
        message=_join(msgs),
    )


def _sample_arms(control: SampleStats, variant: SampleStats) -> _Arms:
    d = None
    if control.shift == variant.shift and control.shift and control.n and variant.n:
        d = variant.sum / variant.n - control.sum / control.n
    return _Arms(control.n, control.mean, control.variance,
                 variant.n, variant.mean, variant.variance, d)


def welch_test(
    control: SampleStats,
    variant: SampleStats,
    *,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    inference: Inference = "fixed",
    n_opt: float | None = DEFAULT_SEQUENTIAL_N_OPT,
    level: float | None = None,
) -> Comparison:
    """Difference in means, Welch: t quantile at the Welch-Satterthwaite df.

    Relative effect (b - a)/|a| with delta-method SE
    sqrt(v_b/(m_a^2 n_b) + v_a m_b^2/(m_a^4 n_a)) and the same quantile.
    ``inference="sequential"`` swaps the t quantile for the confidence-sequence
    multiplier (see :func:`cs_multiplier`).
    """
    if inference == "sequential":
        return sequential_test(control, variant, alpha=alpha, power=power, n_opt=n_opt,
                               level=level)
    return _compare("welch", _sample_arms(control, variant), "t", alpha=alpha, power=power)


def sequential_test(
    control: SampleStats,
    variant: SampleStats,
    *,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    n_opt: float | None = DEFAULT_SEQUENTIAL_N_OPT,
    level: float | None = None,
) -> Comparison:
    """Difference in means with an asymptotic confidence sequence (safe under peeking).

    The interval is (b - a) +- se * k(n), n = n_a + n_b units, se the Welch standard
    error, k from :func:`cs_multiplier` with rho^2 = :func:`mixture_rho2` (n_opt, alpha):
    rho tunes where the boundary is tightest (n_opt units; None: this comparison's own
    units). ``level`` is the boundary's alpha when it differs from ``alpha``
    (:func:`horizon_alpha` for a planned sample size); ``p_value`` is then
    :func:`cs_p_value` * alpha / level, so ``p_value < alpha`` exactly when the interval
    excludes 0.
    """
    return _compare("welch_sequential", _sample_arms(control, variant), "cs",
                    alpha=alpha, power=power, n_opt=n_opt, level=level)


def proportions_test(
    control: SampleStats,
    variant: SampleStats,
    *,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
) -> Comparison:
    """Two-proportion z-test (pooled variance, as statsmodels ``proportions_ztest``).

    The interval is the unpooled Wald interval p_b - p_a +- z * se; sums must be counts
    of successes (a 0/1 metric: sum_sq == sum).
    """
    msgs: list[str] = []
    for name, s in (("control", control), ("variant", variant)):
        if s.n > 0 and (s.total_sq != s.total or not 0 <= s.total <= s.n):
            msgs.append(f"{name} is not a 0/1 metric")
    empty = Comparison(method="ztest", n_control=control.n, n_variant=variant.n,
                       mean_control=_fin(control.mean) if control.n else None,
                       mean_variant=_fin(variant.mean) if variant.n else None)
    if msgs or control.n < 1 or variant.n < 1:
        if not msgs:
            msgs.append("a variant has no units")
        return replace(empty, message=_join(msgs))
    pa, pb = control.mean, variant.mean
    pooled = (control.total + variant.total) / (control.n + variant.n)
    se0 = math.sqrt(pooled * (1.0 - pooled) * (1.0 / control.n + 1.0 / variant.n))
    if se0 == 0.0:
        return replace(empty, abs_effect=pb - pa,
                       message="all units have the same outcome: no test")
    z = (pb - pa) / se0
    p = float(2.0 * _sps.norm.sf(abs(z)))
    wald = _compare("ztest", _Arms(control.n, pa, pa * (1 - pa), variant.n, pb, pb * (1 - pb)),
                    "z", alpha=alpha, power=power)
    return replace(wald, p_value=p, statistic=z)


def ratio_test(
    control: PairStats,
    variant: PairStats,
    *,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    inference: Inference = "fixed",
    n_opt: float | None = DEFAULT_SEQUENTIAL_N_OPT,
    level: float | None = None,
) -> Comparison:
    """Ratio metric sum(y)/sum(x) over units (y numerator, x denominator), delta method.

    Var(R) = (var_y - 2 R cov_xy + R^2 var_x) / (mean_x^2 n); normal quantile. The
    relative effect uses the same delta formula as :func:`welch_test` on (R, n Var(R)).
    """
    msgs: list[str] = []
    arms = []
    for name, s in (("control", control), ("variant", variant)):
        mx = s.mean_x
        if s.n > 0 and mx == 0.0:
            msgs.append(f"{name} denominator sums to 0: ratio undefined")
            arms.append((math.nan, math.nan))
            continue
        r = s.y.total / s.x.total if s.n > 0 else math.nan
        v = (s.var_y - 2.0 * r * s.cov_xy + r * r * s.var_x) / (mx * mx) if s.n > 1 else math.nan
        arms.append((r, max(v, 0.0) if math.isfinite(v) else v))
    method: Method = "ratio_delta_sequential" if inference == "sequential" else "ratio_delta"
    return replace(_compare(
        method,
        _Arms(control.n, arms[0][0], arms[0][1], variant.n, arms[1][0], arms[1][1]),
        "cs" if inference == "sequential" else "z",
        alpha=alpha, power=power, n_opt=n_opt, level=level, messages=msgs,
    ), rel_base="control ratio")


def cuped_test(
    control: PairStats,
    variant: PairStats,
    *,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    inference: Inference = "fixed",
    n_opt: float | None = DEFAULT_SEQUENTIAL_N_OPT,
    level: float | None = None,
) -> Comparison:
    """CUPED with a pooled theta on the covariate x (pre-period value), y the metric.

    theta = (Cxy_a + Cxy_b) / (Cxx_a + Cxx_b) from within-arm co-moments, so the effect
    (ybar_b - ybar_a) - theta (xbar_b - xbar_a) equals the OLS coefficient of treatment
    in y ~ 1 + treatment + x. Arms are compared by Welch on the adjusted values
    y - theta (x - xbar), whose variance is var_y - 2 theta cov + theta^2 var_x (theta
    treated as known). ``variance_reduction`` is 1 - se_cuped^2 / se_welch^2.
    """
    msgs: list[str] = []
    cxx = control.x.m2 + variant.x.m2
    cxy = control.cxy + variant.cxy
    if control.n < 2 or variant.n < 2 or not (math.isfinite(cxx) and math.isfinite(cxy)):
        theta = math.nan
    elif cxx == 0.0:
        theta = 0.0
        msgs.append("covariate is constant within variants: no CUPED adjustment")
    else:
        theta = cxy / cxx
    n = control.n + variant.n
    xbar = (control.x.total + variant.x.total) / n if n > 0 else math.nan

    def adjusted(s: PairStats) -> tuple[float, float]:
        if s.n == 0 or not math.isfinite(theta):
            return s.mean_y, s.var_y
        v = s.var_y - 2.0 * theta * s.cov_xy + theta * theta * s.var_x
        return s.mean_y - theta * (s.mean_x - xbar), max(v, 0.0) if math.isfinite(v) else v

    (ma, va), (mb, vb) = adjusted(control), adjusted(variant)
    d = None
    if (control.shift_y == variant.shift_y and control.shift_x == variant.shift_x
            and control.n and variant.n and math.isfinite(theta)):
        # the same difference from sums around one shift: its digits survive a mean of 1e7
        d = ((variant.sum_y / variant.n - control.sum_y / control.n)
             - theta * (variant.sum_x / variant.n - control.sum_x / control.n))
    extra: dict[str, float | None] = {"theta": _fin(theta), "variance_reduction": None}
    if control.n > 1 and variant.n > 1:
        se_raw2 = control.var_y / control.n + variant.var_y / variant.n
        se_adj2 = va / control.n + vb / variant.n
        if se_raw2 > 0 and math.isfinite(se_adj2):
            extra["variance_reduction"] = 1.0 - se_adj2 / se_raw2
    extra["mean_control_adjusted"] = _fin(ma) if control.n > 0 else None
    extra["mean_variant_adjusted"] = _fin(mb) if variant.n > 0 else None
    sequential = inference == "sequential"
    # mean_control/mean_variant stay the raw means; the effect and rel_effect are adjusted.
    return replace(_compare(
        "cuped_sequential" if sequential else "cuped",
        _Arms(control.n, ma, va, variant.n, mb, vb, d if control.shift_y else None),
        "cs" if sequential else "t",
        alpha=alpha, power=power, n_opt=n_opt, level=level, messages=msgs, extra=extra,
        means=(control.mean_y, variant.mean_y),
    ), rel_base="adjusted control mean")


# ------------------------------------------------------------ multiple testing


def _adjust(p_values: Sequence[float | None], kind: Literal["holm", "bh"]) -> list[float | None]:
    """Adjust the defined p-values as one family; None entries stay None (not counted)."""
    idx = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    if not idx:
        return out
    p = np.array([p_values[i] for i in idx], dtype=float)
    m = p.size
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    if kind == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ps))
    else:
        adj = np.minimum.accumulate(m / np.arange(m, 0, -1) * ps[::-1])[::-1]
        adj = np.minimum(adj, 1.0)
    result = np.empty(m)
    result[order] = adj
    for j, i in enumerate(idx):
        out[i] = float(result[j])
    return out


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values: max over j <= i of min(1, (m - j + 1) p_(j))."""
    return _adjust(p_values, "holm")


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values: min over j >= i of min(1, m p_(j) / j)."""
    return _adjust(p_values, "bh")


# ------------------------------------------------------------------------ power


def _z_sum(alpha: float, power: float) -> float:
    return float(_sps.norm.ppf(1.0 - alpha / 2.0) + _sps.norm.ppf(power))


def minimum_detectable_effect(
    control: SampleStats,
    variant: SampleStats | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
) -> float | None:
    """Absolute effect detectable at the current n: (z_{1-alpha/2} + z_power) * se.

    se = sqrt(v_a/n_a + v_b/n_b); without ``variant`` the variant is assumed to look
    like the control (same n and variance). None when the variance is undefined.
    """
    variant = control if variant is None else variant
    if control.n < 2 or variant.n < 2:
        return None
    se2 = control.variance / control.n + variant.variance / variant.n
    return _fin(_z_sum(alpha, power) * math.sqrt(se2)) if math.isfinite(se2) else None


def sample_size_per_arm(
    effect: float,
    variance: float,
    *,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
    ratio: float = 1.0,
) -> int | None:
    """Units needed in the control arm to detect ``effect`` (absolute) with the variant
    arm holding ``ratio`` times as many: (z_{1-alpha/2} + z_power)^2 var (1 + 1/ratio) / effect^2.
    """
    if not (effect != 0 and math.isfinite(effect) and variance >= 0 and ratio > 0):
        return None
    n = _z_sum(alpha, power) ** 2 * variance * (1.0 + 1.0 / ratio) / (effect * effect)
    return max(math.ceil(n), 2)
