"""The quality report as a document: would the shadow have been better on the outcomes that
came back, then each model's figures, the paired tests and the calibration curves."""

from __future__ import annotations

from typing import Any

from analysis.report.document import Column, Document, Grid, Line, Lines, Section
from analysis.report.text import fmt, fmt_ci, fmt_p, fmt_params

__all__ = ["build"]

_ALPHA = 0.05
_SHOWN = {"binary": ("auc", "log_loss", "brier"), "regression": ("mae", "rmse")}
_TITLES = {"auc": "AUC", "log_loss": "log loss", "brier": "Brier", "mae": "MAE", "rmse": "RMSE",
           "mse": "MSE"}
_HIGHER_IS_BETTER = frozenset({"auc"})


def _verdict(test: dict[str, Any]) -> Line:
    metric = str(test.get("metric"))
    title = _TITLES.get(metric, metric)
    shadow, primary = test.get("shadow"), test.get("primary")
    head = (f"{shadow} scores {title} {fmt(test.get('shadow_value'))} against {primary}'s "
            f"{fmt(test.get('primary_value'))} on the same {fmt(test.get('n'))} requests")
    diff, p = test.get("diff"), test.get("p_value")
    if diff is None or p is None:
        reason = f": {test['message']}" if test.get("message") else ""
        return Line(f"{head}; the difference could not be tested{reason}.", "warn")
    detail = f"(shadow - primary {fmt(diff)} {fmt_ci(test.get('diff_ci'))}, p = {fmt_p(p)})"
    if p >= _ALPHA:
        return Line(f"{head} {detail}: no detectable difference.")
    better = (diff > 0) == (metric in _HIGHER_IS_BETTER)
    return Line(f"{head} {detail}: the shadow is {'better' if better else 'worse'}.",
                "good" if better else "bad")


def _models(report: dict[str, Any], kind: str) -> Grid:
    shown = _SHOWN.get(kind, ())
    columns = [Column("route", "name"), Column("model", "name"), Column("roles", "text"),
               Column("n"), *(Column(f"{_TITLES[k]} [95% CI]") for k in shown)]
    if kind == "binary":
        columns.append(Column("ECE"))
    grid = Grid(f"Model quality on outcome {report.get('metric')!s} ({kind})", tuple(columns), [])
    for m in report.get("models") or []:
        figures = [f"{fmt(m.get(k))} {fmt_ci(m.get(k + '_ci'))}" for k in shown]
        ece = [fmt(m.get("ece"))] if kind == "binary" else []
        grid.rows.append([str(m.get("route")), f"{m.get('backend')}@{m.get('version')}",
                          ", ".join(map(str, m.get("roles") or [])), fmt(m.get("n")),
                          *figures, *ece])
    return grid


def _tests(report: dict[str, Any]) -> Grid:
    grid = Grid("Shadow vs primary on the same requests (shadow - primary)", (
        Column("route", "name"), Column("primary → shadow", "name"), Column("metric", "text"),
        Column("n"), Column("primary"), Column("shadow"), Column("diff [95% CI]"),
        Column("p"), Column("method", "text")), [])
    for c in report.get("comparisons") or []:
        p = c.get("p_value")
        grid.rows.append([str(c.get("route")), f"{c.get('primary')} → {c.get('shadow')}",
                          str(c.get("metric")), fmt(c.get("n")), fmt(c.get("primary_value")),
                          fmt(c.get("shadow_value")),
                          f"{fmt(c.get('diff'))} {fmt_ci(c.get('diff_ci'))}",
                          Line(fmt_p(p), "key" if p is not None and p < _ALPHA else ""),
                          str(c.get("method"))])
    return grid


def _charts(report: dict[str, Any], kind: str) -> list[Any]:
    charts: list[Any] = []
    curves = {f"{m.get('backend')}@{m.get('version')}":
              ([b["mean_score"] for b in m["reliability"]],
               [b["observed"] for b in m["reliability"]])
              for m in report.get("models") or [] if m.get("reliability")}
    if curves:
        charts.append(Lines("Reliability: observed rate by mean score",
                            {"perfect calibration": ([0.0, 1.0], [0.0, 1.0]), **curves},
                            "mean predicted score", "observed rate",
                            dashed=("perfect calibration",)))
    metric = "auc" if kind == "binary" else "mae"
    series: dict[str, tuple[list[Any], list[float]]] = {}
    for m in report.get("windows") or []:
        if m.get("window") is not None and m.get(metric) is not None:
            xs, ys = series.setdefault(f"{m.get('backend')}@{m.get('version')}", ([], []))
            xs.append(m["window"])
            ys.append(float(m[metric]))
    if series:
        charts.append(Lines(f"{_TITLES[metric]} per window", dict(series), "window start",
                            _TITLES[metric], dates=True))
    return charts


def build(report: dict[str, Any]) -> Document:
    """The quality document for a ``shadowcar.report.quality`` dictionary."""
    kind = str(report.get("kind") or "binary")
    headline = "auc" if kind == "binary" else "mae"
    tests = list(report.get("comparisons") or [])
    verdict = [_verdict(t) for t in tests if t.get("metric") == headline]
    if not verdict:
        verdict = [_verdict(t) for t in tests] or [Line(
            report.get("message") or "no shadow answered the same labelled requests as the "
            "primary: nothing to compare", "warn")]
    summary = [_models(report, kind)] if report.get("models") else []
    if tests:
        summary.append(_tests(report))
    charts = _charts(report, kind)
    sections = [Section("Calibration and quality over time", charts=charts)] if charts else []
    return Document("quality", "Model quality report", verdict, summary, sections,
                    [f"schema {report.get('schema')}",
                     f"parameters: {fmt_params(report.get('params'))}"])
