"""Model names of backends (``backends[].model``, issue 17), read from the recorded configs.

A backend asked for another OIP model name than the caller's is shown as
``backend@version (model)`` in reports; one without a model name keeps its plain name.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from analysis.load import relation_columns

__all__ = ["backend_labels", "label"]


def label(backend: str, version: str | None, model: str | None) -> str:
    """``backend@version (model)`` when a model name is set, else ``backend``."""
    if not model:
        return backend
    return f"{backend}@{version} ({model})" if version else f"{backend} ({model})"


def backend_labels(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Backend name -> its label, for backends with a model name in a recorded config (the
    newest config that names the backend wins). Empty without a configs table."""
    if "config_json" not in relation_columns(con, "configs"):
        return {}
    rows = con.execute("SELECT config_json FROM configs WHERE config_json IS NOT NULL "
                       "ORDER BY ts").fetchall()  # one row per accepted config: few
    found: dict[str, str] = {}
    for (text,) in rows:
        try:
            backends: Any = json.loads(text).get("backends") or []
        except (ValueError, AttributeError):
            continue
        for backend in backends:
            if isinstance(backend, dict) and isinstance(backend.get("name"), str):
                name = backend["name"]
                found[name] = label(name, backend.get("version"), backend.get("model"))
    return {name: text for name, text in found.items() if text != name}
