"""Progress of a long report on a terminal: a bar on stderr while DuckDB works, nothing on a pipe.

DuckDB measures how far its running query is (``query_progress``); a thread owned by
:func:`query_progress_bar` polls it and draws one transient bar (rich) on the terminal, so
a 100M-row report says it is alive without a byte reaching stdout or a redirected stderr.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

__all__ = ["query_progress_bar", "wants_progress"]

#: Seconds between two polls, and before the bar first appears (quick reports show none).
_POLL_S = 0.2
_GRACE_S = 1.0


def wants_progress(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


@contextmanager
def query_progress_bar(con: Any, label: str, stream: IO[str] | None = None) -> Iterator[None]:
    """Draw DuckDB's progress of the queries run on ``con`` inside the block, on a terminal.

    On anything but a terminal this does nothing. The polling thread is stopped and joined
    when the block ends, whatever way it ends.
    """
    stream = sys.stderr if stream is None else stream
    if con is None or not wants_progress(stream):
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    stop = threading.Event()
    console = Console(file=stream, force_terminal=True)

    def poll() -> None:
        if stop.wait(_GRACE_S):
            return
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task(label, total=100.0)
            while not stop.wait(_POLL_S):
                try:
                    done = float(con.query_progress())
                except Exception:  # the connection is busy closing: stop drawing
                    return
                if done >= 0:  # -1: between two queries
                    bar.update(task, completed=min(done, 100.0))

    thread = threading.Thread(target=poll, name="report-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5.0)
