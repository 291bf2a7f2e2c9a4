"""Sufficient statistics: derived moments equal numpy's, and adding pools samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.stats import PairStats, SampleStats

RTOL = 1e-9

_values = st.lists(
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False),
    min_size=0,
    max_size=40,
)


def test_sample_moments_equal_numpy() -> None:
    x = np.random.default_rng(1).normal(3.0, 2.0, 257)
    s = SampleStats.of(x)
    assert s.n == 257
    assert s.mean == pytest.approx(x.mean(), rel=RTOL)
    assert s.variance == pytest.approx(x.var(ddof=1), rel=RTOL)
    assert s.std == pytest.approx(x.std(ddof=1), rel=RTOL)
    assert s.sem == pytest.approx(x.std(ddof=1) / math.sqrt(x.size), rel=RTOL)


def test_pair_moments_equal_numpy() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=300)
    y = 0.5 * x + rng.normal(size=300)
    p = PairStats.of(y, x)
    cov = np.cov(x, y, ddof=1)
    assert p.var_x == pytest.approx(cov[0, 0], rel=RTOL)
    assert p.var_y == pytest.approx(cov[1, 1], rel=RTOL)
    assert p.cov_xy == pytest.approx(cov[0, 1], rel=RTOL)
    assert p.corr == pytest.approx(np.corrcoef(x, y)[0, 1], rel=RTOL)
    assert p.y == SampleStats.of(y)
    assert p.x == SampleStats.of(x)


def test_undefined_moments_are_nan() -> None:
    assert math.isnan(SampleStats.empty().mean)
    one = SampleStats.of([4.0])
    assert one.mean == 4.0
    assert math.isnan(one.variance) and math.isnan(one.sem)
    assert math.isnan(PairStats.of([1.0], [2.0]).cov_xy)
    assert math.isnan(PairStats.of([1.0, 1.0], [2.0, 3.0]).corr)  # constant y


def test_variance_never_negative_from_rounding() -> None:
    s = SampleStats.of(np.full(1000, 0.1))
    assert s.variance == 0.0 or s.variance > 0.0


def test_pair_rejects_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        PairStats.of([1.0, 2.0], [1.0])


def test_add_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        SampleStats.empty() + PairStats.empty()  # type: ignore[operator]


@settings(max_examples=60, deadline=None)
@given(_values, _values)
def test_sample_add_is_pooling(a: list[float], b: list[float]) -> None:
    pooled = SampleStats.of(a) + SampleStats.of(b)
    direct = SampleStats.of(a + b)
    assert pooled.n == direct.n
    assert pooled.sum == pytest.approx(direct.sum, rel=1e-12, abs=1e-9)
    assert pooled.sum_sq == pytest.approx(direct.sum_sq, rel=1e-12, abs=1e-9)
    assert SampleStats.empty() + pooled == pooled


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), max_size=30),
       st.lists(st.tuples(st.floats(-100, 100), st.floats(-100, 100)), max_size=30))
def test_pair_add_is_pooling(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> None:
    def of(rows: list[tuple[float, float]]) -> PairStats:
        arr = np.array(rows, dtype=float).reshape(-1, 2)
        return PairStats.of(arr[:, 0], arr[:, 1])

    pooled, direct = of(a) + of(b), of(a + b)
    for name in ("n", "sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy"):
        assert getattr(pooled, name) == pytest.approx(getattr(direct, name), rel=1e-12, abs=1e-9)


def test_frozen() -> None:
    s = SampleStats.of([1.0, 2.0])
    with pytest.raises(AttributeError):
        s.n = 3  # type: ignore[misc]
