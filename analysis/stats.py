"""Sufficient statistics: the values SQL reduces rows to and significance tests start from.

Each is a frozen dataclass that adds (``a + b`` pools two disjoint samples) and derives
means, variances (ddof 1) and covariances as properties; undefined figures are ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PairStats", "SampleStats", "finite_or_none"]

_NAN = float("nan")


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or infinite (JSON has neither)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _centred(n: float, sum_u: float, sum_v: float, sum_uv: float) -> float:
    """Sum of (u - mean u)(v - mean v): the co-moment, from raw sums."""
    if n <= 0:
        return _NAN
    return sum_uv - sum_u * sum_v / n


@dataclass(frozen=True, slots=True)
class SampleStats:
    """n, sum and sum of squares of one sample (one metric in one variant).

    Variances come from ``sum_sq - sum**2 / n``; with values whose mean is huge relative
    to their spread this loses digits (relative error about eps * mean**2 / var).
    """

    n: int
    sum: float
    sum_sq: float

    @classmethod
    def of(cls, values: Iterable[float] | np.ndarray) -> SampleStats:
        """The statistics of an in-memory sample (tests and small inputs)."""
        x = np.asarray(values, dtype=float).ravel()
        return cls(int(x.size), float(x.sum()), float(np.dot(x, x)))

    @classmethod
    def empty(cls) -> SampleStats:
        return cls(0, 0.0, 0.0)

    def __add__(self, other: SampleStats) -> SampleStats:
        if not isinstance(other, SampleStats):
            return NotImplemented
        return SampleStats(self.n + other.n, self.sum + other.sum, self.sum_sq + other.sum_sq)

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n > 0 else _NAN

    @property
    def m2(self) -> float:
        """Sum of squared deviations from the mean (clipped at 0 against rounding)."""
        return max(_centred(self.n, self.sum, self.sum, self.sum_sq), 0.0)

    @property
    def variance(self) -> float:
        """Sample variance, ddof 1; nan for n < 2."""
        return self.m2 / (self.n - 1) if self.n > 1 else _NAN

    @property
    def std(self) -> float:
        return math.sqrt(self.variance) if self.n > 1 else _NAN

    @property
    def sem(self) -> float:
        """Standard error of the mean."""
        return math.sqrt(self.variance / self.n) if self.n > 1 else _NAN


@dataclass(frozen=True, slots=True)
class PairStats:
    """Joint statistics of two per-unit values y and x (ratio metrics, CUPED).

    For a ratio metric y is the numerator and x the denominator; for CUPED y is the
    metric and x its pre-period value (the covariate).
    """

    n: int
    sum_y: float
    sum_y2: float
    sum_x: float
    sum_x2: float
    sum_xy: float

    @classmethod
    def of(cls, y: Iterable[float] | np.ndarray, x: Iterable[float] | np.ndarray) -> PairStats:
        ya = np.asarray(y, dtype=float).ravel()
        xa = np.asarray(x, dtype=float).ravel()
        if ya.shape != xa.shape:
            raise ValueError(f"y and x differ in length: {ya.size} != {xa.size}")
        return cls(
            int(ya.size),
            float(ya.sum()),
            float(np.dot(ya, ya)),
            float(xa.sum()),
            float(np.dot(xa, xa)),
            float(np.dot(xa, ya)),
        )

    @classmethod
    def empty(cls) -> PairStats:
        return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def __add__(self, other: PairStats) -> PairStats:
        if not isinstance(other, PairStats):
            return NotImplemented
        return PairStats(
            self.n + other.n,
            self.sum_y + other.sum_y,
            self.sum_y2 + other.sum_y2,
            self.sum_x + other.sum_x,
            self.sum_x2 + other.sum_x2,
            self.sum_xy + other.sum_xy,
        )

    @property
    def y(self) -> SampleStats:
        return SampleStats(self.n, self.sum_y, self.sum_y2)

    @property
    def x(self) -> SampleStats:
        return SampleStats(self.n, self.sum_x, self.sum_x2)

    @property
    def mean_y(self) -> float:
        return self.y.mean

    @property
    def mean_x(self) -> float:
        return self.x.mean

    @property
    def var_y(self) -> float:
        return self.y.variance

    @property
    def var_x(self) -> float:
        return self.x.variance

    @property
    def cxy(self) -> float:
        """Co-moment: sum of (x - mean x)(y - mean y)."""
        return _centred(self.n, self.sum_x, self.sum_y, self.sum_xy)

    @property
    def cov_xy(self) -> float:
        """Sample covariance of x and y, ddof 1; nan for n < 2."""
        return self.cxy / (self.n - 1) if self.n > 1 else _NAN

    @property
    def corr(self) -> float:
        vx, vy = self.var_x, self.var_y
        if not (vx > 0 and vy > 0):
            return _NAN
        return self.cov_xy / math.sqrt(vx * vy)
