"""Small inline SVG charts for the HTML report: histograms, lines, bars and forest plots.

Hand-written so the report stays one file with no plotting dependency and no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["bar_chart", "forest_plot", "histogram", "line_chart"]

WIDTH, HEIGHT = 560, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 28, 36
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _num(x: float) -> str:
    return f"{x:.4g}"


class _Frame:
    """Maps data coordinates onto the plotting area of one chart."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float,
                 width: int = WIDTH, height: int = HEIGHT) -> None:
        if x1 <= x0:
            x0, x1 = x0 - 0.5, x1 + 0.5
        if y1 <= y0:
            y0, y1 = y0 - 0.5, y1 + 0.5
        self.x0, self.x1, self.y0, self.y1 = x0, x1, y0, y1
        self.width, self.height = width, height

    def x(self, value: float) -> float:
        span = self.width - _LEFT - _RIGHT
        return _LEFT + (value - self.x0) / (self.x1 - self.x0) * span

    def y(self, value: float) -> float:
        span = self.height - _TOP - _BOTTOM
        return self.height - _BOTTOM - (value - self.y0) / (self.y1 - self.y0) * span

    def open(self, title: str) -> list[str]:
        w, h = self.width, self.height
        return [
            f'<svg width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" role="img" aria-label="{escape(title)}">',
            f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
            f'<line x1="{_LEFT}" y1="{h - _BOTTOM}" x2="{w - _RIGHT}" y2="{h - _BOTTOM}" '
            'stroke="#444"/>',
            f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{h - _BOTTOM}" stroke="#444"/>',
        ]

    def ticks(self, *, x: bool = True, y: bool = True) -> list[str]:
        parts: list[str] = []
        for k in range(5):
            if x:
                xv = self.x0 + (self.x1 - self.x0) * k / 4
                parts.append(f'<text x="{self.x(xv):.1f}" y="{self.height - _BOTTOM + 14}" '
                             f'text-anchor="middle" font-size="10">{_num(xv)}</text>')
            if y:
                yv = self.y0 + (self.y1 - self.y0) * k / 4
                parts.append(f'<text x="{_LEFT - 4}" y="{self.y(yv) + 3:.1f}" text-anchor="end" '
                             f'font-size="10">{_num(yv)}</text>')
        return parts


def _legend(names: Sequence[str], width: int = WIDTH) -> list[str]:
    parts = []
    for i, name in enumerate(names):
        x = width - _RIGHT - 150
        y = _TOP + 4 + 14 * i
        parts.append(f'<rect x="{x}" y="{y}" width="10" height="10" '
                     f'fill="{PALETTE[i % len(PALETTE)]}" fill-opacity="0.6"/>')
        parts.append(f'<text x="{x + 14}" y="{y + 9}" font-size="11">{escape(name)}</text>')
    return parts


def histogram(edges: Sequence[float], series: dict[str, Sequence[float]], title: str) -> str:
    """Overlaid histograms on shared ``edges``; each series is drawn as shares of its total."""
    shares = {name: [c / (sum(counts) or 1) for c in counts] for name, counts in series.items()}
    top = max((max(v) for v in shares.values() if v), default=1.0)
    frame = _Frame(float(edges[0]), float(edges[-1]), 0.0, top * 1.05)
    parts = frame.open(title) + frame.ticks()
    for i, values in enumerate(shares.values()):
        colour = PALETTE[i % len(PALETTE)]
        for k, share in enumerate(values):
            left, right = frame.x(float(edges[k])), frame.x(float(edges[k + 1]))
            y = frame.y(share)
            parts.append(f'<rect x="{left:.1f}" y="{y:.1f}" width="{max(right - left, 0.5):.1f}" '
                         f'height="{frame.y(0) - y:.1f}" fill="{colour}" fill-opacity="0.45"/>')
    parts += _legend(list(shares))
    return "\n".join([*parts, "</svg>"])


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str) -> str:
    """Polylines, one per series of (x values, y values)."""
    xs = [x for values, _ in series.values() for x in values]
    ys = [y for _, values in series.values() for y in values]
    if not xs:
        return ""
    frame = _Frame(min(xs), max(xs), min(0.0, min(ys)), max(ys))
    parts = frame.open(title) + frame.ticks()
    for i, (xv, yv) in enumerate(series.values()):
        points = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in zip(xv, yv, strict=True))
        parts.append(f'<polyline fill="none" stroke="{PALETTE[i % len(PALETTE)]}" '
                     f'stroke-width="2" points="{points}"/>')
    parts += _legend(list(series))
    return "\n".join([*parts, "</svg>"])


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, *,
              highlight: Sequence[bool] = (), threshold: float | None = None) -> str:
    """Horizontal bars, one per label; highlighted bars are red, a threshold is dashed."""
    rows = max(len(labels), 1)
    height = _TOP + _BOTTOM + 18 * rows
    left = 150
    top = max([*values, threshold or 0.0, 1e-12])
    span = WIDTH - left - _RIGHT
    parts = [
        f'<svg width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = _TOP + 18 * i
        red = i < len(highlight) and highlight[i]
        parts.append(f'<text x="{left - 4}" y="{y + 12}" text-anchor="end" font-size="11">'
                     f"{escape(label)}</text>")
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{max(value, 0) / top * span:.1f}" '
                     f'height="13" fill="{"#d62728" if red else PALETTE[0]}"/>')
        parts.append(f'<text x="{left + max(value, 0) / top * span + 3:.1f}" y="{y + 12}" '
                     f'font-size="10">{_num(value)}</text>')
    if threshold is not None:
        x = left + threshold / top * span
        parts.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{height - _BOTTOM}" '
                     'stroke="#d62728" stroke-dasharray="4 3"/>')
    return "\n".join([*parts, "</svg>"])


def forest_plot(rows: Sequence[tuple[str, float, float, float]], title: str) -> str:
    """Estimates with 95% intervals as (label, estimate, low, high), with a line at zero."""
    if not rows:
        return ""
    height = _TOP + _BOTTOM + 24 * len(rows)
    left = 190
    lows = [r[2] for r in rows] + [0.0]
    highs = [r[3] for r in rows] + [0.0]
    x0, x1 = min(lows), max(highs)
    pad = (x1 - x0) * 0.05 or 0.5
    x0, x1 = x0 - pad, x1 + pad
    span = WIDTH - left - _RIGHT

    def x(value: float) -> float:
        return left + (value - x0) / (x1 - x0) * span

    parts = [
        f'<svg width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<line x1="{x(0):.1f}" y1="{_TOP}" x2="{x(0):.1f}" y2="{height - _BOTTOM}" '
        'stroke="#888" stroke-dasharray="3 3"/>',
    ]
    for i, (label, est, low, high) in enumerate(rows):
        y = _TOP + 24 * i + 12
        colour = PALETTE[0] if low <= 0 <= high else "#d62728"
        parts += [
            f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" font-size="11">'
            f"{escape(label)}</text>",
            f'<line x1="{x(low):.1f}" y1="{y}" x2="{x(high):.1f}" y2="{y}" stroke="{colour}" '
            'stroke-width="2"/>',
            f'<circle cx="{x(est):.1f}" cy="{y}" r="4" fill="{colour}"/>',
        ]
    for k in range(5):
        value = x0 + (x1 - x0) * k / 4
        parts.append(f'<text x="{x(value):.1f}" y="{height - _BOTTOM + 14}" text-anchor="middle" '
                     f'font-size="10">{_num(value)}</text>')
    return "\n".join([*parts, "</svg>"])
