"""Shadowcar analysis: recorded traffic to divergence, experiment and drift reports.

Importable without the running service; SQL reduces rows, numpy/scipy finish (DESIGN 5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis.canary_readout import CanaryReport, analyze_canaries
    from analysis.divergence import DivergenceReport, PairDivergence, analyze_divergence
    from analysis.drift import DriftReport, FeatureDrift, analyze_drift
    from analysis.experiment import ExperimentReport, analyze_experiments
    from analysis.load import AnalysisSourceError, open_source, parse_time, time_filter
    from analysis.report import render

__all__ = [
    "AnalysisSourceError",
    "CanaryReport",
    "DivergenceReport",
    "DriftReport",
    "ExperimentReport",
    "FeatureDrift",
    "PairDivergence",
    "analyze_canaries",
    "analyze_divergence",
    "analyze_drift",
    "analyze_experiments",
    "open_source",
    "parse_time",
    "render",
    "time_filter",
]

#: Each public name's module, imported on first use: ``sidecar serve`` builds its command
#: line with ``analysis.cli`` and must not load scipy for it.
_LAZY = {
    **dict.fromkeys(("DivergenceReport", "PairDivergence", "analyze_divergence"),
                    "analysis.divergence"),
    **dict.fromkeys(("DriftReport", "FeatureDrift", "analyze_drift"), "analysis.drift"),
    **dict.fromkeys(("ExperimentReport", "analyze_experiments"), "analysis.experiment"),
    **dict.fromkeys(("CanaryReport", "analyze_canaries"), "analysis.canary_readout"),
    **dict.fromkeys(("AnalysisSourceError", "open_source", "parse_time", "time_filter"),
                    "analysis.load"),
    "render": "analysis.report",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
