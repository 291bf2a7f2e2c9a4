"""Model provenance: where a backend's model came from, and where and when it has served.

``backends[].provenance`` in the config holds a :class:`ModelProvenance`; every accepted config
is recorded in ``configs``, so :func:`models_listing` can join it with the recorded ``calls``.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any, Self

import duckdb
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["DataWindow", "ModelProvenance", "models_listing"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataWindow(_Model):
    """The time span of the data a model was trained on."""

    start: date | datetime = Field(description="first day (or instant) of the training data")
    end: date | datetime = Field(description="last day (or instant) of the training data")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if _as_datetime(self.end) < _as_datetime(self.start):
            raise ValueError("end is before start")
        return self


class ModelProvenance(_Model):
    """What a model version was built from; every key optional, all of them recommended."""

    training_data_window: DataWindow | None = Field(None, description="training data span")
    code_version: str | None = Field(None, description="commit or tag of the training code")
    parameters: dict[str, Any] = Field(default_factory=dict, description="hyper-parameters")
    evaluation: dict[str, Any] = Field(
        default_factory=dict, description="offline evaluation, e.g. {auc: 0.91, dataset: ...}"
    )
    owner: str | None = Field(None, description="team or person answerable for the model")
    trained_at: date | None = Field(None, description="day the model was trained")


def _as_datetime(value: date | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime(value.year, value.month, value.day)


def _tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute("SELECT view_name FROM duckdb_views() UNION ALL "
                       "SELECT table_name FROM duckdb_tables()").fetchall()
    return {str(r[0]) for r in rows}


def _configured(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], dict[str, Any]]:
    """Every (backend, version) of every recorded config, with its latest provenance."""
    rows = con.execute("SELECT config_version, ts, config_json FROM configs "
                       "ORDER BY ts NULLS FIRST").fetchall()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for config_version, ts, text in rows:
        try:
            backends = json.loads(text or "{}").get("backends") or []
        except (json.JSONDecodeError, AttributeError):
            continue
        for backend in backends:
            if not isinstance(backend, dict) or "name" not in backend:
                continue
            key = (str(backend["name"]), str(backend.get("version") or ""))
            entry = out.setdefault(key, {"configured_first": ts, "config_versions": []})
            entry["configured_last"] = ts
            if config_version not in entry["config_versions"]:
                entry["config_versions"].append(config_version)
            entry["provenance"] = _provenance(backend.get("provenance"))
    return out


def _provenance(raw: Any) -> dict[str, Any] | None:
    """The recorded provenance, validated when it fits the model, else kept as recorded."""
    if not isinstance(raw, dict):
        return None
    try:
        return ModelProvenance.model_validate(raw).model_dump(mode="json")
    except ValidationError:
        return raw


def _served(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], dict[str, Any]]:
    rows = con.execute("""
        SELECT backend, coalesce(backend_version, '') AS version, role, count(*) AS calls,
               count(*) FILTER (WHERE served) AS served, min(ts), max(ts)
        FROM calls GROUP BY ALL ORDER BY backend, version, role
    """).fetchall()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for backend, version, role, calls, served, first, last in rows:
        entry = out.setdefault((str(backend), str(version)), {"roles": {}})
        entry["roles"][str(role)] = {"calls": int(calls), "served": int(served),
                                     "first_seen": first, "last_seen": last}
    return out


def models_listing(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every model version configured or seen in calls: its provenance, and when and as what
    it served.

    One dict per (backend, version), sorted by backend then first appearance: ``backend``,
    ``version``, ``provenance`` (None when not configured), ``configured_first/last``,
    ``config_versions``, ``first_seen``/``last_seen`` over all calls, ``calls`` and ``roles``
    (per role: calls, served, first_seen, last_seen).
    """
    tables = _tables(con)
    configured = _configured(con) if "configs" in tables else {}
    served = _served(con) if "calls" in tables else {}
    listing: list[dict[str, Any]] = []
    for key in set(configured) | set(served):
        config = configured.get(key, {})
        roles: dict[str, dict[str, Any]] = served.get(key, {}).get("roles", {})
        firsts = [r["first_seen"] for r in roles.values() if r["first_seen"] is not None]
        lasts = [r["last_seen"] for r in roles.values() if r["last_seen"] is not None]
        listing.append({
            "backend": key[0],
            "version": key[1],
            "provenance": config.get("provenance"),
            "configured_first": config.get("configured_first"),
            "configured_last": config.get("configured_last"),
            "config_versions": config.get("config_versions", []),
            "first_seen": min(firsts) if firsts else None,
            "last_seen": max(lasts) if lasts else None,
            "calls": sum(r["calls"] for r in roles.values()),
            "roles": roles,
        })

    def order(item: dict[str, Any]) -> tuple[str, datetime, str]:
        first = item["first_seen"] or item["configured_first"] or datetime.max
        return item["backend"], first, item["version"]

    return sorted(listing, key=order)
