"""Rendering of report dictionaries (``to_dict()``) as a terminal table, JSON or one HTML file.

Every kind goes through one :class:`~analysis.report.document.Document` (``pages.build``),
so the table and the HTML file say the same thing; every note, warning and method in the
dictionary is shown in both (:mod:`analysis.report.notes`).
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["ReportFormat", "ReportKind", "render"]

ReportKind = Literal["divergence", "experiment", "drift", "quality", "fields"]
ReportFormat = Literal["table", "json", "html"]


def render(report_dict: dict[str, Any], kind: ReportKind, format: ReportFormat, *,
           color: bool = False, width: int | None = None) -> str:
    """Render one report; ``color`` keeps ANSI colours in the terminal table, ``width`` None
    takes the terminal's (``COLUMNS`` first) and 0 means unlimited (a file, a pipe)."""
    if format == "json":
        from analysis.report.json import render_json

        return render_json(report_dict)
    if format == "table":
        from analysis.report.terminal import render_table

        return render_table(report_dict, kind, color=color, width=width)
    if format == "html":
        from analysis.report.html import render_html

        return render_html(report_dict, kind)
    raise ValueError(f"unknown report format {format!r}: use table, json or html")
