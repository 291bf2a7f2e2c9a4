"""The JSON form of reports: plain values only, never NaN (``allow_nan=False`` enforces it)."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import numpy as np

__all__ = ["jsonable", "render_json"]


def jsonable(value: Any) -> Any:
    """Plain JSON values: tuples become lists, numpy scalars numbers, NaN and inf ``None``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def render_json(report: dict[str, Any], *, indent: int | None = 2) -> str:
    """Serialise a report's ``to_dict()``; a NaN that slipped through becomes ``null``."""
    return json.dumps(jsonable(report), indent=indent, allow_nan=False, sort_keys=False)
