"""Seeded simulations: A/A false-positive rates, CI coverage, and peeking-safe sequences.

Data are (experiments x units) numpy matrices reduced to sufficient statistics with
vectorised sums; the procedures under test then run once per simulated experiment.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from analysis.significance import (
    DEFAULT_SEQUENTIAL_N_OPT,
    Comparison,
    cs_multiplier,
    cuped_test,
    mixture_rho2,
    proportions_test,
    ratio_test,
    sequential_test,
    srm_test,
    welch_test,
)
from analysis.stats import PairStats, SampleStats

pytestmark = pytest.mark.slow

FPR_BAND = (0.04, 0.06)
COVERAGE_BAND = (0.94, 0.96)


def sample_stats(m: np.ndarray) -> list[SampleStats]:
    """One SampleStats per row of an (experiments x units) matrix."""
    n = m.shape[1]
    return [SampleStats(n, float(s), float(q))
            for s, q in zip(m.sum(axis=1), np.einsum("ij,ij->i", m, m), strict=True)]


def pair_stats(y: np.ndarray, x: np.ndarray) -> list[PairStats]:
    n = y.shape[1]
    cols = (y.sum(1), np.einsum("ij,ij->i", y, y), x.sum(1), np.einsum("ij,ij->i", x, x),
            np.einsum("ij,ij->i", x, y))
    return [PairStats(n, *map(float, row)) for row in zip(*cols, strict=True)]


def rates(results: list[Comparison], truth: float, relative: float | None = None
          ) -> tuple[float, float, float | None]:
    """(share with p < 0.05, abs CI coverage of truth, rel CI coverage of relative)."""
    assert all(r.p_value is not None and r.abs_ci is not None for r in results)
    p = np.array([r.p_value for r in results], dtype=float)
    lo = np.array([r.abs_ci[0] for r in results])  # type: ignore[index]
    hi = np.array([r.abs_ci[1] for r in results])  # type: ignore[index]
    rel_cov = None
    if relative is not None:
        rlo = np.array([r.rel_ci[0] for r in results])  # type: ignore[index]
        rhi = np.array([r.rel_ci[1] for r in results])  # type: ignore[index]
        rel_cov = float(np.mean((rlo <= relative) & (relative <= rhi)))
    return float(np.mean(p < 0.05)), float(np.mean((lo <= truth) & (truth <= hi))), rel_cov


def within(value: float | None, band: tuple[float, float]) -> None:
    assert value is not None and band[0] <= value <= band[1], (value, band)


def run(test: Callable[..., Comparison], a: list, b: list) -> list[Comparison]:  # type: ignore[type-arg]
    return [test(x, y) for x, y in zip(a, b, strict=True)]


def test_welch_aa_false_positive_rate() -> None:
    rng = np.random.default_rng(101)
    e = 4000
    a = rng.exponential(5.0, (e, 200))  # skewed, unequal n
    b = rng.exponential(5.0, (e, 300))
    fpr, coverage, _ = rates(run(welch_test, sample_stats(a), sample_stats(b)), 0.0)
    within(fpr, FPR_BAND)
    within(coverage, COVERAGE_BAND)


def test_welch_ci_coverage_with_effect() -> None:
    rng = np.random.default_rng(102)
    e = 4000
    a = rng.normal(10.0, 2.0, (e, 250))
    b = rng.normal(10.5, 4.0, (e, 150))  # unequal variances and n: Welch territory
    _, coverage, rel_coverage = rates(
        run(welch_test, sample_stats(a), sample_stats(b)), 0.5, relative=0.05)
    within(coverage, COVERAGE_BAND)
    within(rel_coverage, COVERAGE_BAND)


def test_proportions_aa_false_positive_rate() -> None:
    rng = np.random.default_rng(103)
    e, na, nb = 4000, 1500, 1200
    ka, kb = rng.binomial(na, 0.1, e), rng.binomial(nb, 0.1, e)
    ztest = [proportions_test(SampleStats(na, float(x), float(x)), SampleStats(nb, float(y),
                                                                              float(y)))
             for x, y in zip(ka, kb, strict=True)]
    fpr = float(np.mean(np.array([r.p_value for r in ztest]) < 0.05))
    within(fpr, FPR_BAND)


def test_cuped_aa_rate_and_coverage() -> None:
    rng = np.random.default_rng(104)
    e, n = 2000, 200
    xa, xb = rng.gamma(2.0, 2.0, (e, n)), rng.gamma(2.0, 2.0, (e, n))
    ya = 2.0 * xa + rng.normal(0, 2.0, (e, n))
    yb = 2.0 * xb + 0.3 + rng.normal(0, 2.0, (e, n))
    aa = run(cuped_test, pair_stats(ya, xa), pair_stats(2.0 * xb + rng.normal(0, 2, (e, n)), xb))
    fpr, _, _ = rates(aa, 0.0)
    within(fpr, FPR_BAND)
    _, coverage, _ = rates(run(cuped_test, pair_stats(ya, xa), pair_stats(yb, xb)), 0.3)
    within(coverage, COVERAGE_BAND)
    reduction = np.mean([r.extra["variance_reduction"] for r in aa])
    assert reduction > 0.6  # corr(x, y) is about 0.89 here


def test_ratio_delta_coverage() -> None:
    rng = np.random.default_rng(105)
    e, n = 3000, 400
    xa, xb = rng.poisson(3.0, (e, n)) + 1.0, rng.poisson(3.0, (e, n)) + 1.0
    ya = rng.binomial(xa.astype(np.int64), 0.20).astype(float)
    yb = rng.binomial(xb.astype(np.int64), 0.22).astype(float)
    results = run(ratio_test, pair_stats(ya, xa), pair_stats(yb, xb))
    _, coverage, rel_coverage = rates(results, 0.02, relative=0.1)
    within(coverage, COVERAGE_BAND)
    within(rel_coverage, COVERAGE_BAND)


def test_srm_aa_rate() -> None:
    rng = np.random.default_rng(106)
    weights = {"control": 2.0, "a": 1.0, "b": 1.0}
    draws = rng.multinomial(4000, [0.5, 0.25, 0.25], size=4000)
    p = np.array([srm_test(dict(zip(weights, map(int, d), strict=True)), weights).p_value
                  for d in draws], dtype=float)
    within(float(np.mean(p < 0.05)), FPR_BAND)
    assert float(np.mean(p < 0.001)) <= 0.001 + 3 * math.sqrt(0.001 / 4000)


def test_sequential_peeking_keeps_false_positive_rate() -> None:
    """Peek after every 100 units of 5000; reject if any look's sequence excludes 0."""
    rng = np.random.default_rng(107)
    experiments, units, block = 2000, 5000, 100
    looks = units // block
    alpha = 0.05
    rho2 = mixture_rho2(DEFAULT_SEQUENTIAL_N_OPT, alpha)
    reject_cs = np.zeros(experiments, dtype=bool)
    reject_naive = np.zeros(experiments, dtype=bool)
    last = None
    for chunk in np.array_split(np.arange(experiments), 4):  # bounds memory, still vectorised
        y = rng.exponential(1.0, (chunk.size, units))
        z = rng.random((chunk.size, units)) < 0.5

        def cum(m: np.ndarray) -> np.ndarray:
            return np.cumsum(m.reshape(m.shape[0], looks, block).sum(axis=2), axis=1)

        nb, sb, qb = cum(z.astype(float)), cum(y * z), cum(y * y * z)
        na, sa, qa = cum((~z).astype(float)), cum(y * ~z), cum(y * y * ~z)
        ma, mb = sa / na, sb / nb
        va = (qa - sa * ma) / (na - 1)
        vb = (qb - sb * mb) / (nb - 1)
        se = np.sqrt(va / na + vb / nb)
        d = mb - ma
        k = cs_multiplier(na + nb, alpha, rho2)
        reject_cs[chunk] = (np.abs(d) > k * se).any(axis=1)
        reject_naive[chunk] = (np.abs(d) > 1.959963984540054 * se).any(axis=1)
        last = (y[0], z[0], d[0, -1], k[0, -1] * se[0, -1])

    fpr = float(reject_cs.mean())
    mc = 2.576 * math.sqrt(alpha * (1 - alpha) / experiments)
    assert fpr <= alpha + mc, fpr
    assert float(reject_naive.mean()) > 0.15  # peeking at fixed-n intervals does inflate

    # The vectorised look above is the public procedure at the final look.
    assert last is not None
    y0, z0, d0, r0 = last
    res = sequential_test(SampleStats.of(y0[~z0]), SampleStats.of(y0[z0]))
    assert res.abs_effect == pytest.approx(d0, rel=1e-9)
    assert res.abs_ci is not None
    assert res.abs_ci[1] - res.abs_effect == pytest.approx(r0, rel=1e-9)
