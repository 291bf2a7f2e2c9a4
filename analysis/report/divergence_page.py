"""The divergence report as a document: per candidate shadow, how often it disagrees with
the primary and whether that is beyond the replica's noise floor, then the evidence."""

from __future__ import annotations

from typing import Any

from analysis.report.document import (
    Column,
    Document,
    Grid,
    Histogram,
    Line,
    Lines,
    Section,
)
from analysis.report.text import fmt, fmt_ci, fmt_p, fmt_params, fmt_share, fmt_share_ci

__all__ = ["build"]


def pair_name(pair: dict[str, Any]) -> str:
    """``primary → shadow``, with the segment and a replica mark."""
    primary = pair.get("primary_label") or pair.get("primary")
    name = f"{primary} → {pair.get('shadow_label') or pair.get('shadow')}"
    if pair.get("segment") is not None:
        name += f" [{pair['segment']}]"
    return name + (" (replica)" if pair.get("replica") else "")


def _verdict(pair: dict[str, Any], prefix: str) -> list[Line]:
    shadow, primary = pair.get("shadow"), pair.get("primary")
    cls, num = pair.get("classes") or {}, pair.get("numeric") or {}
    floor, flags = pair.get("noise_floor") or {}, set(pair.get("flags") or ())
    if not pair.get("n"):
        return [Line(f"{prefix}{shadow} and {primary} have no paired answers to compare", "warn")]
    value: float | None
    if cls.get("agreement") is not None:
        metric, value = "disagreement", 1 - float(cls["agreement"])
        head = f"{prefix}{shadow} disagrees with {primary} on {fmt_share(value)} of decisions"
        shown = fmt_share
    else:
        metric, value = "mae", num.get("mae")
        head = (f"{prefix}{shadow}'s outputs differ from {primary}'s by {fmt(value)} on average "
                "(mean absolute difference)")
        shown = fmt
    level = floor.get(metric)
    if level is None:
        lines = [Line(head + "; no replica of the primary ran, so there is no noise floor to "
                      "tell a real difference from noise", "warn")]
    elif metric in flags:
        lines = [Line(f"{head}; the replica's noise floor is {shown(level)}: "
                      "the difference is real", "bad")]
    else:
        lines = [Line(f"{head}; the replica's noise floor is {shown(level)}: "
                      "within the noise, no real difference", "good")]
    others = sorted(flags - {metric})
    if others:
        lines.append(Line(f"It also exceeds the noise floor on: {', '.join(others)}.", "bad"))
    errors = pair.get("errors") or {}
    p_err, s_err = errors.get("primary") or {}, errors.get("shadow") or {}
    if (s_err.get("error_rate") or 0) > (p_err.get("error_rate") or 0):
        lines.append(Line(f"{shadow} failed {fmt_share(s_err.get('error_rate'))} of its calls "
                          f"({primary}: {fmt_share(p_err.get('error_rate'))}).", "bad"))
    ratio = (pair.get("latency_ms") or {}).get("ratio_median")
    if ratio is not None:
        lines.append(Line(f"{shadow}'s median latency is {fmt(ratio, 3)}x {primary}'s."))
    return lines


def _overview(pairs: list[dict[str, Any]]) -> list[Grid]:
    outputs = Grid("Divergence: shadow vs primary outputs", (
        Column("route", "name"), Column("primary → shadow", "name"), Column("n"),
        Column("unmatched"), Column("mean diff [95% CI]"), Column("MAE"), Column("pearson"),
        Column("spearman"), Column("out of tol"), Column("agreement"), Column("kappa")), [])
    shape = Grid("Distribution and operations", (
        Column("primary → shadow", "name"), Column("JS"), Column("PSI"), Column("KS (p)"),
        Column("W1/sd"), Column("p95 ms (P/S)"), Column("lat ratio"), Column("errors (P/S)"),
        Column("timeouts S"), Column("dropped S")), [])
    for pair in pairs:
        num, cls = pair.get("numeric") or {}, pair.get("classes") or {}
        dist, lat = pair.get("distribution") or {}, pair.get("latency_ms") or {}
        err = pair.get("errors") or {}
        p_err, s_err = err.get("primary") or {}, err.get("shadow") or {}
        name = pair_name(pair)
        outputs.rows.append([
            str(pair.get("route")), name, fmt(pair.get("n")), fmt(pair.get("unmatched")),
            f"{fmt(num.get('mean_diff'))} {fmt_ci(num.get('mean_diff_ci'))}",
            fmt(num.get("mae")), fmt(num.get("pearson")), fmt(num.get("spearman")),
            fmt_share(num.get("out_of_tolerance")), fmt_share(cls.get("agreement")),
            fmt(cls.get("kappa"))])
        shape.rows.append([
            name, fmt(pair.get("js_divergence")), fmt(dist.get("psi")),
            f"{fmt(dist.get('ks_stat'))} ({fmt_p(dist.get('ks_p'))})",
            fmt(dist.get("wasserstein")),
            f"{fmt((lat.get('primary') or {}).get('p95'))} / "
            f"{fmt((lat.get('shadow') or {}).get('p95'))}",
            fmt(lat.get("ratio_median")),
            f"{fmt_share(p_err.get('error_rate'))} / {fmt_share(s_err.get('error_rate'))}",
            fmt_share(s_err.get("timeout_rate")), fmt(s_err.get("dropped"))])
    return [outputs, shape] if pairs else []


def _figures(pair: dict[str, Any]) -> Grid:
    num, cls = pair.get("numeric") or {}, pair.get("classes") or {}
    dist, lat = pair.get("distribution") or {}, pair.get("latency_ms") or {}
    rows: list[list[str | Line]] = [
        ["pairs", fmt(pair.get("n")), ""], ["unmatched", fmt(pair.get("unmatched")), ""],
        ["mean diff (shadow - primary)", fmt(num.get("mean_diff")),
         fmt_ci(num.get("mean_diff_ci"))],
        ["MAE / RMSE / max", f"{fmt(num.get('mae'))} / {fmt(num.get('rmse'))} / "
                             f"{fmt(num.get('max_abs'))}", ""],
        ["pearson / spearman", f"{fmt(num.get('pearson'))} / {fmt(num.get('spearman'))}", ""],
        ["out of tolerance", fmt_share(num.get("out_of_tolerance")), ""],
        ["agreement", fmt_share(cls.get("agreement")), fmt_share_ci(cls.get("agreement_ci"))],
        ["kappa", fmt(cls.get("kappa")), ""],
        ["JS divergence", fmt(pair.get("js_divergence")), ""],
        ["PSI", fmt(dist.get("psi")), ""],
        ["KS", fmt(dist.get("ks_stat")), f"p = {fmt_p(dist.get('ks_p'))}"],
        ["Wasserstein / sd", fmt(dist.get("wasserstein")), ""],
        ["latency ratio (median)", fmt(lat.get("ratio_median")), ""],
    ]
    for side in ("primary", "shadow"):
        figures = (pair.get("errors") or {}).get(side) or {}
        rows.append([f"{side} errors", fmt_share(figures.get("error_rate")),
                     fmt_share_ci(figures.get("error_rate_ci"))])
        rows.append([f"{side} timeouts / dropped", f"{fmt_share(figures.get('timeout_rate'))} / "
                                                 f"{fmt(figures.get('dropped'))}", ""])
    return Grid("Figures", (Column("figure", "text"), Column("value"), Column("95% CI")), rows)


def _floor(pair: dict[str, Any]) -> Grid | None:
    floor = pair.get("noise_floor") or {}
    if not floor:
        return None
    flags = set(pair.get("flags") or ())
    num, cls = pair.get("numeric") or {}, pair.get("classes") or {}
    dist = pair.get("distribution") or {}
    agreement = cls.get("agreement")
    candidate = {**num, **dist, "js_divergence": pair.get("js_divergence"),
                 "abs_mean_diff": None if num.get("mean_diff") is None else abs(num["mean_diff"]),
                 "disagreement": None if agreement is None else 1 - agreement}
    rows: list[list[str | Line]] = []
    for metric, level in floor.items():
        if metric == "backends":
            continue
        above = metric in flags
        rows.append([metric, fmt(candidate.get(metric)), fmt(level),
                     Line("above the floor", "bad") if above else Line("")])
    title = "Noise floor from replica " + ", ".join(map(str, floor.get("backends") or []))
    return Grid(title, (Column("metric", "text"), Column("shadow"), Column("replica"),
                        Column("vs floor", "text")), rows)


def _charts(pair: dict[str, Any]) -> list[Any]:
    plots = pair.get("plots") or {}
    charts: list[Any] = []
    hist = plots.get("score_hist")
    if hist and hist.get("edges"):
        charts.append(Histogram("Score distribution", hist["edges"],
                                {str(pair.get("primary")): hist["primary"],
                                 str(pair.get("shadow")): hist["shadow"]}, "score"))
    diff = plots.get("diff_hist")
    if diff and diff.get("edges"):
        charts.append(Histogram("Paired difference (shadow - primary)", diff["edges"],
                                {"shadow - primary": diff["counts"]}, "difference"))
    cdfs = plots.get("latency_cdf") or {}
    series = {str(pair.get(side, side)): (c["x"], c["p"]) for side, c in cdfs.items()
              if c and c.get("x") and all(x is not None for x in c["x"])}
    if series:
        charts.append(Lines("Latency CDF", series, "latency (ms)", "share of calls"))
    return charts


def build(report: dict[str, Any]) -> Document:
    """The divergence document for a ``shadowcar.report.divergence`` dictionary."""
    pairs = list(report.get("pairs") or [])
    routes = {p.get("route") for p in pairs}
    verdict: list[Line] = []
    for pair in pairs:
        if not pair.get("replica"):
            prefix = f"On {pair.get('route')}, " if len(routes) > 1 else ""
            verdict += _verdict(pair, prefix)
    if not verdict:
        verdict.append(Line(report.get("message") or (
            "only replicas were recorded: nothing to compare" if pairs else
            "no primary/shadow pairs were recorded"), "warn"))
    sections = []
    for pair in pairs:
        section = Section(f"{pair.get('route')}: {pair_name(pair)}")
        section.grids.append(_figures(pair))
        floor = _floor(pair)
        if floor is not None:
            section.grids.append(floor)
        section.charts += _charts(pair)
        sections.append(section)
    return Document("divergence", "Divergence report", verdict, _overview(pairs), sections,
                    [f"schema {report.get('schema')}",
                     f"parameters: {fmt_params(report.get('params'))}",
                     "differences are shadow - primary"])
