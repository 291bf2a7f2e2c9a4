"""Every figure of analysis.significance against an independent reference (rtol 1e-9).

References: statsmodels (Welch t, CI, proportions z, multipletests, OLS, power),
scipy (chi-square), and the published delta-method and confidence-sequence formulas
recomputed here from raw arrays.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import statsmodels.api as sm
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from analysis.significance import (
    DEFAULT_SEQUENTIAL_N_OPT,
    Comparison,
    benjamini_hochberg,
    cs_multiplier,
    cs_p_value,
    cuped_test,
    holm,
    minimum_detectable_effect,
    mixture_rho2,
    proportions_test,
    ratio_test,
    sample_size_per_arm,
    sequential_test,
    srm_test,
    welch_test,
)
from analysis.stats import PairStats, SampleStats

RTOL = 1e-9


def close(a: float | None, b: float) -> None:
    assert a is not None
    assert a == pytest.approx(float(b), rel=RTOL, abs=1e-300)


def ci_close(ci: tuple[float, float] | None, ref: tuple[float, float]) -> None:
    assert ci is not None
    close(ci[0], ref[0])
    close(ci[1], ref[1])


def json_safe(c: Comparison) -> dict[str, object]:
    d = c.to_dict()
    json.dumps(d, allow_nan=False)
    return d


@pytest.fixture
def samples() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20240501)
    return rng.exponential(10.0, 800), rng.exponential(10.8, 650) + rng.normal(0, 1, 650)


# ------------------------------------------------------------------- Welch


def delta_relative(a: np.ndarray, b: np.ndarray, q: float) -> tuple[float, tuple[float, float]]:
    """Relative effect and CI, delta method, written out from the formula."""
    ma, mb = a.mean(), b.mean()
    va, vb = a.var(ddof=1), b.var(ddof=1)
    se = math.sqrt(vb / (ma**2 * b.size) + va * mb**2 / (ma**4 * a.size))
    rel = (mb - ma) / abs(ma)
    return rel, (rel - q * se, rel + q * se)


def test_welch_equals_statsmodels(samples: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = samples
    res = welch_test(SampleStats.of(a), SampleStats.of(b))
    t, p, df = ttest_ind(b, a, usevar="unequal")
    ci = CompareMeans(DescrStatsW(b), DescrStatsW(a)).tconfint_diff(usevar="unequal")
    assert res.method == "welch" and res.message is None
    close(res.abs_effect, b.mean() - a.mean())
    close(res.statistic, t)
    close(res.p_value, p)
    close(res.df, df)
    ci_close(res.abs_ci, ci)
    assert (res.n_control, res.n_variant) == (800, 650)
    close(res.mean_control, a.mean())
    close(res.mean_variant, b.mean())

    q = sps.t.ppf(0.975, df)
    rel, rel_ci = delta_relative(a, b, q)
    close(res.rel_effect, rel)
    ci_close(res.rel_ci, rel_ci)
    json_safe(res)


_arrays = st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=30)


@settings(max_examples=80, deadline=None)
@given(_arrays, _arrays)
def test_welch_matches_statsmodels_on_arbitrary_samples(a: list[float], b: list[float]) -> None:
    xa, xb = np.array(a), np.array(b)
    assume(xa.var(ddof=1) > 1e-2 and xb.var(ddof=1) > 1e-2)  # away from cancellation
    res = welch_test(SampleStats.of(xa), SampleStats.of(xb))
    t, p, df = ttest_ind(xb, xa, usevar="unequal")
    assert res.p_value == pytest.approx(p, rel=1e-6, abs=1e-12)
    assert res.statistic == pytest.approx(t, rel=1e-6, abs=1e-9)
    assert res.df == pytest.approx(df, rel=1e-6)
    json_safe(res)


def test_welch_with_negative_control_mean_uses_magnitude() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(-5, 1, 200), rng.normal(-4.5, 1, 220)
    res = welch_test(SampleStats.of(a), SampleStats.of(b))
    _, p, df = ttest_ind(b, a, usevar="unequal")
    close(res.p_value, p)
    rel, rel_ci = delta_relative(a, b, sps.t.ppf(0.975, df))
    assert rel > 0  # b above a, whatever the sign of a
    close(res.rel_effect, rel)
    ci_close(res.rel_ci, rel_ci)
    assert res.message is not None and "negative" in res.message


def test_two_proportion_ztest_equals_statsmodels() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.binomial(1, 0.11, 3000), rng.binomial(1, 0.125, 2800)
    res = proportions_test(SampleStats.of(a), SampleStats.of(b))
    z, p = proportions_ztest([b.sum(), a.sum()], [b.size, a.size])
    close(res.statistic, z)
    close(res.p_value, p)
    pa, pb = a.mean(), b.mean()
    se = math.sqrt(pa * (1 - pa) / a.size + pb * (1 - pb) / b.size)
    q = sps.norm.ppf(0.975)
    ci_close(res.abs_ci, (pb - pa - q * se, pb - pa + q * se))
    # The Welch path on the same 0/1 data is what experiment reports; it agrees closely.
    welch = welch_test(SampleStats.of(a), SampleStats.of(b))
    assert welch.p_value == pytest.approx(p, rel=0.02)


# ------------------------------------------------------------- multiple tests


@pytest.mark.parametrize("method,ours", [("holm", holm), ("fdr_bh", benjamini_hochberg)])
def test_adjustments_equal_multipletests(method: str, ours: object) -> None:
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.uniform(0, 1, 20), rng.uniform(0, 0.01, 5), [0.03, 0.03, 1.0]])
    rng.shuffle(p)
    ref = multipletests(p, method=method)[1]
    got = ours(list(p))  # type: ignore[operator]
    for g, r in zip(got, ref, strict=True):
        close(g, r)


def test_adjustments_skip_undefined_p_values() -> None:
    p = [0.01, None, 0.04, 0.02]
    ref_h = multipletests([0.01, 0.04, 0.02], method="holm")[1]
    ref_b = multipletests([0.01, 0.04, 0.02], method="fdr_bh")[1]
    h, b = holm(p), benjamini_hochberg(p)
    assert h[1] is None and b[1] is None
    for g, r in zip([h[0], h[2], h[3]], ref_h, strict=True):
        close(g, r)
    for g, r in zip([b[0], b[2], b[3]], ref_b, strict=True):
        close(g, r)
    assert holm([]) == [] and benjamini_hochberg([None]) == [None]


# -------------------------------------------------------------------- SRM


def test_srm_equals_scipy_chisquare_with_weights() -> None:
    counts = {"control": 5120, "a": 2480, "b": 2600}
    res = srm_test(counts, {"control": 50, "a": 25, "b": 25})
    n = sum(counts.values())
    ref = sps.chisquare([5120, 2480, 2600], [0.5 * n, 0.25 * n, 0.25 * n])
    close(res.statistic, ref.statistic)
    close(res.p_value, ref.pvalue)
    assert res.flag is bool(ref.pvalue < 0.001)
    assert res.expected_share == {"control": 0.5, "a": 0.25, "b": 0.25}


def test_srm_without_weights_is_equal_split_over_present_variants() -> None:
    res = srm_test({"control": 1000, "treat": 1200, "gone": 0})
    ref = sps.chisquare([1000, 1200])
    close(res.p_value, ref.pvalue)
    assert res.flag is True
    assert set(res.expected_share) == {"control", "treat"}


def test_srm_counts_an_empty_weighted_variant() -> None:
    res = srm_test({"control": 100}, {"control": 1, "treat": 1})
    ref = sps.chisquare([100, 0], [50, 50])
    close(res.p_value, ref.pvalue)
    assert res.counts == {"control": 100, "treat": 0} and res.flag


def test_srm_unweighted_variant_is_named() -> None:
    res = srm_test({"control": 100, "treat": 90, "rogue": 5}, {"control": 1, "treat": 1})
    assert res.p_value is None and res.flag is False
    assert res.message is not None and "'rogue'" in res.message
    json.dumps(res.to_dict(), allow_nan=False)


def test_srm_degenerate() -> None:
    assert srm_test({}).message == "no units"
    assert srm_test({"control": 10}).p_value is None
    zero = srm_test({"control": 10, "treat": 3}, {"control": 1, "treat": 0})
    assert zero.flag is True and zero.p_value == 0.0 and "'treat'" in (zero.message or "")
    bad = srm_test({"control": 10}, {"control": float("nan")})
    assert bad.p_value is None and bad.message


# ------------------------------------------------------------------- CUPED


def test_cuped_effect_equals_ols_coefficient() -> None:
    rng = np.random.default_rng(6)
    xa, xb = rng.gamma(2.0, 3.0, 900), rng.gamma(2.0, 3.0, 1100)
    ya = 1.5 * xa + rng.normal(0, 2, 900)
    yb = 1.5 * xb + 0.4 + rng.normal(0, 2.5, 1100)
    res = cuped_test(PairStats.of(ya, xa), PairStats.of(yb, xb))
    treat = np.r_[np.zeros(900), np.ones(1100)]
    design = np.column_stack([np.ones(2000), treat, np.r_[xa, xb]])
    fit = sm.OLS(np.r_[ya, yb], design).fit()
    close(res.abs_effect, fit.params[1])
    close(res.extra["theta"], fit.params[2])
    # Welch on the adjusted values, written out.
    theta = fit.params[2]
    xbar = np.r_[xa, xb].mean()
    adj_a, adj_b = ya - theta * (xa - xbar), yb - theta * (xb - xbar)
    _, p, df = ttest_ind(adj_b, adj_a, usevar="unequal")
    ci = CompareMeans(DescrStatsW(adj_b), DescrStatsW(adj_a)).tconfint_diff(usevar="unequal")
    close(res.p_value, p)
    ci_close(res.abs_ci, ci)
    rel, rel_ci = delta_relative(adj_a, adj_b, sps.t.ppf(0.975, df))
    close(res.rel_effect, rel)
    ci_close(res.rel_ci, rel_ci)
    se_raw2 = ya.var(ddof=1) / 900 + yb.var(ddof=1) / 1100
    se_adj2 = adj_a.var(ddof=1) / 900 + adj_b.var(ddof=1) / 1100
    close(res.extra["variance_reduction"], 1 - se_adj2 / se_raw2)
    assert res.extra["variance_reduction"] is not None and res.extra["variance_reduction"] > 0.5
    close(res.mean_control, ya.mean())
    json_safe(res)


def test_cuped_with_constant_covariate_is_welch() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, 50), rng.normal(0.3, 1, 60)
    res = cuped_test(PairStats.of(a, np.ones(50)), PairStats.of(b, np.ones(60)))
    ref = welch_test(SampleStats.of(a), SampleStats.of(b))
    close(res.p_value, ref.p_value)  # type: ignore[arg-type]
    assert res.message is not None and "constant" in res.message


# ------------------------------------------------------------- ratio metrics


def test_ratio_equals_delta_method_formula() -> None:
    rng = np.random.default_rng(8)
    xa, xb = rng.poisson(4, 1500) + 1.0, rng.poisson(4, 1400) + 1.0  # sessions
    ya = rng.binomial(xa.astype(int), 0.2).astype(float)  # clicks
    yb = rng.binomial(xb.astype(int), 0.23).astype(float)
    res = ratio_test(PairStats.of(ya, xa), PairStats.of(yb, xb))

    def ratio_and_var(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
        r = y.sum() / x.sum()
        c = np.cov(y, x, ddof=1)
        return r, (c[0, 0] - 2 * r * c[0, 1] + r**2 * c[1, 1]) / (x.mean() ** 2 * y.size)

    ra, va = ratio_and_var(ya, xa)
    rb, vb = ratio_and_var(yb, xb)
    se = math.sqrt(va + vb)
    q = sps.norm.ppf(0.975)
    close(res.abs_effect, rb - ra)
    close(res.se, se)
    ci_close(res.abs_ci, (rb - ra - q * se, rb - ra + q * se))
    close(res.p_value, 2 * sps.norm.sf(abs(rb - ra) / se))
    se_rel = math.sqrt(vb / ra**2 + va * rb**2 / ra**4)
    close(res.rel_effect, (rb - ra) / ra)
    ci_close(res.rel_ci, ((rb - ra) / ra - q * se_rel, (rb - ra) / ra + q * se_rel))
    assert res.method == "ratio_delta"


def test_ratio_with_zero_denominator_has_message() -> None:
    res = ratio_test(PairStats.of([1.0, 2.0], [0.0, 0.0]), PairStats.of([1.0, 2.0], [1.0, 1.0]))
    assert res.p_value is None and "denominator" in (res.message or "")
    json_safe(res)


# --------------------------------------------------------- sequential mode


def test_confidence_sequence_equals_published_formula(
    samples: tuple[np.ndarray, np.ndarray],
) -> None:
    a, b = samples
    res = sequential_test(SampleStats.of(a), SampleStats.of(b))
    alpha, t = 0.05, a.size + b.size
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / DEFAULT_SEQUENTIAL_N_OPT
    # Waudby-Smith et al.: mu_t +- sigma_t sqrt(2(t rho^2+1)/(t^2 rho^2) log(sqrt(t rho^2+1)/a))
    sigma = math.sqrt(t * (a.var(ddof=1) / a.size + b.var(ddof=1) / b.size))
    radius = sigma * math.sqrt(
        2 * (t * rho2 + 1) / (t**2 * rho2) * math.log(math.sqrt(t * rho2 + 1) / alpha)
    )
    d = b.mean() - a.mean()
    assert res.method == "welch_sequential"
    close(mixture_rho2(DEFAULT_SEQUENTIAL_N_OPT), rho2)
    close(res.abs_effect, d)
    ci_close(res.abs_ci, (d - radius, d + radius))
    # The p-value is the alpha at which the sequence touches 0.
    p = res.p_value
    assert p is not None and 0 < p <= 1
    if p < 1:
        k = float(cs_multiplier(t, p, rho2))
        close(k * sigma / math.sqrt(t), abs(d))
    # Wider than the fixed-n interval, and decisions agree with the interval.
    fixed = welch_test(SampleStats.of(a), SampleStats.of(b))
    assert fixed.abs_ci is not None and res.abs_ci is not None
    assert res.abs_ci[1] - res.abs_ci[0] > fixed.abs_ci[1] - fixed.abs_ci[0]
    assert (p < alpha) == (res.abs_ci[0] > 0 or res.abs_ci[1] < 0)


def test_cs_p_value_inverts_multiplier() -> None:
    rho2 = mixture_rho2(1000)
    for n in (50, 1000, 10**6):
        for alpha in (0.2, 0.05, 1e-4):
            z = float(cs_multiplier(n, alpha, rho2))
            close(float(cs_p_value(z, n, rho2)), alpha)


# --------------------------------------------------------------------- power


def test_power_formulas() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.normal(10, 3, 400), rng.normal(10, 4, 500)
    mde = minimum_detectable_effect(SampleStats.of(a), SampleStats.of(b))
    zs = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    close(mde, zs * math.sqrt(a.var(ddof=1) / 400 + b.var(ddof=1) / 500))
    res = welch_test(SampleStats.of(a), SampleStats.of(b))
    close(res.mde, mde)  # type: ignore[arg-type]
    # statsmodels NormalIndPower, one-sided at alpha/2, is exactly the two-sided formula.
    ref = NormalIndPower().solve_power(effect_size=0.1, alpha=0.025, power=0.8, ratio=1.0,
                                       alternative="larger")
    assert sample_size_per_arm(0.3, 9.0) == math.ceil(ref - 1e-6)
    assert sample_size_per_arm(0.0, 1.0) is None
    assert minimum_detectable_effect(SampleStats.of([1.0])) is None


# --------------------------------------------------------------- edge cases


@pytest.mark.parametrize(
    "control,variant,needle",
    [
        (SampleStats.of([1.0]), SampleStats.of([1.0, 2.0]), "at least 2"),
        (SampleStats.empty(), SampleStats.of([1.0, 2.0]), "control has no units"),
        (SampleStats.of([1.0, 2.0]), SampleStats.empty(), "variant has no units"),
        (SampleStats.of([3.0, 3.0]), SampleStats.of([4.0, 4.0, 4.0]), "zero variance"),
        (SampleStats(3, float("nan"), 1.0), SampleStats.of([1.0, 2.0]), "not finite"),
        (SampleStats.of([1.0, 2.0, math.inf]), SampleStats.of([1.0, 2.0]), "not finite"),
    ],
)
def test_degenerate_inputs_give_messages(
    control: SampleStats, variant: SampleStats, needle: str
) -> None:
    for fn in (welch_test, sequential_test):
        res = fn(control, variant)
        assert res.message is not None and needle in res.message
        assert res.p_value is None and res.abs_ci is None
        d = json_safe(res)
        assert d["p_value"] is None


def test_zero_variance_reports_the_difference() -> None:
    res = welch_test(SampleStats.of([3.0, 3.0]), SampleStats.of([4.0, 4.0, 4.0]))
    assert res.abs_effect == 1.0 and res.se == 0.0


def test_control_mean_zero_leaves_relative_null() -> None:
    res = welch_test(SampleStats.of([-1.0, 1.0, 0.0]), SampleStats.of([1.0, 2.0, 0.5]))
    assert res.p_value is not None
    assert res.rel_effect is None and res.rel_ci is None
    assert "control mean is 0" in (res.message or "")
    json_safe(res)


def test_proportions_test_rejects_non_binary() -> None:
    res = proportions_test(SampleStats.of([0.0, 2.0]), SampleStats.of([1.0, 0.0]))
    assert res.p_value is None and "0/1" in (res.message or "")
    same = proportions_test(SampleStats.of([1.0, 1.0]), SampleStats.of([1.0]))
    assert same.p_value is None and same.message


def test_cuped_degenerate_inputs() -> None:
    res = cuped_test(PairStats.of([1.0], [1.0]), PairStats.empty())
    assert res.p_value is None and res.message
    json_safe(res)
