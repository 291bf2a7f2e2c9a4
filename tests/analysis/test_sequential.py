"""Issue 16.4: the sequential test tuned from the expected sample size, by seeded simulation.

Before: tuned to n_opt = 5000 whatever the traffic, an A/A test watched at 10 looks
rejected 0.4-0.6% of the time (of 5%), and at 10M units the interval was 2.02x the fixed one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.significance import (
    HORIZON_LEVELS,
    cs_multiplier,
    horizon_alpha,
    mixture_rho2,
    sequential_test,
    welch_test,
)
from analysis.stats import SampleStats

pytestmark = pytest.mark.slow

ALPHA = 0.05
Z = 1.959963984540054


def ten_look_rates(seed: int, experiments: int = 4000, units: int = 2000,
                   looks: int = 10) -> dict[str, float]:
    """A/A rejection rates (any look's interval excludes 0) of three tunings, with the
    public procedure checked against the vectorised one at the last look."""
    rng = np.random.default_rng(seed)
    block = units // looks
    rules = {
        "expected_n": (float(units), horizon_alpha(ALPHA)),
        "own_traffic": (None, ALPHA),
        "n_opt_5000": (5000.0, ALPHA),
    }
    rejected = {name: np.zeros(experiments, dtype=bool) for name in rules}
    for chunk in np.array_split(np.arange(experiments), 8):
        y = rng.exponential(1.0, (chunk.size, units))
        z = rng.random((chunk.size, units)) < 0.5

        def cum(m: np.ndarray) -> np.ndarray:
            return np.cumsum(m.reshape(m.shape[0], looks, block).sum(axis=2), axis=1)

        nb, sb, qb = cum(z.astype(float)), cum(y * z), cum(y * y * z)
        na, sa, qa = cum((~z).astype(float)), cum(y * ~z), cum(y * y * ~z)
        va = (qa - sa * sa / na) / (na - 1)
        vb = (qb - sb * sb / nb) / (nb - 1)
        se = np.sqrt(va / na + vb / nb)
        d = sb / nb - sa / na
        n = na + nb
        for name, (n_opt, level) in rules.items():
            tuned = n if n_opt is None else n_opt
            k = cs_multiplier(n, level, mixture_rho2(tuned, level))  # type: ignore[arg-type]
            rejected[name][chunk] |= (np.abs(d) > k * se).any(axis=1)
            res = sequential_test(SampleStats.of(y[0][~z[0]]), SampleStats.of(y[0][z[0]]),
                                  n_opt=n_opt, level=None if level == ALPHA else level)
            assert res.abs_ci is not None
            assert res.abs_ci[1] - res.abs_effect == pytest.approx(k[0, -1] * se[0, -1],
                                                                   rel=1e-9)
            assert (res.p_value < ALPHA) == (abs(d[0, -1]) > k[0, -1] * se[0, -1])
    return {name: float(r.mean()) for name, r in rejected.items()}


def test_ten_looks_spend_between_two_and_five_percent() -> None:
    """Issue 16.4: tuned to the planned sample size, 10 looks reject 2-5% of A/A tests."""
    rates = ten_look_rates(seed=164, experiments=8000)
    mc = 2.576 * math.sqrt(ALPHA * (1 - ALPHA) / 8000)
    assert 0.02 <= rates["expected_n"] <= 0.05, rates
    # The default (own traffic) stays valid under any number of looks, and spends more
    # than the old fixed tuning did.
    assert rates["own_traffic"] <= ALPHA + mc, rates
    assert rates["own_traffic"] > rates["n_opt_5000"], rates
    assert rates["n_opt_5000"] < 0.01, rates


def test_large_n_interval_is_not_needlessly_wide() -> None:
    """Issue 16.4: at 10M units the old tuning gave 2.02x the fixed interval; tuned to the
    experiment's own traffic it is 1.55x (the least this mixture allows at alpha 0.05),
    tuned to a planned 10M units 1.34x."""
    n = 10_000_000
    a = SampleStats(n // 2, float(n // 2), float(n))  # mean 1, variance ~1
    b = SampleStats(n // 2, float(n // 2) * 1.001, float(n) * 1.002)
    fixed = welch_test(a, b)
    assert fixed.abs_ci is not None

    def width(**kw: float | None) -> float:
        res = sequential_test(a, b, **kw)  # type: ignore[arg-type]
        assert res.abs_ci is not None and fixed.abs_ci is not None
        return (res.abs_ci[1] - res.abs_ci[0]) / (fixed.abs_ci[1] - fixed.abs_ci[0])

    assert width(n_opt=5000) == pytest.approx(2.02, abs=0.01)
    assert width(n_opt=None) == pytest.approx(1.549, abs=0.005)
    planned = width(n_opt=float(n), level=horizon_alpha(ALPHA))
    assert planned == pytest.approx(1.344, abs=0.005)


def calibrate(alpha: float, paths: int, steps: int, seed: int) -> float:
    """The boundary level whose crossing probability over ``steps`` equal looks of a
    Brownian path, tuned to the last look, is ``alpha`` (HORIZON_LEVELS was made with
    100 000 paths and 1 000 looks)."""
    rng = np.random.default_rng(seed)
    t = np.arange(1, steps + 1, dtype=float)
    walk = np.cumsum(rng.standard_normal((paths, steps), dtype=np.float32), axis=1)
    zmax_ratio_cache = np.abs(walk) / np.sqrt(t).astype(np.float32)
    lo, hi = alpha, min(0.9, alpha * 6)
    for _ in range(18):
        mid = math.sqrt(lo * hi)
        k = cs_multiplier(t, mid, mixture_rho2(steps, mid)).astype(np.float32)
        if float((zmax_ratio_cache > k).any(axis=1).mean()) < alpha:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def test_horizon_levels_reproduce() -> None:
    level = calibrate(0.05, paths=20_000, steps=500, seed=5)
    table = dict(HORIZON_LEVELS)[0.05]
    assert level == pytest.approx(table, rel=0.08)
    assert horizon_alpha(0.05) == pytest.approx(table)
    assert 0.0033 < horizon_alpha(0.001) < horizon_alpha(0.03) < horizon_alpha(0.2) < 0.46
    with pytest.raises(ValueError, match="alpha"):
        horizon_alpha(0.3)
