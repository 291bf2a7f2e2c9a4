"""Class agreement between primary and shadow labels: agreement, kappa, confusion, flips.

Inputs are the SQL ``histogram`` of (primary label, shadow label) pairs: k x k counts at most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.distribution import wilson_interval

__all__ = ["ClassAgreement", "class_agreement", "label_cells"]

_MAX_CONFUSION_LABELS = 30
_TOP_FLIPS = 10


@dataclass(frozen=True)
class ClassAgreement:
    """Label agreement of the pairs where both sides have a class label."""

    n: int
    agreement: float | None
    agreement_ci: tuple[float, float] | None
    kappa: float | None
    confusion: dict[str, Any]
    top_flips: tuple[dict[str, Any], ...]
    message: str | None = None


def label_cells(histogram: Any) -> list[tuple[str, str, int]]:
    """(primary label, shadow label, count) cells from the SQL ``histogram`` of label pairs."""
    if not histogram:
        return []
    items: Any
    if isinstance(histogram, dict) and set(histogram) == {"key", "value"}:
        items = zip(histogram["key"], histogram["value"], strict=True)
    elif isinstance(histogram, dict):
        items = histogram.items()
    else:  # Arrow's map form: a list of (key, count) tuples
        items = histogram
    return [(str(k["p"]), str(k["s"]), int(v)) for k, v in items]


def class_agreement(
    n: int, agree: int, cells: list[tuple[str, str, int]]
) -> ClassAgreement | None:
    """Agreement (Wilson CI), Cohen's kappa, confusion matrix and top flips; ``None`` when
    no pair has labels on both sides (scalar outputs)."""
    if n == 0:
        return None
    labels = sorted({c[0] for c in cells} | {c[1] for c in cells})
    index = {label: i for i, label in enumerate(labels)}
    table = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for pl, sl, count in cells:
        table[index[pl], index[sl]] += count
    po = agree / n
    pe = float(table.sum(axis=1) @ table.sum(axis=0)) / float(n) ** 2
    kappa = (po - pe) / (1 - pe) if pe < 1 else None
    message = None if kappa is not None else "kappa is undefined: both sides use a single class"
    flips = sorted((c for c in cells if c[0] != c[1]), key=lambda c: (-c[2], c[0], c[1]))
    top = tuple({"primary": a, "shadow": b, "count": k, "share": k / n}
                for a, b, k in flips[:_TOP_FLIPS])
    return ClassAgreement(n, po, wilson_interval(agree, n), kappa, _confusion(table, labels),
                          top, message)


def _confusion(table: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Rows are primary labels, columns shadow labels; rare labels fold into ``(other)``."""
    order = np.argsort(-(table.sum(axis=0) + table.sum(axis=1)), kind="stable")
    if len(labels) > _MAX_CONFUSION_LABELS:
        keep, rest = order[: _MAX_CONFUSION_LABELS - 1], order[_MAX_CONFUSION_LABELS - 1:]
        small = np.zeros((len(keep) + 1, len(keep) + 1), dtype=np.int64)
        small[:-1, :-1] = table[np.ix_(keep, keep)]
        small[:-1, -1] = table[np.ix_(keep, rest)].sum(axis=1)
        small[-1, :-1] = table[np.ix_(rest, keep)].sum(axis=0)
        small[-1, -1] = table[np.ix_(rest, rest)].sum()
        names = [labels[i] for i in keep] + ["(other)"]
        return {"labels": names, "matrix": small.tolist(), "truncated": True}
    return {"labels": [labels[i] for i in order],
            "matrix": table[np.ix_(order, order)].tolist(), "truncated": False}
