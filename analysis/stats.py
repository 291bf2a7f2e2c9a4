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

__all__ = ["P_FLOOR", "PairStats", "SampleStats", "finite_or_none"]

_NAN = float("nan")
#: A p-value that underflows to 0.0 is reported as this upper bound (flagged as a bound).
P_FLOOR = 1e-300


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, NaN or infinite (JSON has neither)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _reshift(n: int, total: float, total_sq: float, delta: float) -> tuple[float, float]:
    """Sums of ``u + delta`` from sums of ``u`` (moves a sample onto another shift)."""
    if delta == 0.0:
        return total, total_sq
    return total + n * delta, total_sq + 2.0 * delta * total + n * delta * delta


def _centred(n: float, sum_u: float, sum_v: float, sum_uv: float) -> float:
    """Sum of (u - mean u)(v - mean v): the co-moment, from raw sums."""
    if n <= 0:
        return _NAN
    return sum_uv - sum_u * sum_v / n


@dataclass(frozen=True, slots=True)
class SampleStats:
    """n, sum and sum of squares of one sample (one metric in one variant), of the values
    less ``shift``.

    Variances come from ``sum_sq - sum**2 / n``, which loses digits when the mean is huge
    relative to the spread (relative error about eps * (mean - shift)**2 / var): the engine
    sums ``value - shift`` with a shift near the mean (issue 19), so a metric of 1e7 + N(0,1)
    keeps its digits. ``total`` is the plain sum of the values.
    """

    n: int
    sum: float
    sum_sq: float
    shift: float = 0.0

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
        o_sum, o_sq = _reshift(other.n, other.sum, other.sum_sq, other.shift - self.shift)
        return SampleStats(self.n + other.n, self.sum + o_sum, self.sum_sq + o_sq, self.shift)

    @property
    def mean(self) -> float:
        return self.shift + self.sum / self.n if self.n > 0 else _NAN

    @property
    def total(self) -> float:
        """Sum of the values themselves (exact for counts: shifts are whole numbers)."""
        return self.sum + self.n * self.shift

    @property
    def total_sq(self) -> float:
        """Sum of the squared values themselves."""
        return self.sum_sq + 2.0 * self.shift * self.sum + self.n * self.shift * self.shift

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
    metric and x its pre-period value (the covariate). Sums are of ``y - shift_y`` and
    ``x - shift_x`` (see :class:`SampleStats`); co-moments do not depend on the shifts.
    """

    n: int
    sum_y: float
    sum_y2: float
    sum_x: float
    sum_x2: float
    sum_xy: float
    shift_y: float = 0.0
    shift_x: float = 0.0

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
        dy, dx = other.shift_y - self.shift_y, other.shift_x - self.shift_x
        oy, oy2 = _reshift(other.n, other.sum_y, other.sum_y2, dy)
        ox, ox2 = _reshift(other.n, other.sum_x, other.sum_x2, dx)
        # sum (y+dy)(x+dx) = sum yx + dx sum y + dy sum x + n dy dx
        oxy = other.sum_xy + dx * other.sum_y + dy * other.sum_x + other.n * dy * dx
        return PairStats(
            self.n + other.n,
            self.sum_y + oy,
            self.sum_y2 + oy2,
            self.sum_x + ox,
            self.sum_x2 + ox2,
            self.sum_xy + oxy,
            self.shift_y,
            self.shift_x,
        )

    @property
    def y(self) -> SampleStats:
        return SampleStats(self.n, self.sum_y, self.sum_y2, self.shift_y)

    @property
    def x(self) -> SampleStats:
        return SampleStats(self.n, self.sum_x, self.sum_x2, self.shift_x)

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
