"""One self-contained HTML file per report: the verdict first, then the evidence.

Inline CSS and inline SVG charts (matplotlib, :mod:`analysis.report.plots`): nothing is
fetched when the file is opened, no scripts, fonts or styles from elsewhere.
"""

from __future__ import annotations

from html import escape
from typing import Any

from analysis.report.document import Document, Grid, Line, Section, constant_names
from analysis.report.notes import collect, places

__all__ = ["CSS", "render_document", "render_html"]

CSS = """
:root { --bad: #b42318; --good: #067647; --warn: #b54708; --ink: #1d2939; --muted: #667085;
        --line: #e4e7ec; --soft: #f9fafb; }
* { box-sizing: border-box; }
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0; background: #f2f4f7; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; }
h3 { font-size: 14px; margin: 16px 0 6px; color: var(--muted); }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 16px 20px;
        margin: 14px 0; box-shadow: 0 1px 2px rgba(16, 24, 40, .05); }
.verdict p { font-size: 16px; margin: 6px 0; padding-left: 12px;
             border-left: 4px solid var(--line); }
.verdict p.bad { border-color: var(--bad); color: var(--bad); font-weight: 600; }
.verdict p.good { border-color: var(--good); color: var(--good); }
.verdict p.warn { border-color: var(--warn); color: var(--warn); }
.verdict p.key { border-color: var(--ink); font-weight: 600; }
.notes ul { margin: 4px 0; padding-left: 20px; } .notes li { margin: 3px 0; }
.notes .kind { font-weight: 600; text-transform: uppercase; font-size: 11px; color: var(--muted); }
.notes .warning .kind { color: var(--warn); } .where { color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: right;
         white-space: nowrap; font-variant-numeric: tabular-nums; }
th { background: var(--soft); font-weight: 600; }
td.name, th.name, td.text, th.text { text-align: left; }
td.text { white-space: normal; }
tbody tr:nth-child(even) td { background: #fcfcfd; }
.bad { color: var(--bad); font-weight: 600; } .good { color: var(--good); }
.warn { color: var(--warn); } .key { font-weight: 600; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 12px; }
figure.chart { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px;
               padding: 6px; }
figure.chart svg { width: 100%; height: auto; display: block; }
.about { color: var(--muted); font-size: 12px; }
"""


def _cell(value: str | Line, kind: str) -> str:
    if isinstance(value, Line):
        text, tone = value.text, value.tone
    else:
        text, tone = value, ""
    classes = " ".join(c for c in (kind if kind != "num" else "", tone) if c)
    attr = f' class="{classes}"' if classes else ""
    return f"<td{attr}>{escape(text)}</td>"


def _grid(grid: Grid) -> str:
    grid = constant_names(grid)
    head = "".join(f'<th class="{c.kind}">{escape(c.title)}</th>' for c in grid.columns)
    body = "".join("<tr>" + "".join(_cell(v, c.kind) for c, v in zip(grid.columns, row,
                                                                     strict=True)) + "</tr>"
                   for row in grid.rows)
    return (f'<div class="scroll"><table><caption>{escape(grid.title)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _line(line: Line) -> str:
    attr = f' class="{line.tone}"' if line.tone else ""
    return f"<p{attr}>{escape(line.text)}</p>"


#: Bytes of charts one file may carry; later sections keep their tables but not their charts,
#: so a report of many pairs or segments stays one file a mail or a ticket takes (< 2 MB).
CHART_BUDGET = 1_500_000


def _section(section: Section, budget: list[int]) -> str:
    from analysis.report.plots import svg

    parts = [f'<section class="card"><h2>{escape(section.title)}</h2>']
    parts += [_line(line) for line in section.lines]
    parts += [_grid(grid) for grid in section.grids]
    charts = []
    for chart in section.charts:
        drawn = svg(chart) if budget[0] > 0 else ""
        budget[0] -= len(drawn)
        if drawn and budget[0] >= 0:
            charts.append(f'<figure class="chart" data-chart="{escape(chart.title)}">{drawn}'
                          "</figure>")
    if charts:
        parts.append('<div class="charts">' + "".join(charts) + "</div>")
    if len(charts) < len(section.charts):
        parts.append(_line(Line("Charts of this section left out to keep the file under "
                                "2 MB; its tables above are complete.", "warn")))
    parts.append("</section>")
    return "\n".join(parts)


def _notes(report: dict[str, Any]) -> str:
    notes = collect(report)
    if not notes:
        return ""
    items = "".join(
        f'<li class="{n.kind}"><span class="kind">{n.kind}</span> {escape(n.text)}'
        + (f' <span class="where">— {escape(places(n))}</span>' if n.where else "")
        + "</li>" for n in notes)
    return f'<section class="card notes"><h2>Notes and methods</h2><ul>{items}</ul></section>'


def render_document(doc: Document, report: dict[str, Any]) -> str:
    """The whole HTML document: verdict, notes, summary tables, sections, what was read."""
    verdict = "".join(_line(line) for line in doc.verdict)
    summary = "".join(_grid(grid) for grid in doc.summary)
    about = "".join(f"<p>{escape(line)}</p>" for line in doc.about)
    title = f"Shadowcar {escape(doc.title.lower())}"
    budget = [CHART_BUDGET]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{title}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{escape(doc.title)}</h1>"
            f'<section class="card verdict" id="verdict">{verdict}</section>'
            + _notes(report)
            + (f'<section class="card"><h2>Summary</h2>{summary}</section>' if summary else "")
            + "\n".join(_section(s, budget) for s in doc.sections)
            + f'<footer class="about">{about}</footer></main></body></html>\n')


def render_html(report: dict[str, Any], kind: str) -> str:
    """The whole document for one report dictionary."""
    from analysis.report.pages import build

    return render_document(build(report, kind), report)
