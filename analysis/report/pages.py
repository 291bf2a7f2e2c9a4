"""One document builder per report kind."""

from __future__ import annotations

from typing import Any

from analysis.report.document import Document

__all__ = ["KINDS", "build"]

KINDS = ("divergence", "experiment", "drift", "quality", "fields")


def build(report: dict[str, Any], kind: str) -> Document:
    """The :class:`Document` of a report dictionary of ``kind``."""
    if kind == "divergence":
        from analysis.report.divergence_page import build as divergence
        return divergence(report)
    if kind == "experiment":
        from analysis.report.experiment_page import build as experiment
        return experiment(report)
    if kind == "drift":
        from analysis.report.drift_page import build as drift
        return drift(report)
    if kind == "quality":
        from analysis.report.quality_page import build as quality
        return quality(report)
    if kind == "fields":
        from analysis.report.fields_page import build as fields
        return fields(report)
    raise ValueError(f"unknown report kind {kind!r}: use one of {', '.join(KINDS)}")
