"""A report as a person reads it, before any format: the verdict, sections of tables and
charts, then every note, warning and method found in the report dictionary.

Each report kind builds one :class:`Document` from its ``to_dict()`` (``*_page.py``); the
terminal and HTML renderers only lay it out, so both say the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Bars", "Chart", "Column", "Document", "Forest", "Grid", "Histogram", "Line",
           "Lines", "Section", "Tone", "as_dict", "constant_names", "plain"]

#: How a line or cell stands out: ``bad`` red, ``good`` green, ``warn`` amber, ``key`` bold.
Tone = Literal["", "bad", "good", "warn", "key"]


@dataclass(frozen=True)
class Line:
    """One sentence, with its tone."""

    text: str
    tone: Tone = ""


@dataclass(frozen=True)
class Column:
    """A table column: ``num`` cells never wrap, ``name`` cells may be shortened (legend),
    ``text`` cells may wrap between words."""

    title: str
    kind: Literal["num", "name", "text"] = "num"


@dataclass(frozen=True)
class Grid:
    """A table; a cell is a string or a :class:`Line` (a string with a tone)."""

    title: str
    columns: tuple[Column, ...]
    rows: list[list[str | Line]]


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a dictionary, else an empty one (a report field may be null)."""
    return value if isinstance(value, dict) else {}


def plain(value: str | Line) -> str:
    """A cell's text."""
    return value.text if isinstance(value, Line) else value


def constant_names(grid: Grid) -> Grid:
    """Name columns with one value in every row move into the title."""
    keep = [i for i, c in enumerate(grid.columns)
            if c.kind != "name" or len({plain(r[i]) for r in grid.rows}) != 1 or not grid.rows]
    if len(keep) == len(grid.columns) or not keep:
        return grid
    moved = [f"{c.title} {plain(grid.rows[0][i])}" for i, c in enumerate(grid.columns)
             if i not in keep]
    return Grid(f"{grid.title} ({'; '.join(moved)})", tuple(grid.columns[i] for i in keep),
                [[row[i] for i in keep] for row in grid.rows])


@dataclass(frozen=True)
class Histogram:
    """Histograms on shared ``edges``, each series drawn as shares of its own total."""

    title: str
    edges: Sequence[float]
    series: dict[str, Sequence[float]]
    xlabel: str = ""


@dataclass(frozen=True)
class Lines:
    """Curves of (x values, y values); ``dashed`` names reference curves. ``dates`` says the
    x values are ISO timestamps."""

    title: str
    series: dict[str, tuple[Sequence[Any], Sequence[float]]]
    xlabel: str = ""
    ylabel: str = ""
    dashed: tuple[str, ...] = ()
    dates: bool = False


@dataclass(frozen=True)
class Bars:
    """Horizontal bars; ``highlight`` bars in red, ``threshold`` as a dashed line."""

    title: str
    labels: Sequence[str]
    values: Sequence[float]
    highlight: Sequence[bool] = ()
    threshold: float | None = None
    xlabel: str = ""


@dataclass(frozen=True)
class Forest:
    """Estimates with intervals as (label, estimate, low, high) around a line at zero."""

    title: str
    rows: Sequence[tuple[str, float, float, float]]
    xlabel: str = ""
    percent: bool = False


Chart = Histogram | Lines | Bars | Forest


@dataclass
class Section:
    """A heading, sentences, tables and charts about one pair, experiment or model set."""

    title: str
    lines: list[Line] = field(default_factory=list)
    grids: list[Grid] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)


@dataclass
class Document:
    """The whole report: the ``verdict`` first, then the evidence: ``summary`` tables (every
    format), ``sections`` with detail tables and charts (HTML); ``about`` says what was read
    (schema, parameters). Notes come from :func:`analysis.report.notes.collect`."""

    kind: str
    title: str
    verdict: list[Line]
    summary: list[Grid] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    about: list[str] = field(default_factory=list)
