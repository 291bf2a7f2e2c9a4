"""Command-line options of the report statistics and their translation into keyword arguments.

Kept apart from analysis/cli.py so the command's plumbing (sources, formats, exit codes) and
the statistics' options change independently.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

__all__ = ["add_statistics_options", "check_statistics_options", "statistics_kwargs"]

_DRIFT_METHODS = ("auto", "psi", "wasserstein", "jensenshannon", "ks")


def add_statistics_options(parser: argparse.ArgumentParser) -> None:
    """Add the experiment, drift and config-version options to the ``report`` parser."""
    group = parser.add_argument_group("statistics")
    group.add_argument("--alpha", type=float, default=0.05,
                       help="error level: intervals are 1 - alpha (experiment; default 0.05)")
    group.add_argument("--ratio", action="append", default=None, metavar="[NAME=]NUM/DEN",
                       help="ratio metric sum(NUM)/sum(DEN) over units (experiment; repeatable)")
    group.add_argument("--cuped-lookback", default="14d", metavar="SPAN",
                       help="CUPED covariate: the metric's outcomes this long before first "
                       "exposure (experiment on recorded data; default 14d)")
    group.add_argument("--n-opt", type=float, metavar="N",
                       help="units at which the sequential interval is tightest (default: "
                       "each comparison's own units)")
    group.add_argument("--expected-n", type=float, metavar="N",
                       help="planned total units: the sequential interval spends alpha by then")
    versions = group.add_mutually_exclusive_group()
    versions.add_argument("--version", metavar="V",
                          help="only rows recorded under this config version (default: each "
                          "route's newest)")
    versions.add_argument("--all-versions", action="store_true",
                          help="every config version (default: each route's newest)")
    group.add_argument("--drift-method", choices=_DRIFT_METHODS, default="auto",
                       help="how drift is judged (default auto: Evidently's size-aware rule)")
    group.add_argument("--drift-threshold", type=float, metavar="X",
                       help="the drift method's threshold (distance, or p-value for ks)")


class StatisticsUsageError(ValueError):
    """A statistics option argparse accepted but the analysis cannot use."""


def _ratios(items: list[str] | None) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for item in items or []:
        name, eq, body = item.partition("=")
        if not eq:
            name, body = item, item
        num, slash, den = body.partition("/")
        if not slash or not num.strip() or not den.strip() or not name.strip():
            raise StatisticsUsageError(f"--ratio: cannot read {item!r}; use NUM/DEN or "
                                       "NAME=NUM/DEN")
        out[name.strip()] = (num.strip(), den.strip())
    return out


def check_statistics_options(args: argparse.Namespace) -> None:
    """Raise StatisticsUsageError (a ValueError) naming the option that cannot be used."""
    alpha = getattr(args, "alpha", 0.05)
    if alpha is None or not 0 < alpha < 0.5:
        raise StatisticsUsageError("--alpha must be between 0 and 0.5 (exclusive)")
    for name in ("n_opt", "expected_n", "drift_threshold"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise StatisticsUsageError(f"--{name.replace('_', '-')} must be a number > 0")
    if getattr(args, "n_opt", None) is not None and getattr(args, "expected_n", None) is not None:
        raise StatisticsUsageError("give --n-opt or --expected-n, not both")
    _ratios(getattr(args, "ratio", None))


def statistics_kwargs(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The keyword arguments of ``kind``'s analysis that come from the statistics options."""
    versions = {"version": getattr(args, "version", None),
                "all_versions": bool(getattr(args, "all_versions", False))}
    if kind == "experiment":
        return {
            **versions,
            "alpha": getattr(args, "alpha", 0.05),
            "ratios": _ratios(getattr(args, "ratio", None)),
            "cuped_lookback": getattr(args, "cuped_lookback", None) or "14d",
            "window": getattr(args, "window", None),
            "sequential_n_opt": getattr(args, "n_opt", None),
            "expected_n": getattr(args, "expected_n", None),
        }
    if kind == "drift":
        return {**versions, "method": getattr(args, "drift_method", None) or "auto",
                "threshold": getattr(args, "drift_threshold", None)}
    if kind in ("divergence", "fields"):
        return versions
    return {}
