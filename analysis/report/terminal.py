"""Terminal tables (rich) for every report: the verdict, the tables, every note and method.

Tables take the terminal's width (``COLUMNS`` first, as :func:`shutil.get_terminal_size`
reads it); without a terminal nothing is wrapped. A number never breaks across lines: number
columns do not wrap, long names are shortened with a legend under the table, and a table
still too wide is turned on its side (one column per row) or printed as one block per row.
"""

from __future__ import annotations

import io
import shutil
import textwrap
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from analysis.report.document import Column, Document, Grid, Line, Tone, constant_names
from analysis.report.notes import collect, places

__all__ = ["UNLIMITED", "make_console", "print_grid", "render_document", "render_grid",
           "render_table", "terminal_width"]

#: Width used when nothing limits it (no terminal): tables take their natural width.
UNLIMITED = 100_000
_STYLE: dict[Tone, str] = {"": "", "bad": "bold red", "good": "green", "warn": "yellow",
                           "key": "bold"}
#: Layouts tried in turn when a table does not fit: (longest name kept, turned on its side).
_ATTEMPTS = ((0, False), (40, False), (28, False), (0, True), (40, True), (28, True),
             (20, False), (20, True), (14, False), (14, True))


def terminal_width() -> int | None:
    """``COLUMNS``, else the width of the terminal on stdout; None when there is neither."""
    columns = shutil.get_terminal_size(fallback=(0, 0)).columns
    return columns if columns > 0 else None


def make_console(color: bool = False, width: int | None = None) -> tuple[Console, io.StringIO]:
    """A console writing to a buffer; ``width`` None asks the terminal, 0 means unlimited."""
    width = terminal_width() if width is None else width
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color,
                      color_system="standard" if color else None, width=width or UNLIMITED,
                      no_color=not color, soft_wrap=not width, highlight=False)
    return console, buffer


def _cell(value: str | Line) -> Text:
    if isinstance(value, Line):
        return Text(value.text, style=_STYLE[value.tone])
    return Text(value)


def _plain(value: str | Line) -> str:
    return value.text if isinstance(value, Line) else value


def _shorten(grid: Grid, limit: int) -> tuple[Grid, dict[str, str]]:
    """Names longer than ``limit`` become ``start…end``; the legend maps them back."""
    legend: dict[str, str] = {}
    taken: dict[str, str] = {}
    rows: list[list[str | Line]] = []
    for row in grid.rows:
        out: list[str | Line] = []
        for column, value in zip(grid.columns, row, strict=True):
            text = _plain(value)
            if column.kind != "name" or len(text) <= limit:
                out.append(value)
                continue
            head = (limit - 1) // 3  # the end of a name (method, version) tells most
            alias = text[:head] + "…" + text[len(text) - (limit - 1 - head):]
            for n in range(2, 100):
                if taken.get(alias, text) == text:
                    break
                alias = f"{alias[:limit - 3]}#{n}"
            taken[alias] = text
            legend[alias] = text
            out.append(Line(alias, value.tone) if isinstance(value, Line) else alias)
        rows.append(out)
    return Grid(grid.title, grid.columns, rows), legend


def _needed(grid: Grid) -> int:
    """The narrowest width the table fits in without breaking a number or a word."""
    total = 1
    for i, column in enumerate(grid.columns):
        cells = [_plain(row[i]) for row in grid.rows]
        if column.kind == "num":
            width = max([len(c) for c in cells] + [max(map(len, column.title.split()), default=0)])
        else:
            words = [w for c in cells for w in c.split()] + column.title.split()
            width = min(max(map(len, words), default=1), 24)
        total += width + 3
    return total


def _table(grid: Grid, wrap_headers: bool = True) -> Table:
    # A number column never wraps (rich then never narrows it); its header is wrapped here,
    # between words, to the width of the widest number.
    table = Table(title=grid.title, title_justify="left")
    for i, column in enumerate(grid.columns):
        if column.kind == "num":
            widest = max([len(_plain(row[i])) for row in grid.rows]
                         + [len(w) for w in column.title.split()] + [1])
            title = "\n".join(textwrap.wrap(column.title, widest)) if wrap_headers else ""
            table.add_column(title or column.title, no_wrap=True)
        else:
            table.add_column(column.title, overflow="fold")
    for row in grid.rows:
        table.add_row(*(_cell(v) for v in row))
    return table


def _sideways(grid: Grid) -> Grid:
    """The table turned: one row per column, one column per row (few rows, many columns)."""
    columns = (Column("", "text"), *(Column(_plain(row[0]), "num") for row in grid.rows))
    rows: list[list[str | Line]] = [[column.title, *(row[i] for row in grid.rows)]
                                    for i, column in enumerate(grid.columns[1:], start=1)]
    return Grid(grid.title, columns, rows)


def _fitted(grid: Grid, width: int) -> tuple[Grid, dict[str, str]] | None:
    """The first layout that fits ``width``: the table, names shortened a little, the table
    turned on its side, then names shortened more; None when none fits."""
    grid = constant_names(grid)
    for limit, turned in _ATTEMPTS:
        shortened, legend = _shorten(grid, limit) if limit else (grid, {})
        candidate = _sideways(shortened) if turned else shortened
        if _needed(candidate) <= width:
            return candidate, legend
    return None


def print_grid(console: Console, grid: Grid, width: int | None) -> None:
    """One table at ``width`` (None: unlimited), shortened, turned or split so that it fits."""
    legend: dict[str, str] = {}
    fitted = _fitted(grid, width) if width and _needed(grid) > width else (grid, legend)
    if fitted is not None:
        grid, legend = fitted
        console.print(_table(grid, wrap_headers=bool(width)))
    else:  # as a last resort, one block of "column: value" lines per row
        grid = constant_names(grid)
        console.print(Text(grid.title, style="italic"))
        for row in grid.rows:
            console.print(Text("• ") + _cell(row[0]))
            for column, value in zip(grid.columns[1:], row[1:], strict=True):
                if _plain(value):
                    console.print(Text(f"    {column.title}: ") + _cell(value))
    for alias, name in legend.items():  # the full name on a line of its own when needed
        gap = " " if not width or len(alias) + len(name) + 5 <= width else "\n     "
        console.print(Text(f"  {alias}{gap}= {name}", style="dim"))


def render_document(doc: Document, report: dict[str, Any], *, color: bool = False,
                    width: int | None = None) -> str:
    """The document as text: verdict, tables, then every note, warning and method."""
    console, buffer = make_console(color, width)
    limit = console.width if console.width != UNLIMITED else None
    console.print(Text(doc.title, style="bold underline"))
    for line in doc.verdict:
        console.print(_cell(line))
    for grid in doc.summary:
        console.print()
        print_grid(console, grid, limit)
    notes = collect(report)
    if notes:
        console.print()
        console.print(Text("Notes and methods", style="bold"))
    for note in notes:
        where = f" ({places(note)})" if note.where else ""
        tone: Tone = "warn" if note.kind == "warning" else ""
        console.print(Text(f"{note.kind}: ", style="bold") + _cell(Line(note.text + where, tone)))
    for about in doc.about:
        console.print(Text(about, style="dim"))
    return buffer.getvalue()


def render_table(report: dict[str, Any], kind: str, *, color: bool = False,
                 width: int | None = None) -> str:
    """Render a report dictionary as text; ANSI colours only when ``color``. ``width`` None
    takes the terminal's, 0 is unlimited."""
    from analysis.report.pages import build

    return render_document(build(report, kind), report, color=color, width=width)


def render_grid(grid: Grid, *, color: bool = False, width: int | None = None) -> str:
    """One table as text at the terminal's width (``width`` None), or unlimited (0): for
    commands that print a table of their own (``sidecar models``)."""
    console, buffer = make_console(color, width)
    print_grid(console, grid, console.width if console.width != UNLIMITED else None)
    return buffer.getvalue()
