"""The experiment report as a document: the sample-ratio check first (a broken split makes
every effect suspect), then what each variant changed, then the evidence."""

from __future__ import annotations

from typing import Any

from analysis.report.document import Column, Document, Forest, Grid, Line, Section, as_dict
from analysis.report.text import fmt, fmt_ci, fmt_counts, fmt_p, fmt_params, fmt_share

__all__ = ["build"]

_ALPHA = 0.05


def _share_ci(ci: Any) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f"[{fmt_share(ci[0])}, {fmt_share(ci[1])}]"


def _srm_line(exp: dict[str, Any]) -> Line:
    srm = exp.get("srm") or {}
    text = (f"sample ratio p = {fmt_p(srm.get('p_value'))}; units {fmt_counts(srm.get('counts'))}"
            f"; expected {fmt_counts(srm.get('expected_share'), share=True)}")
    if srm.get("flag"):
        return Line(f"SAMPLE RATIO MISMATCH in {exp.get('name')}: {text}. The assignment is "
                    "broken; treat the results below as suspect.", "bad")
    if srm.get("p_value") is None:
        return Line(f"{exp.get('name')}: the split could not be checked ({text}).", "warn")
    return Line(f"{exp.get('name')}: the split matches the expected weights ({text}).")


def _effect_line(row: dict[str, Any], alpha: float, family: int = 1) -> Line:
    metric, variant, control = row.get("metric"), row.get("variant"), row.get("control")
    raw = row.get("p_value")
    p = row.get("p_value_holm") if row.get("p_value_holm") is not None else raw
    rel, abs_effect = row.get("rel_effect"), row.get("abs_effect")
    if p is None or abs_effect is None:
        return Line(f"{metric}: {variant} vs {control} could not be tested"
                    + (f" ({row['message']})" if row.get("message") else ""), "warn")
    size = (f"{fmt_share(abs(rel))} {_share_ci(row.get('rel_ci'))}" if rel is not None
            else f"{fmt(abs(abs_effect))} {fmt_ci(row.get('abs_ci'))}")
    means = f"{fmt(row.get('mean_control'))} → {fmt(row.get('mean_variant'))}"
    if p < alpha:
        verb = "raises" if abs_effect > 0 else "lowers"
        return Line(f"{variant} {verb} {metric} by {size} against {control} ({means}; "
                    f"p Holm = {fmt_p(p)}, {row.get('method')}).", "key")
    if raw is not None and raw < alpha:
        # The interval shown beside it is the comparison's own (95 %, not adjusted) and
        # excludes no effect: say why the verdict still reads "no difference".
        return Line(f"{variant} vs {control} on {metric}: {size} ({means}) is significant "
                    f"alone (p = {fmt_p(raw)}) but not after the Holm correction for "
                    f"{family} comparisons (p Holm = {fmt_p(p)}, {row.get('method')}); "
                    "treat it as a lead to confirm, not a result.", "warn")
    return Line(f"No detectable difference in {metric} between {variant} and {control} "
                f"({means}; p Holm = {fmt_p(p)}, {row.get('method')}).")


def _effects(exp: dict[str, Any]) -> Grid:
    grid = Grid(f"{exp.get('name')}: effects vs control", (
        Column("metric", "name"), Column("variant", "name"), Column("n (C/V)"),
        Column("mean (C/V)"), Column("abs effect [95% CI]"), Column("rel effect [95% CI]"),
        Column("p"), Column("p Holm"), Column("p BH"), Column("method", "text")), [])
    for row in exp.get("results") or []:
        p_holm = row.get("p_value_holm")
        grid.rows.append([
            str(row.get("metric")), f"{row.get('variant')} vs {row.get('control')}",
            f"{fmt(row.get('n_control'))} / {fmt(row.get('n_variant'))}",
            f"{fmt(row.get('mean_control'))} / {fmt(row.get('mean_variant'))}",
            f"{fmt(row.get('abs_effect'))} {fmt_ci(row.get('abs_ci'))}",
            f"{fmt_share(row.get('rel_effect'))} {_share_ci(row.get('rel_ci'))}".strip(),
            fmt_p(row.get("p_value")),
            Line(fmt_p(p_holm), "bad" if p_holm is not None and p_holm < _ALPHA else ""),
            fmt_p(row.get("p_value_bh")), fmt(row.get("method"))])
    return grid


def _split(exp: dict[str, Any]) -> Grid:
    srm = exp.get("srm") or {}
    counts, expected = as_dict(srm.get("counts")), as_dict(srm.get("expected_share"))
    total = float(sum(v for v in counts.values() if isinstance(v, int | float)))
    rows: list[list[str | Line]] = [
        [str(name), fmt(counts.get(name)),
         fmt_share(counts[name] / total) if total and counts.get(name) is not None else "—",
         fmt_share(expected.get(name))]
        for name in [*counts, *(k for k in expected if k not in counts)]]
    return Grid("Units per variant", (Column("variant", "name"), Column("units"),
                                      Column("observed share"), Column("expected share")), rows)


def _forest(exp: dict[str, Any]) -> Forest | None:
    rows = []
    for r in exp.get("results") or []:
        ci = r.get("rel_ci") or [None, None]
        if r.get("rel_effect") is not None and None not in ci:
            rows.append((f"{r.get('metric')}: {r.get('variant')}", float(r["rel_effect"]),
                         float(ci[0]), float(ci[1])))
    if not rows:
        return None
    return Forest("Relative effect with 95% CI", rows, "effect relative to the control mean",
                  percent=True)


_WORSE_WHEN_HIGHER = frozenset({"error_rate", "latency_ms_mean"})


def _step_name(step: dict[str, Any]) -> str:
    index = step.get("index")
    name = "one step" if index is None else f"step {int(index) + 1}"
    return name + (f" ({fmt(step['share'])}%)" if step.get("share") is not None else "")


def _canary_lines(route: dict[str, Any], alpha: float) -> list[Line]:
    """What the newest step of one route's canary says: candidate against stable."""
    steps = route.get("steps") or []
    if not steps:
        return [Line(f"Canary on {route.get('route')}: no step was recorded"
                     + (f" ({route['message']})" if route.get("message") else ""), "warn")]
    step = steps[-1]
    stable, candidate = route.get("stable") or "stable", route.get("candidate") or "candidate"
    head = f"Canary on {route.get('route')}, {_step_name(step)}"
    lines, same = [], []
    for r in step.get("results") or []:
        p, effect = r.get("p_value"), r.get("abs_effect")
        if p is None or effect is None or p >= alpha:
            same.append(str(r.get("metric")))
            continue
        metric = str(r.get("metric"))
        worse = metric in _WORSE_WHEN_HIGHER and effect > 0
        size = (f"{fmt_share(abs(r['rel_effect']))} {_share_ci(r.get('rel_ci'))}"
                if r.get("rel_effect") is not None else fmt(abs(effect)))
        lines.append(Line(f"{head}: {candidate} {'raises' if effect > 0 else 'lowers'} {metric} "
                          f"by {size} against {stable} ({fmt(r.get('mean_control'))} → "
                          f"{fmt(r.get('mean_variant'))}; p = {fmt_p(p)}).",
                          "bad" if worse else "key"))
    if same:
        lines.append(Line(f"{head}: no detectable difference between {candidate} and {stable} "
                          f"in {', '.join(same)}."))
    return lines


def _canary_grid(route: dict[str, Any]) -> Grid:
    grid = Grid(f"Canary {route.get('route')}: {route.get('candidate')} (candidate) vs "
                f"{route.get('stable')} (stable), per step", (
                    Column("step", "name"), Column("units (S/C)"), Column("metric", "name"),
                    Column("stable"), Column("candidate"), Column("effect [95% CI]"),
                    Column("rel effect [95% CI]"), Column("p"), Column("method", "text")), [])
    for step in route.get("steps") or []:
        units = as_dict(step.get("units"))
        for r in step.get("results") or []:
            p = r.get("p_value")
            grid.rows.append([
                _step_name(step), f"{fmt(units.get('stable'))} / {fmt(units.get('candidate'))}",
                str(r.get("metric")), fmt(r.get("mean_control")), fmt(r.get("mean_variant")),
                f"{fmt(r.get('abs_effect'))} {fmt_ci(r.get('abs_ci'))}",
                f"{fmt_share(r.get('rel_effect'))} {_share_ci(r.get('rel_ci'))}".strip(),
                Line(fmt_p(p), "key" if p is not None and p < _ALPHA else ""),
                fmt(r.get("method"))])
    return grid


def build(report: dict[str, Any]) -> Document:
    """The experiment document for a ``shadowcar.report.experiment`` dictionary."""
    settings = report.get("settings") or {}
    alpha = float(settings.get("alpha") or _ALPHA)
    verdict: list[Line] = []
    summary: list[Grid] = []
    sections: list[Section] = []
    for exp in report.get("experiments") or []:
        verdict.append(_srm_line(exp))
        results = exp.get("results") or []
        tested = sum(1 for r in results if r.get("p_value") is not None)
        verdict += [_effect_line(row, alpha, tested) for row in results]
        summary.append(_effects(exp))
        section = Section(str(exp.get("name")), grids=[_split(exp)])
        forest = _forest(exp)
        if forest is not None:
            section.charts.append(forest)
        sections.append(section)
    for route in as_dict(report.get("canaries")).get("routes") or []:
        verdict += _canary_lines(route, alpha)
        summary.append(_canary_grid(route))
    if not verdict:
        verdict.append(Line(report.get("message") or "no experiment found in the source",
                            "warn"))
    return Document("experiment", "Experiment report", verdict, summary, sections,
                    [f"schema {report.get('schema')}", f"settings: {fmt_params(settings)}",
                     "effects are variant - control; relative effects are divided by the "
                     "control mean"])
