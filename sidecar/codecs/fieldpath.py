"""Field paths into decoded JSON messages: ``scores``, ``result.label``, ``items[].score``.

Used by the descriptor codec (``compare_fields``) and by field-level diffs to pick values.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from sidecar.codecs.tensor import CodecError

__all__ = [
    "FieldPath",
    "JsonScalar",
    "extract",
    "leaf_paths",
    "parse_path",
    "redact_paths",
    "summarize_json",
]

#: A leaf value of a decoded message: what :func:`extract` returns.
JsonScalar: TypeAlias = str | int | float | bool

_SEGMENT = re.compile(r"^(?P<key>[^.\[\]]+)(?P<index>(\[\d*\])*)$")
_INDEX = re.compile(r"\[(\d*)\]")


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A parsed path: keys, each followed by list steps (``None`` = every element, or an index).

    Syntax: keys joined by ``.``; ``[]`` after a key flattens that list, ``[N]`` takes its
    N-th element. A list met where the path has no step is flattened too, so ``items.score``
    reads the same values as ``items[].score`` and ``scores`` reads every element of a list.
    Keys containing ``.``, ``[`` or ``]`` cannot be written (map keys usually can).
    """

    text: str
    steps: tuple[tuple[str, tuple[int | None, ...]], ...]


@functools.lru_cache(maxsize=1024)
def parse_path(text: str) -> FieldPath:
    """Parse ``text``; CodecError names a malformed path. Cached: the writer extracts the
    same configured paths from every recorded call (a parse costs ~5 us)."""
    if not text or text.strip() != text:
        raise CodecError(f"field path {text!r}: empty or padded with spaces")
    steps: list[tuple[str, tuple[int | None, ...]]] = []
    for segment in text.split("."):
        found = _SEGMENT.match(segment)
        if found is None:
            raise CodecError(f"field path {text!r}: bad segment {segment!r}")
        indexes = tuple(
            int(i) if i else None for i in _INDEX.findall(found.group("index"))
        )
        steps.append((found.group("key"), indexes))
    return FieldPath(text, tuple(steps))


def extract(doc: Any, path: str | FieldPath) -> list[JsonScalar]:
    """The leaf values at ``path`` in ``doc``, lists flattened in order; missing gives ``[]``.

    JSON ``null`` and nested objects at the end of the path are not leaves and are skipped.
    """
    parsed = parse_path(path) if isinstance(path, str) else path
    current: list[Any] = [doc]
    for key, indexes in parsed.steps:
        current = [
            node[key]
            for node in _flatten(current)
            if isinstance(node, Mapping) and key in node
        ]
        for index in indexes:
            if index is None:
                current = list(_flatten(current))
            else:
                current = [
                    node[index]
                    for node in current
                    if isinstance(node, list) and -len(node) <= index < len(node)
                ]
    return [v for v in _flatten(current) if isinstance(v, str | int | float)]


def _flatten(values: Sequence[Any]) -> Iterator[Any]:
    for value in values:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def leaf_paths(doc: Any) -> list[str]:
    """Every path to a leaf of ``doc``, sorted; lists of objects appear as ``key[].child``.

    A list of scalars is one leaf named without ``[]`` (``scores``), as :func:`extract`
    flattens it anyway.
    """
    found: set[str] = set()
    _walk(doc, "", found)
    return sorted(found)


def _walk(node: Any, prefix: str, found: set[str]) -> None:
    if isinstance(node, Mapping):
        for key, child in node.items():
            _walk(child, f"{prefix}.{key}" if prefix else str(key), found)
        return
    if isinstance(node, list):
        nested = [v for v in node if isinstance(v, Mapping | list)]
        if not nested:
            if prefix:
                found.add(prefix)
            return
        for child in nested:
            _walk(child, prefix + "[]", found)
        return
    if prefix:
        found.add(prefix)


def summarize_json(
    doc: Mapping[str, Any], compare: Sequence[str], score_index: int = -1
) -> tuple[list[float] | None, float | None, str | None]:
    """The ``calls`` columns (output, score, label) of a decoded message.

    The first path in ``compare`` whose values are all numbers (booleans are not numbers
    here) gives ``output`` (the values as floats) and ``score`` (the only value, or
    ``output[score_index]``; None when out of range). The first path whose first value is a
    string or a boolean gives ``label`` (``"true"``/``"false"`` for booleans). Paths with no
    values are passed over.
    """
    output: list[float] | None = None
    score: float | None = None
    label: str | None = None
    for path in compare:
        values = extract(doc, path)
        if not values:
            continue
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if output is None and numeric:
            output = [float(v) for v in values]
            if len(output) == 1:
                score = output[0]
            elif -len(output) <= score_index < len(output):
                score = output[score_index]
        elif label is None and isinstance(values[0], str | bool):
            first = values[0]
            label = ("true" if first else "false") if isinstance(first, bool) else first
        if output is not None and label is not None:
            break
    return output, score, label


def redact_paths(doc: Any, paths: Sequence[str], replace: Any) -> Any:
    """``doc`` with every leaf under each path replaced by ``replace(value)``, or removed
    when ``replace`` is None. Works in place on dicts and lists; returns ``doc``."""
    for text in paths:
        _redact(doc, parse_path(text).steps, replace)
    return doc


def _redact(node: Any, steps: Sequence[tuple[str, tuple[int | None, ...]]], replace: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _redact(item, steps, replace)
        return
    if not isinstance(node, dict) or not steps:
        return
    (key, indexes), rest = steps[0], steps[1:]
    if key not in node:
        return
    if not rest and not indexes:
        if replace is None:
            del node[key]
        else:
            node[key] = _replace_leaves(node[key], replace)
        return
    target = node[key]
    for index in indexes:
        if isinstance(target, list) and index is not None:
            target = target[index] if -len(target) <= index < len(target) else None
    if not rest:
        if isinstance(target, list):
            target[:] = [_replace_leaves(v, replace) for v in target] if replace else []
        return
    _redact(target, rest, replace)


def _replace_leaves(value: Any, replace: Any) -> Any:
    if isinstance(value, dict):
        return {k: _replace_leaves(v, replace) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_leaves(v, replace) for v in value]
    return replace(value)
