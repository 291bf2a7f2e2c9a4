"""Every note, warning and method in a report dictionary, wherever it sits.

The analyses put text meant for a person in fields named ``message``, ``note``,
``warning`` or ``method`` (also plural, and ``*_note``, ``*_message``, ``*_warning``,
``*_method``, ``convention``). The renderers show all of them in every format, found here by
walking the dictionary, so a field added to a result dataclass shows up without a renderer
change.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Note", "NoteKind", "collect", "note_kind", "places", "where"]

NoteKind = Literal["warning", "note", "method"]

_EXACT: dict[str, NoteKind] = {
    "message": "note", "messages": "note", "note": "note", "notes": "note",
    "convention": "note", "conventions": "note",
    "warning": "warning", "warnings": "warning", "method": "method", "methods": "method",
}
_SUFFIX: tuple[tuple[str, NoteKind], ...] = (
    ("_note", "note"), ("_notes", "note"), ("_message", "note"), ("_messages", "note"),
    ("_warning", "warning"), ("_warnings", "warning"), ("_method", "method"),
)
#: Keys that hold data, not prose, even when their name matches (plot data, raw tables).
_SKIP = frozenset({"plots", "reliability", "confusion", "top_flips"})
_ORDER: dict[NoteKind, int] = {"warning": 0, "note": 1, "method": 2}


@dataclass(frozen=True)
class Note:
    """One text and every place it was found (``where`` labels; empty for the report)."""

    kind: NoteKind
    text: str
    where: tuple[str, ...]


def note_kind(key: str) -> NoteKind | None:
    """The kind of note a dictionary key holds, or None for data."""
    if key in _EXACT:
        return _EXACT[key]
    for suffix, kind in _SUFFIX:
        if key.endswith(suffix):
            return kind
    return None


def where(item: dict[str, Any]) -> str:
    """A short label for the result a note belongs to (pair, experiment row, feature ...)."""
    if "primary" in item and "shadow" in item and not isinstance(item["primary"], dict):
        head = f"{item['primary']} → {item['shadow']}"
        if item.get("metric"):
            head += f" ({item['metric']})"
        return head
    if "metric" in item and "variant" in item:
        return f"{item['metric']}: {item['variant']} vs {item.get('control')}"
    if "stable" in item and "candidate" in item and "route" in item:
        return f"canary {item['route']}: {item['candidate']} vs {item['stable']}"
    if "index" in item and "units" in item:
        return "one step" if item["index"] is None else f"step {int(item['index']) + 1}"
    if "metric" in item and isinstance(item["metric"], str):
        return item["metric"]
    if "feature" in item:
        return f"{item['feature']}"
    if "backend" in item and "version" in item:
        return f"{item['backend']}@{item['version']}"
    if "path" in item and "diff_rate" in item:
        return str(item["path"])
    if "name" in item and isinstance(item["name"], str):
        return item["name"]
    return ""


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value.strip():
            yield value.strip()
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):  # {"cuped": "...", ...}: each entry said with its key
        for key, item in value.items():
            for text in _texts(item):
                yield f"{key}: {text}"


def _walk(value: Any, path: tuple[str, ...],
          root: bool = False) -> Iterator[tuple[NoteKind, str, tuple[str, ...]]]:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item, path)
        return
    if not isinstance(value, dict):
        return
    label = "" if root else where(value)  # the report itself is no place worth naming
    here = (*path, label) if label and (not path or path[-1] != label) else path
    for key, item in value.items():
        kind = note_kind(key)
        if kind is not None:
            for text in _texts(item):
                yield kind, text, here
        elif key not in _SKIP and isinstance(item, dict | list | tuple):
            yield from _walk(item, here)


def collect(report: dict[str, Any]) -> list[Note]:
    """Every note in ``report``: warnings first, then notes, then methods; one entry per text
    with all the places it was found, in the order first seen."""
    found: dict[str, list[str]] = {}
    kinds: dict[str, NoteKind] = {}
    for kind, text, path in _walk(report, (), root=True):
        places = found.setdefault(text, [])
        # A text said both as a note and as a method is shown once, as the weightier kind.
        if text not in kinds or _ORDER[kind] < _ORDER[kinds[text]]:
            kinds[text] = kind
        label = " / ".join(path)
        if label not in places:
            places.append(label)
    notes = [Note(kinds[text], text, tuple(p for p in places if p)) for text, places
             in found.items()]
    return sorted(notes, key=lambda n: _ORDER[n.kind])


def places(note: Note, limit: int = 4) -> str:
    """Where a note was found, the first ``limit`` places and how many more."""
    shown = "; ".join(note.where[:limit])
    more = len(note.where) - limit
    return shown + (f"; and {more} more" if more > 0 else "")
