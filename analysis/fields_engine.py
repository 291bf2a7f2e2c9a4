"""The fields report on Spark: decoded answers compared field by field where the fleet's data is.

Mirrors :func:`analysis.field_diff.analyze_field_diff` rule for rule. The relational part
(version scope, successful calls with a decoded answer, stream messages paired by index or
``stream_key``, primary and shadow joined on request id) is Ibis, as in the other reports.
JSON has no portable vocabulary in Ibis, so the JSON part is Spark's own VARIANT functions,
each standing for the DuckDB function the DuckDB path uses:

- ``schema_of_variant_agg`` for ``json_group_structure``: the merged structure of a route's
  answers (conflicting types are one leaf on both: ``VARIANT`` / ``"JSON"``), whose leaves
  are the compared fields (:func:`analysis.field_diff.select_fields`);
- ``variant_get`` with ``transform``/``flatten`` over ``[*]`` steps for ``json_extract``: a
  field's values in a call, a JSON null counting as a value and a missing key as none;
- ``to_json`` and ``schema_of_variant`` for the JSON text and ``json_type``: two values are
  equal when their JSON texts are, or when both are numbers within ``atol + rtol * |p|``.

The engine returns the counts per (primary, shadow, field); the rates, Wilson intervals and
replica tests are :mod:`analysis.field_diff`'s. On the DuckDB engine the report is the
DuckDB path itself. One difference stays: an object compared whole (a field that is an
object in some answers and a scalar in others) is compared with its keys sorted on Spark
and in their recorded order on DuckDB.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from analysis.canary_engine import route_configs
from analysis.divergence_engine import _replica_rule
from analysis.engine import Engine, EngineUnsupported
from analysis.field_diff import (
    FieldDiffReport,
    FieldPair,
    _Field,
    _ignore_fields,
    analyze_field_diff,
    field_pairs,
    fields_report,
    no_fields_source,
    select_fields,
)
from analysis.pair_scope import shadow_scope

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = ["analyze_field_diff_engine", "spark_structure"]

_STEP = re.compile(r'\."((?:[^"\\]|\\.)*)"|\[\*\]')
_NUMERIC = ("'BIGINT', 'INT', 'SMALLINT', 'TINYINT', 'DOUBLE', 'FLOAT'")


def analyze_field_diff_engine(
    engine: Engine, *, route: str | None = None, fields: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None, atol: float = 1e-6, rtol: float = 1e-3,
    alpha: float = 0.01, since: str | datetime | None = None,
    until: str | datetime | None = None, max_fields: int = 200, version: str | None = None,
    all_versions: bool = False,
) -> FieldDiffReport:
    """:func:`analysis.field_diff.analyze_field_diff` with its row work in ``engine``."""
    if engine.con is not None:  # DuckDB: its JSON functions are the DuckDB path's own
        return analyze_field_diff(engine.con, route=route, fields=fields, ignore=ignore,
                                  atol=atol, rtol=rtol, alpha=alpha, since=since, until=until,
                                  max_fields=max_fields, version=version,
                                  all_versions=all_versions)
    params = {
        "route": route, "fields": None if fields is None else list(fields),
        "ignore": None if ignore is None else list(ignore), "atol": atol, "rtol": rtol,
        "alpha": alpha, "since": since, "until": until, "max_fields": max_fields,
    }
    columns = engine.columns("calls") if engine.has("calls") else set()
    if (empty := no_fields_source(columns, params)) is not None:
        return empty
    version_found = str(getattr(engine.session, "version", "4"))
    if int(version_found.split(".")[0]) < 4:  # pyspark 3.5 is allowed for the other reports
        raise EngineUnsupported(f"the fields report on Spark needs Spark 4.0 or later (its "
                                f"VARIANT functions); this is Spark {version_found}")
    calls = engine.table("calls")
    cond, shadow_role, scope = shadow_scope(engine, calls, since, until, route, version,
                                            all_versions)
    primary = calls.role == "primary"
    if "served" in columns:
        primary |= calls.served & calls.role.isin(["variant", "stable", "canary"])
    tag = uuid.uuid4().hex[:12]
    plain = _view(engine, f"shadowcar_fields_{tag}", calls.filter(
        cond & (calls.status == "OK") & calls.response_json.notnull()).select(
        request_id=calls.request_id, route=calls.route, backend=calls.backend,
        is_p=primary.fill_null(False), is_s=shadow_role.fill_null(False),
        j=calls.response_json))
    routes = {str(r["route"]) for r in _sql(
        engine, f"SELECT DISTINCT route FROM {plain} WHERE is_s")}
    streamed: set[str] = set()
    stream = None
    if engine.has("stream_messages"):
        m = engine.table("stream_messages")
        responses = m.filter(m.direction == "response")
        streamed = {str(r["route"]) for r in engine.rows(responses.select("route").distinct())
                    if route is None or r["route"] == route}
        stream = _view(engine, f"shadowcar_fields_stream_{tag}",
                       _stream_base(engine, calls, cond, primary, shadow_role))
    replicas = _replica_rule(engine, calls, cond)
    configured = _ignore_fields(route_configs(engine)) if ignore is None else {}

    def route_pairs(name: str, route_params: dict[str, Any]) -> tuple[list[FieldPair], str | None]:
        view = stream if name in streamed and stream is not None else plain
        found, note = select_fields(_structure(engine, view, name), name, route_params)
        rows = _counts(engine, view, name, found, atol, rtol)
        return field_pairs(name, found, rows, replicas, alpha), note

    return fields_report(routes | streamed, streamed, params, configured, route_pairs,
                         scope.to_dict())


def _stream_base(engine: Engine, calls: ir.Table, cond: ir.BooleanValue,
                 primary: ir.BooleanValue, shadow_role: ir.BooleanValue) -> ir.Table:
    """:func:`analysis.stream_diff.stream_field_base` for every route: one row per response
    message, its request id suffixed with the pairing key."""
    import ibis

    c = calls.filter((primary | shadow_role) & cond).select(
        c_rid=calls.request_id, c_backend=calls.backend, c_role=calls.role,
        is_p=primary.fill_null(False), is_s=shadow_role.fill_null(False))
    m = engine.table("stream_messages")
    m = m.filter((m.direction == "response") & m.message_json.notnull())
    j = m.inner_join(c, (c.c_rid == m.request_id) & (c.c_backend == m.backend)
                     & (c.c_role == m.role))
    key = ibis.coalesce(j.key, j.idx.cast("string"))
    return j.select(request_id=j.request_id.concat("#", key), route=j.route, backend=j.backend,
                    is_p=j.is_p, is_s=j.is_s, j=j.message_json)


def _view(engine: Engine, name: str, expr: ir.Table) -> str:
    """A Spark view of ``expr`` with each answer parsed once (``v``, valid JSON only)."""
    assert engine.backend is not None and engine.session is not None
    sql = str(engine.backend.compile(expr))
    engine.session.sql(f"SELECT *, try_parse_json(j) AS v FROM ({sql})").filter(
        "v IS NOT NULL").drop("j").createOrReplaceTempView(name)
    return name


def _sql(engine: Engine, sql: str, **args: Any) -> list[dict[str, Any]]:
    return [row.asDict() for row in engine.session.sql(sql, args=args or None).collect()]


def _structure(engine: Engine, view: str, route: str) -> Any:
    rows = _sql(engine, f"SELECT schema_of_variant_agg(v) AS s FROM {view} "
                "WHERE route = :route AND (is_p OR is_s)", route=route)
    text = rows[0]["s"] if rows else None
    return spark_structure(text) if text else {}


def spark_structure(text: str) -> Any:
    """A ``schema_of_variant_agg`` type (``OBJECT<a: BIGINT, b: ARRAY<OBJECT<c: STRING>>>``)
    in ``json_group_structure``'s shape: objects as dicts, arrays as one-element lists,
    anything else as its type name."""
    node, rest = _parse(text.strip())
    if rest.strip():
        raise ValueError(f"cannot read the structure {text!r}")
    return node


def _parse(text: str) -> tuple[Any, str]:
    if text.startswith("OBJECT<"):
        out: dict[str, Any] = {}
        rest = text[len("OBJECT<"):].lstrip()
        while not rest.startswith(">"):
            if rest.startswith("`"):  # `a b`, a backtick doubled inside
                end = 1
                while True:
                    end = rest.index("`", end)
                    if rest[end:end + 2] == "``":
                        end += 2
                        continue
                    break
                key, rest = rest[1:end].replace("``", "`"), rest[end + 1:]
            else:
                key, rest = rest.split(":", 1)[0], ":" + rest.split(":", 1)[1]
            rest = rest.lstrip()
            assert rest.startswith(":"), rest
            out[key.strip()], rest = _parse(rest[1:].lstrip())
            rest = rest.lstrip()
            if rest.startswith(","):
                rest = rest[1:].lstrip()
        return out, rest[1:]
    if text.startswith("ARRAY<"):
        item, rest = _parse(text[len("ARRAY<"):].lstrip())
        return [item], rest.lstrip()[1:]
    found = re.match(r"[A-Z_]+(\([0-9, ]*\))?", text)
    if not found:
        raise ValueError(f"cannot read the structure at {text[:40]!r}")
    return found.group(0), text[found.end():]


def _steps(field: _Field) -> list[str | None]:
    """A DuckDB JSON path (``$."a"[*]."b"``) as keys and ``None`` for each ``[*]``."""
    steps: list[str | None] = []
    pos = 1
    for found in _STEP.finditer(field.jpath, 1):
        assert found.start() == pos, field.jpath
        pos = found.end()
        key = found.group(1)
        steps.append(None if key is None else re.sub(r"\\(.)", r"\1", key))
    return steps


def _path(key: str) -> str:
    if "'" in key or "\\" in key:
        raise EngineUnsupported(f"a JSON key with a quote or backslash ({key!r}) is compared "
                                "on --engine duckdb only")
    return f"'$[\\'{key}\\']'"


def _values(field: _Field, i: int) -> str:
    """Spark SQL: the field's values in ``v`` as ``array<struct<t: JSON text, n: number>>``."""
    steps = _steps(field)
    keys = [k for k in steps if k is not None]
    if len(keys) == len(steps):
        for k in keys:
            _path(k)  # refuses a key a path cannot hold
        path = "'$" + "".join(f"[\\'{k}\\']" for k in keys) + "'"
        values = f"filter(array(variant_get(v, {path})), x -> x IS NOT NULL)"
    else:
        values = "array(v)"
        for depth, key in enumerate(steps):
            e = f"e{i}_{depth}"
            if key is None:
                values = (f"flatten(transform({values}, {e} -> coalesce(try_variant_get("
                          f"{e}, '$', 'array<variant>'), filter(array({e}), z -> false))))")
            else:
                values = (f"filter(transform({values}, {e} -> variant_get({e}, {_path(key)})), "
                          f"{e} -> {e} IS NOT NULL)")
    kind = "schema_of_variant(x)"
    number = (f"CASE WHEN {kind} IN ({_NUMERIC}) OR {kind} LIKE 'DECIMAL%' "
              "THEN variant_get(x, '$', 'double') END")
    return f"transform({values}, x -> named_struct('t', to_json(x), 'n', {number}))"


def _counts(engine: Engine, view: str, route: str, found: Sequence[_Field], atol: float,
            rtol: float) -> list[tuple[Any, ...]]:
    """(primary, shadow, n, differ_0, present_0, ...) per pair of the route, ordered by
    shadow then primary, as the DuckDB path's rows."""
    extracts = "".join(f", {_values(f, i)} AS x{i}" for i, f in enumerate(found))
    tol = f"{atol!r} + {rtol!r} * abs(a.n)"
    flags = "".join(
        f", (size(p.x{i}) = size(s.x{i}) AND forall(zip_with(p.x{i}, s.x{i}, (a, b) -> "
        f"a.t = b.t OR (a.n IS NOT NULL AND b.n IS NOT NULL AND abs(b.n - a.n) <= {tol})), "
        f"z -> z)) AS e{i}, (size(p.x{i}) > 0 OR size(s.x{i}) > 0) AS h{i}"
        for i in range(len(found)))
    counts = "".join(f", count_if(NOT e{i}) AS d{i}, count_if(h{i}) AS h{i}"
                     for i in range(len(found)))
    sql = f"""
        WITH vals AS (SELECT request_id, backend, is_p, is_s{extracts} FROM {view}
                      WHERE route = :route),
             flags AS (SELECT p.backend AS pb, s.backend AS sb{flags}
                       FROM (SELECT * FROM vals WHERE is_s) s
                       JOIN (SELECT * FROM vals WHERE is_p) p ON p.request_id = s.request_id)
        SELECT pb, sb, count(*) AS n{counts} FROM flags GROUP BY pb, sb ORDER BY sb, pb
    """
    rows = engine.session.sql(sql, args={"route": route}).collect()
    return [tuple(row) for row in rows]
