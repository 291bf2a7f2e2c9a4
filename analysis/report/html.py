"""One self-contained HTML file per report: inline CSS, tables and inline SVG charts.

Nothing is fetched when the file is opened: no scripts, fonts or styles from elsewhere.
"""

from __future__ import annotations

from html import escape
from typing import Any

from analysis.report import svg
from analysis.report.text import fmt, fmt_ci, fmt_p, fmt_share

__all__ = ["render_html"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 12px 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.flag { color: #c00; font-weight: bold; } .note { color: #a60; }
.srm-bad { color: #fff; background: #c00; padding: 8px; font-weight: bold; }
.srm-ok { color: #060; } .charts svg { margin: 6px; border: 1px solid #eee; }
"""


def render_html(report: dict[str, Any], kind: str) -> str:
    """The whole document for one report dictionary."""
    body = {"divergence": _divergence, "experiment": _experiment, "drift": _drift}.get(kind)
    if body is None:
        raise ValueError(f"unknown report kind {kind!r}")
    parts = body(report)
    if report.get("message"):
        parts.append(f'<p class="note">{escape(str(report["message"]))}</p>')
    title = f"Shadowcar {kind} report"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{title}</title><style>{_CSS}</style></head><body>"
            f"<h1>{title}</h1><p>schema {escape(str(report.get('schema')))}</p>"
            + "\n".join(parts) + "</body></html>\n")


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f'<th class="l">{escape(h)}</th>' if i < 2 else f"<th>{escape(h)}</th>"
                   for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="l">{c}</td>' if i < 2 else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _e(value: Any) -> str:
    return escape(fmt(value))


def _flags(flags: Any) -> str:
    return f'<span class="flag">{escape(", ".join(flags))}</span>' if flags else ""


def _divergence(report: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    for pair in report.get("pairs", []):
        num = pair.get("numeric") or {}
        cls = pair.get("classes") or {}
        dist = pair.get("distribution") or {}
        lat = pair.get("latency_ms") or {}
        err = pair.get("errors") or {}
        name = f"{pair.get('primary')} → {pair.get('shadow')}"
        parts.append(f"<h2>{escape(str(pair.get('route')))}: {escape(name)}"
                     f"{' (replica)' if pair.get('replica') else ''}</h2>")
        rows = [
            ["pairs", "", _e(pair.get("n"))], ["unmatched", "", _e(pair.get("unmatched"))],
            ["mean diff", escape(fmt_ci(num.get("mean_diff_ci"))), _e(num.get("mean_diff"))],
            ["MAE / RMSE / max", "", f"{_e(num.get('mae'))} / {_e(num.get('rmse'))} / "
                                     f"{_e(num.get('max_abs'))}"],
            ["pearson / spearman", "", f"{_e(num.get('pearson'))} / {_e(num.get('spearman'))}"],
            ["out of tolerance", "", escape(fmt_share(num.get("out_of_tolerance")))],
            ["agreement", escape(fmt_ci(cls.get("agreement_ci"))),
             escape(fmt_share(cls.get("agreement")))],
            ["kappa", "", _e(cls.get("kappa"))],
            ["JS divergence", "", _e(pair.get("js_divergence"))],
            ["PSI", "", _e(dist.get("psi"))],
            ["KS", f"p = {escape(fmt_p(dist.get('ks_p')))}", _e(dist.get("ks_stat"))],
            ["Wasserstein / sd", "", _e(dist.get("wasserstein"))],
            ["latency ratio (median)", "", _e(lat.get("ratio_median"))],
        ]
        for side in ("primary", "shadow"):
            figures = err.get(side) or {}
            rows.append([f"{side} errors", escape(fmt_ci(figures.get("error_rate_ci"))),
                         escape(fmt_share(figures.get("error_rate")))])
            rows.append([f"{side} timeouts / drops", "",
                         f"{escape(fmt_share(figures.get('timeout_rate')))} / "
                         f"{_e(figures.get('dropped'))}"])
        floor = pair.get("noise_floor") or {}
        parts.append(_table(["figure", "95% CI", "value"], rows))
        if floor:
            metrics = [k for k in floor if k != "backends"]
            parts.append("<p>Noise floor from replica " + escape(", ".join(floor["backends"]))
                         + "</p>" + _table(["metric", "", "replica"],
                                           [[escape(m), "", _e(floor[m])] for m in metrics]))
        parts.append(f"<p>flags: {_flags(pair.get('flags')) or 'none'}</p>")
        for part in (pair, num, cls, dist):
            if part.get("message"):
                parts.append(f'<p class="note">{escape(str(part["message"]))}</p>')
        parts.append('<div class="charts">' + _pair_charts(pair) + "</div>")
    return parts


def _pair_charts(pair: dict[str, Any]) -> str:
    plots = pair.get("plots") or {}
    charts: list[str] = []
    hist = plots.get("score_hist")
    if hist:
        charts.append(svg.histogram(hist["edges"], {"primary": hist["primary"],
                                                    "shadow": hist["shadow"]},
                                    "score distribution: primary vs shadow"))
    diff = plots.get("diff_hist")
    if diff:
        charts.append(svg.histogram(diff["edges"], {"shadow - primary": diff["counts"]},
                                    "paired difference"))
    cdfs = plots.get("latency_cdf") or {}
    series = {side: (c["x"], c["p"]) for side, c in cdfs.items()
              if c and all(x is not None for x in c["x"])}
    if series:
        charts.append(svg.line_chart(series, "latency CDF (ms)"))
    return "\n".join(charts)


def _experiment(report: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    if not report.get("experiments"):
        parts.append('<p class="note">no experiment found in the source</p>')
    for exp in report.get("experiments", []):
        srm = exp.get("srm") or {}
        parts.append(f"<h2>{escape(str(exp.get('name')))}</h2>")
        text = (f"sample ratio check: p = {escape(fmt_p(srm.get('p_value')))}, "
                f"counts {escape(str(srm.get('counts')))}, "
                f"expected {escape(str(srm.get('expected_share')))}")
        if srm.get("flag"):
            parts.append(f'<p class="srm-bad">SAMPLE RATIO MISMATCH: {text}. '
                         "The assignment is broken; treat the results as suspect.</p>")
        else:
            parts.append(f'<p class="srm-ok">{text}</p>')
        rows, forest = [], []
        for r in exp.get("results", []):
            label = f"{r.get('metric')}: {r.get('variant')}"
            rows.append([escape(str(r.get("metric"))),
                         escape(f"{r.get('variant')} vs {r.get('control')}"),
                         f"{_e(r.get('n_control'))} / {_e(r.get('n_variant'))}",
                         f"{_e(r.get('mean_control'))} / {_e(r.get('mean_variant'))}",
                         f"{_e(r.get('abs_effect'))} {escape(fmt_ci(r.get('abs_ci')))}",
                         f"{_e(r.get('rel_effect'))} {escape(fmt_ci(r.get('rel_ci')))}",
                         escape(fmt_p(r.get("p_value"))), escape(fmt_p(r.get("p_value_holm"))),
                         escape(fmt_p(r.get("p_value_bh"))), _e(r.get("method")),
                         f'<span class="note">{escape(str(r.get("message") or ""))}</span>'])
            ci = r.get("rel_ci") or [None, None]
            if r.get("rel_effect") is not None and None not in ci:
                forest.append((label, float(r["rel_effect"]), float(ci[0]), float(ci[1])))
        parts.append(_table(["metric", "variant", "n (C/V)", "mean (C/V)", "abs effect [CI]",
                             "rel effect [CI]", "p", "p Holm", "p BH", "method", "note"], rows))
        if forest:
            parts.append('<div class="charts">'
                         + svg.forest_plot(forest, "relative lift with 95% CI") + "</div>")
    return parts


def _drift(report: dict[str, Any]) -> list[str]:
    ref, cur = report.get("reference") or {}, report.get("current") or {}
    parts = [f"<p>reference {escape(str(ref.get('since')))} → {escape(str(ref.get('until')))}; "
             f"current {escape(str(cur.get('since')))} → {escape(str(cur.get('until')))}</p>"]
    rows, labels, values, red = [], [], [], []
    for f in report.get("features", []):
        rows.append([escape(str(f.get("route"))), escape(str(f.get("feature"))),
                     escape(str(f.get("kind"))),
                     f"{_e(f.get('n_reference'))} / {_e(f.get('n_current'))}",
                     f"{escape(fmt_share(f.get('null_rate_reference')))} / "
                     f"{escape(fmt_share(f.get('null_rate_current')))}",
                     _e(f.get("psi")), f"{_e(f.get('ks_stat'))} ({escape(fmt_p(f.get('ks_p')))})",
                     f"{_e(f.get('chi2'))} ({escape(fmt_p(f.get('chi2_p')))})",
                     escape(fmt_share(f.get("out_of_range_current"))),
                     escape(", ".join(f.get("unseen_categories") or [])), _flags(f.get("flags"))])
        value = f.get("psi") if f.get("kind") == "numeric" else f.get("chi2_p")
        if f.get("kind") == "numeric" and value is not None:
            labels.append(str(f.get("feature")))
            values.append(float(value))
            red.append(bool(f.get("flags")))
    parts.append(_table(["route", "feature", "kind", "n (R/C)", "null (R/C)", "PSI", "KS (p)",
                         "chi² (p)", "out of range C", "unseen", "flags"], rows))
    if labels:
        parts.append('<div class="charts">' + svg.bar_chart(
            labels, values, "PSI per numeric feature", highlight=red, threshold=0.2) + "</div>")
    return parts
