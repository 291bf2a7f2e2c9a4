"""Issue 19.3: moments are summed on shifted values, so a huge mean keeps its digits.

A metric of 1e7 + N(0, 1) loses about eps * mean**2 / var = 2e-2 of its variance when
variances come from raw sums; the engine sums value - shift with a whole-number shift
near the mean, and the standard error matches scipy's (centred) one to 1e-9.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.experiment import analyze_experiments
from analysis.stats import PairStats, SampleStats

RTOL = 1e-9


def _table(rng: np.random.Generator, n: int, base: float) -> pd.DataFrame:
    variant = np.where(np.arange(2 * n) < n, "a", "b")
    value = base + rng.normal(0.0, 1.0, 2 * n) + np.where(variant == "b", 0.05, 0.0)
    pre = base + rng.normal(0.0, 1.0, 2 * n) + 0.5 * (value - base)
    return pd.DataFrame({"unit_id": [f"u{i}" for i in range(2 * n)], "variant": variant,
                         "metric": "m", "value": value, "pre_value": pre})


@pytest.mark.parametrize("base", [1e7, 1e9])
def test_huge_mean_keeps_the_standard_error(base: float) -> None:
    """Issue 19.3: Welch's se and both means of 1e7 + N(0,1) equal scipy's to 1e-9."""
    frame = _table(np.random.default_rng(19), 5000, base)
    con = duckdb.connect()
    con.register("frame", frame)
    con.execute("CREATE VIEW experiment_input AS SELECT unit_id, variant, metric, value "
                "FROM frame")
    report = analyze_experiments(con, source="table", control="a")
    row = report.experiments[0].results[0]
    a = frame.loc[frame.variant == "a", "value"].to_numpy()
    b = frame.loc[frame.variant == "b", "value"].to_numpy()
    se = float(np.hypot(sps.sem(a), sps.sem(b)))
    assert row.comparison.se == pytest.approx(se, rel=RTOL)
    # The effect too: the difference of the means taken around the shift keeps its digits.
    effect = (b - base).mean() - (a - base).mean()
    assert row.comparison.abs_effect == pytest.approx(effect, rel=RTOL)
    assert row.comparison.mean_control == pytest.approx(a.mean(), rel=1e-15)


def test_huge_mean_cuped_matches_ols() -> None:
    """Issue 19.3: the CUPED covariate is shifted too: theta equals the within-arm OLS
    slope to 1e-9 at 1e7 + N(0,1)."""
    frame = _table(np.random.default_rng(7), 5000, 1e7)
    con = duckdb.connect()
    con.register("frame", frame)
    con.execute("CREATE VIEW experiment_input AS SELECT * FROM frame")
    report = analyze_experiments(con, source="table", control="a", cuped=True)
    comp = report.experiments[0].results[0].comparison
    y, x = frame.value.to_numpy(), frame.pre_value.to_numpy()
    arm = (frame.variant == "b").to_numpy()
    yc = np.concatenate([y[~arm] - y[~arm].mean(), y[arm] - y[arm].mean()])
    xc = np.concatenate([x[~arm] - x[~arm].mean(), x[arm] - x[arm].mean()])
    theta = float(xc @ yc / (xc @ xc))
    assert comp.extra["theta"] == pytest.approx(theta, rel=RTOL)
    ys, xs = y - 1e7, x - 1e7
    effect = (ys[arm].mean() - ys[~arm].mean()) - theta * (xs[arm].mean() - xs[~arm].mean())
    assert comp.abs_effect == pytest.approx(effect, rel=RTOL)


def test_pooling_samples_of_different_shifts() -> None:
    """Issue 19.3: adding statistics summed around different shifts gives the pooled
    sample's figures (a stable merge)."""
    rng = np.random.default_rng(3)
    a, b = 1e7 + rng.normal(size=300), 1e7 + rng.normal(size=500)
    sa = SampleStats(a.size, float((a - 1e7).sum()), float(((a - 1e7) ** 2).sum()), 1e7)
    sb = SampleStats(b.size, float((b - 9999999.0).sum()), float(((b - 9999999.0) ** 2).sum()),
                     9999999.0)
    both = np.concatenate([a, b])
    pooled = sa + sb
    assert pooled.variance == pytest.approx(float(np.var(both, ddof=1)), rel=RTOL)
    assert pooled.mean == pytest.approx(float(both.mean()), rel=1e-15)
    ya, xa = a - 1e7, 2 * a - 2e7
    pa = PairStats(a.size, ya.sum(), ya @ ya, xa.sum(), xa @ xa, xa @ ya, 1e7, 2e7)
    yb, xb = b - 1e7 + 1, 2 * b - 2e7 + 3
    pb = PairStats(b.size, yb.sum(), yb @ yb, xb.sum(), xb @ xb, xb @ yb, 1e7 - 1, 2e7 - 3)
    merged = pa + pb
    assert merged.cov_xy == pytest.approx(float(np.cov(2 * both, both)[0, 1]), rel=RTOL)
    assert merged.mean_x == pytest.approx(float(2 * both.mean()), rel=1e-15)
