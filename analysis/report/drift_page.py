"""The drift report as a document: which input features moved between the reference and
the current window, then the per-feature evidence."""

from __future__ import annotations

from typing import Any

from analysis.report.document import Bars, Column, Document, Grid, Line, Section, as_dict
from analysis.report.text import fmt, fmt_p, fmt_params, fmt_share

__all__ = ["build"]

#: PSI above this is drift by convention; a report may state its own (``thresholds.psi``).
_PSI_THRESHOLD = 0.2


def _window(part: Any) -> str:
    part = part if isinstance(part, dict) else {}
    return f"{part.get('since') or '…'} → {part.get('until') or '…'}"


def _grid(features: list[dict[str, Any]]) -> Grid:
    grid = Grid("Input drift per feature", (
        Column("route", "name"), Column("feature", "name"), Column("kind", "text"),
        Column("n (R/C)"), Column("null (R/C)"), Column("PSI"), Column("KS (p)"),
        Column("W1/sd"), Column("JS"), Column("chi² (p)"), Column("out of range (R/C)"),
        Column("unseen", "text"),
        Column("flags", "text")), [])
    for f in features:
        grid.rows.append([
            str(f.get("route")), str(f.get("feature")), str(f.get("kind")),
            f"{fmt(f.get('n_reference'))} / {fmt(f.get('n_current'))}",
            f"{fmt_share(f.get('null_rate_reference'))} / {fmt_share(f.get('null_rate_current'))}",
            fmt(f.get("psi")), f"{fmt(f.get('ks_stat'))} ({fmt_p(f.get('ks_p'))})",
            fmt(f.get("wasserstein")), fmt(f.get("js_distance")),
            f"{fmt(f.get('chi2'))} ({fmt_p(f.get('chi2_p'))})",
            f"{fmt_share(f.get('out_of_range_reference'))} / "
            f"{fmt_share(f.get('out_of_range_current'))}",
            ", ".join(map(str, f.get("unseen_categories") or [])),
            Line(", ".join(f.get("flags") or ()), "bad")])
    return grid


_P_VALUE_METHODS = frozenset({"ks", "chi2", "chi-square", "chisquare"})


def _why(f: dict[str, Any]) -> str:
    """Why a feature was flagged: its drift method's score against its threshold when the
    report says them, else the flags and the PSI."""
    method, score = f.get("drift_method"), f.get("drift_score")
    if method and score is not None:
        if method in _P_VALUE_METHODS:
            return f"{method} p = {fmt_p(score)} < {fmt(f.get('drift_threshold'))}"
        return f"{method} {fmt(score)} ≥ {fmt(f.get('drift_threshold'))}"
    return f"{', '.join(f.get('flags') or ())}, PSI {fmt(f.get('psi'))}"


def _chart(features: list[dict[str, Any]], psi_line: float) -> Bars | None:
    """Each numeric feature's distance: the report's own drift score when it is a distance
    shared by all (Wasserstein, Jensen-Shannon ...), else the PSI with its 0.2 convention."""
    numeric = [f for f in features if f.get("kind") == "numeric"]
    methods = {f.get("drift_method") for f in numeric}
    labels = [str(f.get("feature")) for f in numeric]
    red = [bool(f.get("flags") or f.get("drifted")) for f in numeric]
    if len(methods) == 1 and None not in methods and not methods & _P_VALUE_METHODS and all(
            f.get("drift_score") is not None for f in numeric) and numeric:
        method = str(methods.pop())
        threshold = numeric[0].get("drift_threshold")
        return Bars(f"{method} per numeric feature", labels,
                    [float(f["drift_score"]) for f in numeric], red,
                    None if threshold is None else float(threshold),
                    f"{method} (dashed: the drift threshold)")
    shown = [i for i, f in enumerate(numeric) if f.get("psi") is not None]
    if not shown:
        return None
    return Bars("PSI per numeric feature", [labels[i] for i in shown],
                [float(numeric[i]["psi"]) for i in shown], [red[i] for i in shown], psi_line,
                f"population stability index (dashed: {fmt(psi_line)}); red: drifted")


def build(report: dict[str, Any]) -> Document:
    """The drift document for a ``shadowcar.report.drift`` dictionary."""
    features = list(report.get("features") or [])
    thresholds = as_dict(report.get("thresholds"))
    psi_line = float(thresholds.get("psi") or _PSI_THRESHOLD)
    windows = (f"reference {_window(report.get('reference'))}; "
               f"current {_window(report.get('current'))}")
    flagged = [f for f in features if f.get("flags") or f.get("drifted")]
    if not features:
        verdict = [Line(report.get("message") or "no input features were recorded", "warn")]
    elif flagged:
        named = "; ".join(f"{f.get('feature')} ({_why(f)})" for f in flagged)
        verdict = [Line(f"{len(flagged)} of {len(features)} input features drifted between the "
                        f"reference and the current window: {named}.", "bad")]
    else:
        verdict = [Line(f"None of the {len(features)} input features drifted between the "
                        "reference and the current window.", "good")]
    verdict.append(Line(windows[:1].upper() + windows[1:] + "."))
    section = Section("Drift per numeric feature")
    chart = _chart(features, psi_line)
    if chart is not None:
        section.charts.append(chart)
    return Document("drift", "Input drift report", verdict, [_grid(features)] if features else [],
                    [section] if section.charts else [],
                    [f"schema {report.get('schema')}", windows,
                     f"parameters: {fmt_params(report.get('params'))}"])
