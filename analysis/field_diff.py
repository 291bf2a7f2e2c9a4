"""Diffy-style field differences: per decoded field, how often primary and shadow disagree.

DuckDB's JSON functions compare every pair's ``response_json`` field by field in one pass per
route; a replica shadow's rate beside each field is the noise floor the candidate must beat.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import duckdb
from scipy import stats

from analysis.distribution import wilson_interval
from analysis.load import (
    PRIMARY_SQL,
    AnalysisSourceError,
    relation_columns,
    sql_quote,
    time_filter,
    version_scope,
)
from analysis.noise_floor import ReplicaRule, newest_route_configs, replica_rule
from analysis.report.json import jsonable
from analysis.stream_diff import STREAM_FIELDS_NOTE, stream_field_base, stream_routes

__all__ = ["SCHEMA", "FieldDiff", "FieldDiffReport", "FieldPair", "analyze_field_diff"]

SCHEMA = "shadowcar.report.fields/1"

_NUMBER = "('BIGINT', 'UBIGINT', 'HUGEINT', 'DOUBLE')"


@dataclass(frozen=True)
class FieldDiff:
    """One field path of one pair: how often the shadow's value differs from the primary's.

    ``diff_rate`` is over all ``n`` pairs (a field missing on both sides is equal);
    ``present`` counts the pairs where either side has it. ``flag`` (None without a replica)
    says the rate is above the replica's by a one-sided two-proportion z-test at ``alpha``.
    """

    path: str
    present: int
    differ: int
    diff_rate: float | None
    diff_ci: tuple[float, float] | None
    replica_rate: float | None
    p_value: float | None
    flag: bool | None


@dataclass(frozen=True)
class FieldPair:
    """One (route, primary backend, shadow backend) comparison, field by field.

    ``replica`` names the replica shadow whose rates are the noise floor (the one with the
    most pairs for this primary), None when the route has none or this shadow is one.
    """

    route: str
    primary: str
    shadow: str
    is_replica: bool
    replica: str | None
    n: int
    replica_n: int | None
    fields: tuple[FieldDiff, ...]
    message: str | None = None


@dataclass(frozen=True)
class FieldDiffReport:
    """All pairs of one field-difference analysis, with its parameters."""

    pairs: tuple[FieldPair, ...]
    params: dict[str, Any]
    message: str | None = None
    #: which config versions the pairs come from (see analysis.load.version_scope)
    versions: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form, schema ``shadowcar.report.fields/1``."""
        pairs = []
        for pair in self.pairs:
            item = {k: getattr(pair, k) for k in FieldPair.__dataclass_fields__}
            item["fields"] = [
                {k: getattr(f, k) for k in FieldDiff.__dataclass_fields__} for f in pair.fields
            ]
            pairs.append(item)
        out: dict[str, Any] = jsonable(
            {"schema": SCHEMA, "params": self.params, "versions": self.versions,
             "pairs": pairs, "message": self.message}
        )
        return out


@dataclass(frozen=True)
class _Field:
    name: str  # the field path as users write it (sidecar.codecs.fieldpath syntax)
    jpath: str  # the DuckDB JSON path; '[*]' makes json_extract return a list


#: One route's pairs and its note (too many fields), from the route and its parameters.
RoutePairs = Callable[[str, dict[str, Any]], tuple[list[FieldPair], str | None]]


def _key(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _leaves(node: Any, name: str, jpath: str, out: list[_Field]) -> None:
    """Leaf fields of a ``json_group_structure`` result; a list of scalars is one leaf."""
    if isinstance(node, dict):
        for key, child in node.items():
            _leaves(child, f"{name}.{key}" if name else key, f"{jpath}.{_key(key)}", out)
    elif isinstance(node, list) and node and isinstance(node[0], dict | list):
        _leaves(node[0], name + "[]", jpath + "[*]", out)
    elif isinstance(node, list):
        out.append(_Field(name, jpath + "[*]"))
    elif name:
        out.append(_Field(name, jpath))


def _resolve(path: str, structure: Any) -> _Field:
    """A user's path as a JSON path, lists stepped into where the structure has them."""
    jpath, node = "$", structure
    for segment in path.split("."):
        key = segment.split("[", 1)[0]
        while isinstance(node, list):
            jpath, node = jpath + "[*]", node[0] if node else None
        jpath += "." + _key(key)
        node = node.get(key) if isinstance(node, dict) else None
        for _ in range(segment.count("[]")):
            jpath += "[*]"
            node = node[0] if isinstance(node, list) and node else None
    if isinstance(node, list):
        jpath += "[*]"
    return _Field(path, jpath)


def _extracts(found: Sequence[_Field]) -> str:
    """SQL select items reading every field of one call's ``j``, the document parsed once.

    Fields without a list step share one multi-path ``json_extract`` (one parse per call);
    DuckDB refuses wildcards there, so each list field has its own.
    """
    plain = [f.jpath for f in found if "[*]" not in f.jpath]
    paths = ", ".join(sql_quote(p) for p in plain)
    items = [f"json_extract(j, [{paths}]) AS m"] if plain else []
    items += [
        f"json_extract(j, {sql_quote(f.jpath)}) AS w{i}"
        for i, f in enumerate(found) if "[*]" in f.jpath
    ]
    return "".join(", " + item for item in items)


def _values(side: str, found: Sequence[_Field]) -> list[str]:
    """SQL: each field's values on ``side`` (p or s) as a JSON[] list, empty when missing."""
    out: list[str] = []
    plain = 0
    for i, f in enumerate(found):
        if "[*]" in f.jpath:
            out.append(f"{side}.w{i}")
        else:
            plain += 1
            out.append(f"list_filter([{side}.m[{plain}]], lambda x: x IS NOT NULL)")
    return out


def _equal(p: str, s: str, atol: float, rtol: float) -> str:
    """SQL: two JSON[] lists hold the same values, numbers within atol + rtol * |primary|."""
    close = (
        f"(json_type({p}[i]) IN {_NUMBER} AND json_type({s}[i]) IN {_NUMBER} AND "
        f"abs(TRY_CAST({s}[i] AS DOUBLE) - TRY_CAST({p}[i] AS DOUBLE)) "
        f"<= {atol!r} + {rtol!r} * abs(TRY_CAST({p}[i] AS DOUBLE)))"
    )
    return (
        f"(len({p}) = len({s}) AND coalesce(list_bool_and(list_transform("
        f"generate_series(1, len({p})), lambda i: {p}[i] = {s}[i] OR {close})), true))"
    )


def analyze_field_diff(
    con: duckdb.DuckDBPyConnection,
    *,
    route: str | None = None,
    fields: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    alpha: float = 0.01,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    max_fields: int = 200,
    version: str | None = None,
    all_versions: bool = False,
) -> FieldDiffReport:
    """Field difference rates of every shadow against its route's primary.

    Pairs join successful (status OK) primary and shadow calls with a decoded
    ``response_json`` on request_id. ``fields`` defaults to every leaf path found in the
    route's responses; ``ignore`` drops paths matching any of its globs (``fnmatch``, so
    ``meta.*`` or ``*.id``); None takes each route's ``ignore_fields`` from the newest
    recorded config. Cost per route: one scan for the structure, then each call's
    document is parsed once for all plain fields plus once per list field, and each pair is
    compared in SQL (no Python loop over rows). Each route's newest config version is
    compared unless ``version`` names one or ``all_versions``.
    """
    params = {
        "route": route, "fields": None if fields is None else list(fields),
        "ignore": None if ignore is None else list(ignore), "atol": atol, "rtol": rtol,
        "alpha": alpha, "since": since, "until": until, "max_fields": max_fields,
    }
    columns = relation_columns(con, "calls")
    if (empty := no_fields_source(columns, params)) is not None:
        return empty
    where = time_filter(since, until) if since or until else "TRUE"
    if route is not None:
        where += f" AND route = {sql_quote(route)}"
    scope = version_scope(con, "calls", where=f"{where} AND role IN ('shadow', 'replay')",
                          version=version, all_versions=all_versions)
    where += f" AND {scope.condition}"
    primary = PRIMARY_SQL if "served" in columns else "role = 'primary'"
    served = "served" if "served" in columns else "NULL AS served"
    base = (
        f"SELECT request_id, route, backend, role, {served}, j FROM (SELECT *, "
        "try_cast(response_json AS JSON) AS j FROM calls WHERE status = 'OK' AND "
        f"response_json IS NOT NULL AND {where}) WHERE j IS NOT NULL"
    )
    routes = [str(r[0]) for r in con.execute(
        f"SELECT DISTINCT route FROM ({base}) WHERE role IN ('shadow', 'replay') ORDER BY route"
    ).fetchall()]
    settings = newest_route_configs(con)  # read once for replicas and ignore_fields
    replicas = replica_rule(con, where, settings)
    configured = _ignore_fields(settings) if ignore is None else {}
    # Issue 20.1: a stream's fields are compared message by message (analysis.stream_diff).
    streamed = {r for r in stream_routes(con) if route is None or r == route}

    def route_pairs(name: str, route_params: dict[str, Any]) -> tuple[list[FieldPair], str | None]:
        route_base = stream_field_base(where, name, primary) if name in streamed else base
        return _route_pairs(con, route_base, primary, name, route_params, replicas)

    return fields_report(set(routes) | streamed, streamed, params, configured, route_pairs,
                         scope.to_dict())


def no_fields_source(columns: set[str], params: dict[str, Any]) -> FieldDiffReport | None:
    """The empty report of a calls table without decoded answers (None: the report can run);
    since/until without a ``ts`` column is an error."""
    if not columns:
        return FieldDiffReport((), params, "the source has no calls table")
    if "response_json" not in columns:
        return FieldDiffReport((), params, "calls has no response_json (no JSON codec used)")
    if (params["since"] or params["until"]) and "ts" not in columns:
        raise AnalysisSourceError("since/until need a ts column in calls")
    return None


def fields_report(
    routes: Iterable[str], streamed: Container[str], params: dict[str, Any],
    configured: dict[str, list[str]], route_pairs: RoutePairs, versions: dict[str, Any],
) -> FieldDiffReport:
    """The report from each route's pairs, as both engines assemble it: a route's ignored
    globs are ``params["ignore"]`` or else its configured ``ignore_fields``, a streamed
    route's pairs carry :data:`STREAM_FIELDS_NOTE`, and the routes' notes are the message."""
    pairs: list[FieldPair] = []
    notes: list[str] = []
    for name in sorted(routes):
        globs = params["ignore"] if params["ignore"] is not None else configured.get(name, [])
        built, note = route_pairs(name, {**params, "ignore": list(globs)})
        if name in streamed:
            built = [replace(p, message=p.message or STREAM_FIELDS_NOTE) for p in built]
        pairs.extend(built)
        if note:
            notes.append(note)
    message = "; ".join(notes) or None
    if not pairs:
        message = message or "no primary/shadow pair has a decoded response on both sides"
    return FieldDiffReport(tuple(pairs), params, message, versions)


def _ignore_fields(routes: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Each route's configured ``ignore_fields``."""
    return {match: [str(g) for g in route.get("ignore_fields") or [] if isinstance(g, str)]
            for match, route in routes.items()}


def _route_pairs(
    con: duckdb.DuckDBPyConnection,
    base: str,
    primary: str,
    route: str,
    params: dict[str, Any],
    rule: ReplicaRule,
) -> tuple[list[FieldPair], str | None]:
    scope = (f"FROM ({base}) WHERE route = {sql_quote(route)} "
             f"AND ({primary} OR role IN ('shadow', 'replay'))")
    (structure_text,) = con.execute(f"SELECT json_group_structure(j) {scope}").fetchall()[0]
    structure = json.loads(structure_text) if structure_text else {}
    found, note = select_fields(structure, route, params)
    extracts = _extracts(found)
    values = ", ".join(
        f"{pv} AS p{i}, {sv} AS s{i}"
        for i, (pv, sv) in enumerate(zip(_values("p", found), _values("s", found), strict=True))
    )
    flags = ", ".join(
        f"{_equal(f'p{i}', f's{i}', params['atol'], params['rtol'])} AS e{i}, "
        f"(len(p{i}) > 0 OR len(s{i}) > 0) AS h{i}"
        for i in range(len(found))
    )
    counts = "".join(
        f", count(*) FILTER (WHERE NOT e{i}) AS d{i}, count(*) FILTER (WHERE h{i}) AS h{i}"
        for i in range(len(found))
    )
    sql = f"""
        WITH prim AS (SELECT request_id, backend{extracts} FROM ({base})
                      WHERE route = {sql_quote(route)} AND {primary}),
             shad AS (SELECT request_id, backend{extracts} FROM ({base})
                      WHERE route = {sql_quote(route)} AND role IN ('shadow', 'replay')),
             vals AS (SELECT p.backend AS pb, s.backend AS sb{', ' + values if values else ''}
                      FROM shad s JOIN prim p USING (request_id)),
             flags AS (SELECT pb, sb{', ' + flags if flags else ''} FROM vals)
        SELECT pb, sb, count(*) AS n{counts} FROM flags GROUP BY pb, sb ORDER BY sb, pb
    """
    return field_pairs(route, found, con.execute(sql).fetchall(), rule, params["alpha"]), note


def select_fields(structure: Any, route: str,
                  params: dict[str, Any]) -> tuple[list[_Field], str | None]:
    """The fields compared on a route: the leaves of its responses' merged ``structure``
    (or the wanted paths), less the ignored globs, sorted, at most ``max_fields``."""
    wanted = params["fields"]
    if wanted is None:
        found: list[_Field] = []
        _leaves(structure, "", "$", found)
    else:
        found = [_resolve(path, structure) for path in wanted]
    found = [f for f in found if not any(fnmatch.fnmatchcase(f.name, g) for g in params["ignore"])]
    found.sort(key=lambda f: f.name)
    note = None
    if len(found) > params["max_fields"]:
        note = f"{route}: {len(found)} fields, the first {params['max_fields']} compared"
        found = found[: params["max_fields"]]
    return found, note


def field_pairs(route: str, found: Sequence[_Field], rows: Sequence[tuple[Any, ...]],
                rule: ReplicaRule, alpha: float) -> list[FieldPair]:
    """The route's pairs from its count rows ``(primary, shadow, n, differ_0, present_0,
    ...)`` ordered by shadow then primary, replicas as the noise floor."""
    replicas = set(rule.replicas.get(route, {}))
    # A replica is compared only with the backend it copies (issue 16.6).
    by_pair = {(str(r[0]), str(r[1])): r for r in rows
               if rule.pairs(route, str(r[0]), str(r[1]))}
    pairs: list[FieldPair] = []
    for (pb, sb), row in by_pair.items():
        n = int(row[2])
        floor = None
        if sb not in replicas:
            floors = [r for (p, s), r in by_pair.items() if p == pb and s in replicas]
            floor = max(floors, key=lambda r: int(r[2]), default=None)
        diffs = [_field(f, i, row, floor, alpha) for i, f in enumerate(found)]
        diffs.sort(key=lambda d: (-(d.diff_rate or 0.0), d.path))
        pairs.append(FieldPair(
            route=route, primary=pb, shadow=sb, is_replica=sb in replicas,
            replica=None if floor is None else str(floor[1]),
            n=n, replica_n=None if floor is None else int(floor[2]), fields=tuple(diffs),
            message=None if found else "no fields to compare",
        ))
    return pairs


def _field(
    field: _Field, i: int, row: tuple[Any, ...], floor: tuple[Any, ...] | None, alpha: float
) -> FieldDiff:
    n, differ, present = int(row[2]), int(row[3 + 2 * i]), int(row[4 + 2 * i])
    rate = differ / n if n else None
    replica_rate = p_value = flag = None
    if floor is not None and int(floor[2]):
        rn, rd = int(floor[2]), int(floor[3 + 2 * i])
        replica_rate = rd / rn
        p_value = _one_sided_p(differ, n, rd, rn)
        flag = p_value is not None and p_value < alpha
    return FieldDiff(field.name, present, differ, rate, wilson_interval(differ, n),
                     replica_rate, p_value, flag)


def _one_sided_p(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """P-value of rate1 > rate2 by the pooled two-proportion z-test (statsmodels' form).

    None when the pooled rate is 0 or 1 (no variance: the rates are equal).
    """
    if not n1 or not n2:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return None
    z = (x1 / n1 - x2 / n2) / variance**0.5
    return float(stats.norm.sf(z))
