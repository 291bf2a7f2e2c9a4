"""Charts of the HTML report, drawn by matplotlib and embedded as inline SVG.

matplotlib is imported here only, when a chart is drawn: the serving process never loads it.
Figures are made without pyplot on the Agg canvas (no display, no global figure state) and
saved as SVG with text kept as text (small files, searchable) and fixed ids (the same report
gives the same file). Legends sit outside the axes, so they never cover a curve.
"""

from __future__ import annotations

import io
import re
from datetime import datetime
from typing import Any

from analysis.report.document import Bars, Chart, Forest, Histogram, Lines

__all__ = ["svg"]

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_BAD = "#d62728"
_RC: dict[str, Any] = {
    "svg.fonttype": "none", "svg.hashsalt": "shadowcar", "font.size": 9.0,
    "font.family": "sans-serif", "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.color": "#e6e6e6", "grid.linewidth": 0.6,
    "axes.edgecolor": "#888888", "axes.titlesize": 10.5, "axes.titleweight": "bold",
    "legend.frameon": False, "path.simplify": True,
}
_WIDTH, _HEIGHT = 6.4, 3.1


def _figure(height: float = _HEIGHT) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(_WIDTH, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _legend(figure: Any, ax: Any, extra: tuple[Any, ...] = ()) -> None:
    handles, labels = ax.get_legend_handles_labels()
    handles, labels = [*handles, *extra], [*labels, *(h.get_label() for h in extra)]
    if handles:
        # As many per row as fit the figure's width, so a long name never runs off it.
        per_row = max(1, min(len(labels), 4, 90 // max(len(max(labels, key=len)) + 6, 1)))
        figure.legend(handles, labels, loc="outside lower center", ncols=per_row)


def _histogram(figure: Any, chart: Histogram) -> None:
    ax = figure.add_subplot()
    edges = [float(e) for e in chart.edges]
    for i, (name, counts) in enumerate(chart.series.items()):
        total = float(sum(counts)) or 1.0
        shares = [c / total for c in counts]
        colour = _PALETTE[i % len(_PALETTE)]
        ax.stairs(shares, edges, fill=True, alpha=0.25, color=colour)
        ax.stairs(shares, edges, color=colour, linewidth=1.4, label=name)
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel("share")
    ax.yaxis.set_major_formatter(_percent())
    _legend(figure, ax)


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=None)


def _lines(figure: Any, chart: Lines) -> None:
    ax = figure.add_subplot()
    colour = 0
    for name, (xs, ys) in chart.series.items():
        x = [datetime.fromisoformat(v) if isinstance(v, str) else v for v in xs] \
            if chart.dates else [float(v) for v in xs]
        if name in chart.dashed:
            ax.plot(x, ys, linestyle="--", color="#999999", linewidth=1, label=name)
            continue
        ax.plot(x, ys, color=_PALETTE[colour % len(_PALETTE)], linewidth=1.6,
                marker="o" if len(x) <= 12 else None, markersize=3, label=name)
        colour += 1
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    if chart.dates:
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

        locator = AutoDateLocator()  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    _legend(figure, ax)


def _bars(figure: Any, chart: Bars) -> None:
    ax = figure.add_subplot()
    labels = list(chart.labels)[::-1]
    values = list(chart.values)[::-1]
    red = [i < len(chart.highlight) and chart.highlight[i] for i in range(len(chart.labels))]
    colours = [_BAD if r else _PALETTE[0] for r in red][::-1]
    ax.barh(labels, values, color=colours, height=0.6)
    top = max([*values, chart.threshold or 0.0, 0.0])
    ax.set_xlim(0.0, top * 1.08 if top > 0 else 1.0)  # bars start at zero, all-zero bars too
    ax.grid(axis="y", visible=False)
    if chart.threshold is not None:
        ax.axvline(chart.threshold, color=_BAD, linestyle="--", linewidth=1,
                   label=f"threshold {chart.threshold:g}")
    ax.set_xlabel(chart.xlabel)
    from matplotlib.patches import Patch

    _legend(figure, ax, (Patch(color=_BAD, label="flagged"),) if any(red) else ())


def _forest(figure: Any, chart: Forest) -> None:
    ax = figure.add_subplot()
    ys = list(range(len(chart.rows)))[::-1]
    for y, (_, est, low, high) in zip(ys, chart.rows, strict=True):
        colour = _PALETTE[0] if low <= 0 <= high else _BAD
        ax.errorbar([est], [y], xerr=[[est - low], [high - est]], fmt="o", color=colour,
                    capsize=3, markersize=5, linewidth=1.6)
    ax.axvline(0, color="#777777", linestyle="--", linewidth=1)
    ax.set_yticks(ys, [label for label, *_ in chart.rows])
    ax.set_ylim(-0.7, len(chart.rows) - 0.3)
    ax.grid(axis="y", visible=False)
    if chart.percent:
        ax.xaxis.set_major_formatter(_percent())
    ax.set_xlabel(chart.xlabel)


_PATH = re.compile(r'\bd="([^"]*)"')
_DECIMALS = re.compile(r"(-?\d+\.\d)\d+")


def _compact(path: str) -> str:
    """Path data at a tenth of a point (invisible on screen) on one line: half the bytes."""
    return " ".join(_DECIMALS.sub(r"\1", path).split())


def svg(chart: Chart) -> str:
    """One chart as an ``<svg>`` element (no XML prolog, no fixed pixel size)."""
    import matplotlib

    rows = len(chart.labels) if isinstance(chart, Bars) else (
        len(chart.rows) if isinstance(chart, Forest) else 0)
    height = max(_HEIGHT, 1.0 + 0.28 * rows) if rows else _HEIGHT
    with matplotlib.rc_context(_RC):  # type: ignore[arg-type]  # keys are checked at run time
        figure = _figure(height)
        if isinstance(chart, Histogram):
            _histogram(figure, chart)
        elif isinstance(chart, Lines):
            _lines(figure, chart)
        elif isinstance(chart, Bars):
            _bars(figure, chart)
        else:
            _forest(figure, chart)
        figure.suptitle(chart.title, fontweight="bold", fontsize=10.5)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    # Inline in HTML the parser sets the SVG and xlink namespaces itself: the declarations
    # and the RDF metadata go, so the file names no URL at all. The fixed size goes too (the
    # viewBox stays), so a chart scales with the page.
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    text = _PATH.sub(lambda m: 'd="' + _compact(m.group(1)) + '"', text)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", text, count=1)
