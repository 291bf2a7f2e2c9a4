"""Asymptotic confidence sequences: a boundary valid at every look, so peeking is safe.

The normal-mixture boundary of Waudby-Smith et al. (2023), its tuning rho**2 and the
p-value that inverts it, plus the boundary level that spends alpha by a planned sample
size. Plain numpy: the sidecar's canary guardrails use it without scipy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_SEQUENTIAL_N_OPT",
    "HORIZON_LEVELS",
    "cs_multiplier",
    "cs_p_value",
    "horizon_alpha",
    "mixture_rho2",
]

DEFAULT_ALPHA = 0.05
#: Total units (both arms) at which the confidence sequence is tightest; see mixture_rho2.
DEFAULT_SEQUENTIAL_N_OPT = 5000

#: alpha -> boundary level of a confidence sequence tuned to a planned sample size N whose
#: crossing probability under continuous monitoring up to N is alpha (the untruncated
#: sequence spends most of alpha after N: 1.9 % of 5 % by N). Seeded simulation of
#: 100 000 Brownian paths watched at 1 000 equal looks, bisection on the level
#: (tests/analysis/test_sequential.py::calibrate reproduces it).
HORIZON_LEVELS: tuple[tuple[float, float], ...] = (
    (0.001, 0.003326), (0.005, 0.015942), (0.01, 0.030253), (0.02, 0.058680),
    (0.05, 0.135262), (0.1, 0.251088), (0.2, 0.458540),
)


def horizon_alpha(alpha: float) -> float:
    """Boundary level that spends ``alpha`` by the planned sample size (see HORIZON_LEVELS),
    interpolated linearly in log-log between the calibrated points."""
    lo, hi = HORIZON_LEVELS[0][0], HORIZON_LEVELS[-1][0]
    if not lo <= alpha <= hi:
        raise ValueError(f"a planned sample size needs {lo} <= alpha <= {hi}, got {alpha!r}")
    xs = np.log([a for a, _ in HORIZON_LEVELS])
    ys = np.log([b for _, b in HORIZON_LEVELS])
    return float(np.exp(np.interp(math.log(alpha), xs, ys)))


def mixture_rho2(n_opt: float, alpha: float = DEFAULT_ALPHA) -> float:
    """Normal-mixture tuning rho**2 that makes the boundary tightest near ``n_opt`` units.

    The closed-form approximation of Howard et al. (2021), used by Waudby-Smith et al.:
    rho**2 = (-2 ln alpha + ln(1 - 2 ln alpha)) / n_opt.
    """
    la = -2.0 * math.log(alpha)
    return (la + math.log(la + 1.0)) / n_opt


def cs_multiplier(n: Any, alpha: float, rho2: float) -> Any:
    """k(n) with confidence sequence = estimate +- k(n) * se, valid at every n at once.

    Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas, "Time-uniform central limit theory and
    asymptotic confidence sequences" (2023), two-sided normal-mixture boundary:
    mean_n +- sigma_n * sqrt(2 (n rho^2 + 1) / (n^2 rho^2) * ln(sqrt(n rho^2 + 1) / alpha)).
    With se = sigma_n / sqrt(n) this is se * sqrt(2 (n rho^2 + 1) / (n rho^2) * ln(...)).
    Accepts numpy arrays for ``n`` (simulations).
    """
    a = np.asarray(n, dtype=float) * rho2
    return np.sqrt(2.0 * (a + 1.0) / a * np.log(np.sqrt(a + 1.0) / alpha))


def cs_p_value(z: Any, n: Any, rho2: float) -> Any:
    """Smallest alpha whose confidence sequence at n excludes 0, for z = estimate / se.

    Inverting |z| = k(n): p = min(1, sqrt(n rho^2 + 1) exp(-z^2 n rho^2 / (2 (n rho^2 + 1)))).
    Its running minimum over looks is the always-valid p-value; one look reports this value.
    """
    a = np.asarray(n, dtype=float) * rho2
    z2 = np.square(np.asarray(z, dtype=float))
    return np.minimum(1.0, np.sqrt(a + 1.0) * np.exp(-z2 * a / (2.0 * (a + 1.0))))
