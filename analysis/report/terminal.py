"""Terminal tables (rich) for the three reports; flags and sample-ratio mismatch in red."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from analysis.report.text import fmt, fmt_ci, fmt_p, fmt_share

__all__ = ["render_table"]


def render_table(report: dict[str, Any], kind: str, *, color: bool = False,
                 width: int = 120) -> str:
    """Render a report dictionary as text tables; ANSI colours only when ``color``."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, color_system="standard" if color else None,
                      width=width, no_color=not color)
    if kind == "divergence":
        _divergence(console, report)
    elif kind == "experiment":
        _experiment(console, report)
    elif kind == "drift":
        _drift(console, report)
    else:
        raise ValueError(f"unknown report kind {kind!r}")
    if report.get("message"):
        console.print(Text(str(report["message"]), style="yellow"))
    return buffer.getvalue()


def _flags(flags: Any) -> Text:
    return Text(", ".join(flags), style="bold red") if flags else Text("")


def _divergence(console: Console, report: dict[str, Any]) -> None:
    outputs = Table(title="Divergence: shadow vs primary outputs", show_lines=False)
    for name in ("route", "primary → shadow", "n", "unmatched", "mean diff [95% CI]", "MAE",
                 "pearson", "spearman", "out of tol", "agreement", "kappa"):
        outputs.add_column(name, overflow="fold")
    shape = Table(title="Distribution and operations")
    for name in ("primary → shadow", "JS", "PSI", "KS (p)", "W1/sd", "p95 ms (P/S)",
                 "lat ratio", "errors (P/S)", "timeouts S", "drops S"):
        shape.add_column(name, overflow="fold")
    notes: list[str] = []
    flagged: list[Text] = []
    for pair in report.get("pairs", []):
        num = pair.get("numeric") or {}
        cls = pair.get("classes") or {}
        dist = pair.get("distribution") or {}
        lat = pair.get("latency_ms") or {}
        err = pair.get("errors") or {}
        p_err, s_err = err.get("primary") or {}, err.get("shadow") or {}
        name = f"{pair.get('primary')} → {pair.get('shadow')}" + (
            " (replica)" if pair.get("replica") else "")
        outputs.add_row(
            pair.get("route"), name, fmt(pair.get("n")), fmt(pair.get("unmatched")),
            f"{fmt(num.get('mean_diff'))} {fmt_ci(num.get('mean_diff_ci'))}",
            fmt(num.get("mae")), fmt(num.get("pearson")), fmt(num.get("spearman")),
            fmt_share(num.get("out_of_tolerance")), fmt_share(cls.get("agreement")),
            fmt(cls.get("kappa")),
        )
        if pair.get("flags"):
            flagged.append(Text(f"{name} exceeds the replica noise floor on: "
                                + ", ".join(pair["flags"]), style="bold red"))
        shape.add_row(
            name, fmt(pair.get("js_divergence")), fmt(dist.get("psi")),
            f"{fmt(dist.get('ks_stat'))} ({fmt_p(dist.get('ks_p'))})", fmt(dist.get("wasserstein")),
            f"{fmt((lat.get('primary') or {}).get('p95'))} / "
            f"{fmt((lat.get('shadow') or {}).get('p95'))}",
            fmt(lat.get("ratio_median")),
            f"{fmt_share(p_err.get('error_rate'))} / {fmt_share(s_err.get('error_rate'))}",
            fmt_share(s_err.get("timeout_rate")), fmt(s_err.get("dropped")),
        )
        for part in (pair, num, cls, dist):
            if part.get("message"):
                notes.append(f"{name}: {part['message']}")
    console.print(outputs)
    console.print(shape)
    for line in flagged:
        console.print(line)
    for note in notes:
        console.print(Text(note, style="yellow"))


def _experiment(console: Console, report: dict[str, Any]) -> None:
    if not report.get("experiments"):
        console.print(Text("no experiment found in the source", style="yellow"))
    for exp in report.get("experiments", []):
        srm = exp.get("srm") or {}
        line = Text(f"Experiment {exp.get('name')}: sample ratio p = {fmt_p(srm.get('p_value'))} "
                    f"counts {srm.get('counts')}")
        if srm.get("flag"):
            line = Text(f"SAMPLE RATIO MISMATCH — {line.plain}; results below are suspect",
                        style="bold red")
        console.print(line)
        table = Table(title=f"{exp.get('name')}: effects vs control")
        for name in ("metric", "variant", "n (C/V)", "mean (C/V)", "abs effect [95% CI]",
                     "rel effect [95% CI]", "p", "p Holm", "p BH", "method"):
            table.add_column(name, overflow="fold")
        notes: list[str] = []
        for row in exp.get("results", []):
            p_holm = row.get("p_value_holm")
            style = "bold red" if p_holm is not None and p_holm < 0.05 else ""
            table.add_row(
                row.get("metric"), f"{row.get('variant')} vs {row.get('control')}",
                f"{fmt(row.get('n_control'))} / {fmt(row.get('n_variant'))}",
                f"{fmt(row.get('mean_control'))} / {fmt(row.get('mean_variant'))}",
                f"{fmt(row.get('abs_effect'))} {fmt_ci(row.get('abs_ci'))}",
                f"{fmt_share(row.get('rel_effect'))} {_ci_share(row.get('rel_ci'))}",
                fmt_p(row.get("p_value")), Text(fmt_p(p_holm), style=style),
                fmt_p(row.get("p_value_bh")), fmt(row.get("method")),
            )
            if row.get("message"):
                notes.append(f"{row.get('metric')}/{row.get('variant')}: {row['message']}")
        console.print(table)
        for note in notes:
            console.print(Text(note, style="yellow"))


def _ci_share(ci: Any) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f"[{fmt_share(ci[0])}, {fmt_share(ci[1])}]"


def _drift(console: Console, report: dict[str, Any]) -> None:
    ref, cur = report.get("reference") or {}, report.get("current") or {}
    console.print(f"Reference {ref.get('since')} → {ref.get('until')}; "
                  f"current {cur.get('since')} → {cur.get('until')}")
    table = Table(title="Input drift per feature")
    for name in ("route", "feature", "kind", "n (R/C)", "null (R/C)", "PSI", "KS (p)",
                 "chi² (p)", "out of range (R/C)", "unseen", "flags"):
        table.add_column(name, overflow="fold")
    notes: list[str] = []
    for f in report.get("features", []):
        table.add_row(
            f.get("route"), f.get("feature"), f.get("kind"),
            f"{fmt(f.get('n_reference'))} / {fmt(f.get('n_current'))}",
            f"{fmt_share(f.get('null_rate_reference'))} / {fmt_share(f.get('null_rate_current'))}",
            fmt(f.get("psi")), f"{fmt(f.get('ks_stat'))} ({fmt_p(f.get('ks_p'))})",
            f"{fmt(f.get('chi2'))} ({fmt_p(f.get('chi2_p'))})",
            f"{fmt_share(f.get('out_of_range_reference'))} / "
            f"{fmt_share(f.get('out_of_range_current'))}",
            ", ".join(f.get("unseen_categories") or []), _flags(f.get("flags")),
        )
        if f.get("message"):
            notes.append(f"{f.get('feature')}: {f['message']}")
    console.print(table)
    for note in notes:
        console.print(Text(note, style="yellow"))
