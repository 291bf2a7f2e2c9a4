"""The field-diff report as a document: which fields of the decoded answers a shadow changes
beyond the replica's noise floor, then the per-field rates."""

from __future__ import annotations

from typing import Any

from analysis.report.document import Bars, Column, Document, Grid, Line, Section
from analysis.report.text import fmt, fmt_params, fmt_share, fmt_share_ci

__all__ = ["build"]

_CHART_FIELDS = 25


def _verdict(pair: dict[str, Any]) -> Line:
    shadow, primary = pair.get("shadow"), pair.get("primary")
    fields = list(pair.get("fields") or [])
    differing = [f for f in fields if f.get("diff_rate")]
    if pair.get("replica") is None:
        top = ", ".join(f"{f.get('path')} ({fmt_share(f.get('diff_rate'))})"
                        for f in differing[:5])
        return Line(f"{shadow}'s answers differ from {primary}'s in {len(differing)} of "
                    f"{len(fields)} fields{': ' + top if top else ''}; no replica ran, so "
                    "there is no noise floor to tell real differences from noise.", "warn")
    flagged = [f for f in fields if f.get("flag")]
    if not flagged:
        return Line(f"{shadow}'s answers differ from {primary}'s in no field beyond the "
                    f"replica's ({pair['replica']}) noise floor.", "good")
    named = ", ".join(f"{f.get('path')} ({fmt_share(f.get('diff_rate'))} vs "
                      f"{fmt_share(f.get('replica_rate'))})" for f in flagged)
    return Line(f"{shadow}'s answers differ from {primary}'s in {len(flagged)} of "
                f"{len(fields)} fields beyond the replica's noise floor: {named}.", "bad")


def build(report: dict[str, Any]) -> Document:
    """The fields document for a ``shadowcar.report.fields`` dictionary."""
    pairs = list(report.get("pairs") or [])
    verdict = [_verdict(p) for p in pairs if not p.get("is_replica")]
    if not verdict:
        verdict = [Line(report.get("message") or "no primary/shadow pair has a decoded "
                        "response on both sides", "warn")]
    grid = Grid("Field differences per pair", (
        Column("route", "name"), Column("primary → shadow", "name"), Column("field", "name"),
        Column("n"), Column("differs"), Column("95% CI"), Column("replica"),
        Column("flag", "text")), [])
    sections = []
    for pair in pairs:
        name = f"{pair.get('primary')} → {pair.get('shadow')}" + (
            " (replica)" if pair.get("is_replica") else "")
        for f in pair.get("fields") or []:
            grid.rows.append([
                str(pair.get("route")), name, str(f.get("path")), fmt(f.get("present")),
                fmt_share(f.get("diff_rate")), fmt_share_ci(f.get("diff_ci")),
                fmt_share(f.get("replica_rate")),
                Line("above noise", "bad") if f.get("flag") else Line("")])
        shown = [f for f in pair.get("fields") or [] if f.get("diff_rate") is not None]
        shown = shown[:_CHART_FIELDS]
        section = Section(f"{pair.get('route')}: {name}",
                          [Line(f"{fmt(pair.get('n'))} paired answers; noise floor: "
                                f"{pair.get('replica') or 'none'}")])
        if shown:
            section.charts.append(Bars(
                "Share of answers where the field differs", [str(f["path"]) for f in shown],
                [float(f["diff_rate"]) for f in shown], [bool(f.get("flag")) for f in shown],
                None, "share of paired answers"))
        sections.append(section)
    return Document("fields", "Field differences report", verdict,
                    [grid] if grid.rows else [], sections,
                    [f"schema {report.get('schema')}",
                     f"parameters: {fmt_params(report.get('params'))}"])
