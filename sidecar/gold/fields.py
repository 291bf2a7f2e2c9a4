"""Gold cases of any proto: expected decoded fields, each within its own tolerance.

A case's ``expected.fields`` maps field paths (``score``, ``hits[].score``; the syntax of
``compare_fields``) to the values the answer must hold there, lists compared element by
element (a different count is a regression). Numbers pass within ``atol + rtol *
|expected|``, with the case's tolerances unless ``tolerances`` names the path; strings and
booleans must be equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.codecs.fieldpath import JsonScalar, extract, parse_path

__all__ = ["FieldTolerance", "compare_fields", "parse_fields", "parse_tolerances"]


@dataclass(frozen=True)
class FieldTolerance:
    atol: float
    rtol: float


def _scalars(value: Any, what: str) -> tuple[JsonScalar, ...]:
    items = value if isinstance(value, list) else [value]
    out: list[JsonScalar] = []
    for item in items:
        if not isinstance(item, str | int | float | bool):
            raise ValueError(f"{what} must hold strings, numbers or booleans, got {item!r}")
        out.append(item)
    return tuple(out)


def parse_fields(raw: Any) -> dict[str, tuple[JsonScalar, ...]]:
    """``expected.fields`` checked: paths that parse, leaf values only."""
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError('"expected.fields" must be {"path": value or [values], ...}')
    out: dict[str, tuple[JsonScalar, ...]] = {}
    for path, value in raw.items():
        parse_path(str(path))  # CodecError is a ValueError naming the path
        out[str(path)] = _scalars(value, f"expected.fields[{path!r}]")
    return out


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    return float(value)


def parse_tolerances(raw: Any, atol: float, rtol: float) -> dict[str, FieldTolerance]:
    """A case's ``tolerances``: {path: {"atol": x, "rtol": y}}, either left to the case's."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError('"tolerances" must be {"path": {"atol": x, "rtol": y}, ...}')
    out: dict[str, FieldTolerance] = {}
    for path, tol in raw.items():
        parse_path(str(path))
        if not isinstance(tol, Mapping) or set(tol) - {"atol", "rtol"}:
            raise ValueError(f'"tolerances"[{path!r}] must be {{"atol": x, "rtol": y}}')
        out[str(path)] = FieldTolerance(
            _number(tol.get("atol", atol), f"tolerances[{path!r}].atol"),
            _number(tol.get("rtol", rtol), f"tolerances[{path!r}].rtol"))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compare_fields(
    doc: Mapping[str, Any], expected: Mapping[str, Sequence[JsonScalar]],
    tolerances: Mapping[str, FieldTolerance], default: FieldTolerance,
) -> tuple[list[str], float | None]:
    """Problems found comparing ``doc`` with the expected fields, and the largest absolute
    difference of any number compared (None when no number was)."""
    problems: list[str] = []
    worst: float | None = None
    for path, want in expected.items():
        got = extract(doc, path)
        tol = tolerances.get(path, default)
        if len(got) != len(want):
            problems.append(f"{path}: expected {len(want)} values, got {len(got)}")
            continue
        beyond = 0
        for g, w in zip(got, want, strict=True):
            if _is_number(g) and _is_number(w):
                diff = abs(float(g) - float(w))
                worst = diff if worst is None or diff > worst else worst
                if not (diff <= tol.atol + tol.rtol * abs(float(w))) or math.isnan(diff):
                    beyond += 1
            elif g != w:
                beyond += 1
        if beyond:
            problems.append(f"{path}: {beyond} of {len(want)} values beyond atol {tol.atol:g} "
                            f"+ rtol {tol.rtol:g} or not equal")
    return problems, worst
