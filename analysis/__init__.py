"""Shadowcar analysis: recorded traffic to divergence, experiment and drift reports.

Importable without the running service; SQL reduces rows, numpy/scipy finish (DESIGN 5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from analysis.divergence import DivergenceReport, PairDivergence, analyze_divergence
from analysis.drift import DriftReport, FeatureDrift, analyze_drift
from analysis.load import AnalysisSourceError, open_source, parse_time, time_filter
from analysis.report import render

if TYPE_CHECKING:
    from analysis.experiment import ExperimentReport, analyze_experiments

__all__ = [
    "AnalysisSourceError",
    "DivergenceReport",
    "DriftReport",
    "ExperimentReport",
    "FeatureDrift",
    "PairDivergence",
    "analyze_divergence",
    "analyze_drift",
    "analyze_experiments",
    "open_source",
    "parse_time",
    "render",
    "time_filter",
]

_LAZY = {"ExperimentReport", "analyze_experiments"}


def __getattr__(name: str) -> Any:
    # The experiment module is imported on first use, so this package works without it.
    if name in _LAZY:
        from analysis import experiment

        return getattr(experiment, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
