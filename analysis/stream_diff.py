"""Comparisons the divergence and fields reports make beyond one scalar per call: whole output
vectors element by element, and streams message by message (docs/streams.md).

This is the DuckDB path; :mod:`analysis.vector_engine` and :mod:`analysis.stream_engine`
compute the same figures as Ibis expressions for ``--engine spark``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import duckdb

from analysis.load import relation_columns, sql_quote

__all__ = [
    "STREAM_FIELDS_NOTE",
    "STREAM_NOTE",
    "VECTOR_NOTE",
    "attach_streams",
    "has_streams",
    "stream_divergence",
    "stream_field_base",
    "stream_routes",
    "vector_tolerance",
    "with_streams",
]

VECTOR_NOTE = (
    "out_of_tolerance of a pair with output vectors (more than one value on a side) compares "
    "the whole vectors: a pair is out when the lengths differ or any element has |s - p| > "
    "atol + rtol * |p|; score_index picks only the scalar score"
)


def _vector_out(atol: float, rtol: float) -> str:
    """SQL: true when a pair's output vectors differ in length or in any element beyond
    tolerance (NaN is beyond), given both are present."""
    return (
        "(len(p.output) <> len(s.output) OR NOT coalesce(list_bool_and(list_transform("
        "generate_series(1, len(p.output)), lambda i: abs(s.output[i] - p.output[i]) <= "
        f"{atol!r} + {rtol!r} * abs(p.output[i]))), true))"
    )


def vector_tolerance(
    con: duckdb.DuckDBPyConnection, base: str, join: str, seg: str, atol: float, rtol: float,
) -> dict[tuple[Any, Any, Any, Any], dict[str, int]]:
    """Per (route, primary, shadow, segment): pairs with output vectors on both sides
    (``n``), how many are out of tolerance as whole vectors, and how many differ in length.

    ``base`` and ``join`` are the divergence report's CTEs and join (``p`` primary, ``s``
    shadow); pairs whose outputs are one value on both sides are scalars, not counted."""
    vectors = ("p.output IS NOT NULL AND s.output IS NOT NULL "
               "AND (len(p.output) > 1 OR len(s.output) > 1)")
    sql = f"""{base}
        SELECT s.route AS route, p.backend AS pb, s.backend AS sb, {seg} AS seg,
            count(*) FILTER (WHERE {vectors}) AS n,
            count(*) FILTER (WHERE {vectors} AND {_vector_out(atol, rtol)}) AS out,
            count(*) FILTER (WHERE {vectors} AND len(p.output) <> len(s.output)) AS lengths
        {join} WHERE p.request_id IS NOT NULL
        GROUP BY ALL
    """
    found: dict[tuple[Any, Any, Any, Any], dict[str, int]] = {}
    for route, pb, sb, segment, n, out, lengths in con.execute(sql).fetchall():
        if n:
            found[(route, pb, sb, segment)] = {
                "n": int(n), "out_of_tolerance": int(out), "length_mismatch": int(lengths)}
    return found



# --- streams, message by message ----------------------------------------------------------

STREAM_NOTE = (
    "streams (stream_messages) are compared message by message: a shadow's message pairs with "
    "the primary's of the same index (or the same stream_key value where the route names "
    "one); only messages both sides sent are compared, and a stream that ended early on either "
    "side (cut) is compared on those only; lengths that differ between two complete streams "
    "are counted as length_mismatch"
)

STREAM_FIELDS_NOTE = (
    "a stream route: n counts message pairs (the messages both sides sent, paired by index "
    "or stream_key), not calls"
)


def has_streams(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the source has a stream_messages table or view (a sidecar with issue 20.1)."""
    try:
        con.execute("SELECT 1 FROM stream_messages LIMIT 0").fetchall()
    except duckdb.Error:
        return False
    return True


def stream_messages_sql(calls_where: str, primary: str) -> str:
    """SQL: the response messages of recorded streams, each with its call's status, side
    (``p`` primary, ``s`` shadow or replay), served flag and the pairing key."""
    return f"""
        SELECT m.request_id, m.route, m.backend, m.role, m.idx,
               coalesce(m.key, m.idx::VARCHAR) AS k, m.score, m.label, m.output,
               m.message_json, c.status AS call_status, c.side
        FROM stream_messages m JOIN (
            SELECT request_id, backend, role, status,
                   CASE WHEN {primary} THEN 'p' ELSE 's' END AS side
            FROM calls WHERE ({primary} OR role IN ('shadow', 'replay')) AND {calls_where}
        ) c ON c.request_id = m.request_id AND c.backend = m.backend AND c.role = m.role
        WHERE m.direction = 'response'
    """


def _stream_counts(con: duckdb.DuckDBPyConnection, calls_where: str, primary: str) -> str:
    """SQL: each streaming call's route, request id, backend, side, status and kept response
    messages. A call recorded as a stream (``calls.messages`` set) counts with 0 messages
    when none was kept: a shadow stream cut before its first message, or failing at once,
    is a cut stream, not no stream (it vanished from the figures before)."""
    kept = """SELECT request_id, backend, role, count(*) AS n FROM stream_messages
              WHERE direction = 'response' GROUP BY ALL"""
    # A streaming call: one with a kept message, or recorded as a stream (calls.messages).
    recorded = "messages IS NOT NULL" if "messages" in relation_columns(con, "calls") else "false"
    return f"""
            SELECT c.route, c.request_id, c.backend, c.side, c.status, coalesce(k.n, 0) AS n
            FROM (SELECT route, request_id, backend, role, status,
                         {recorded} AS recorded,
                         CASE WHEN {primary} THEN 'p' ELSE 's' END AS side
                  FROM calls WHERE ({primary} OR role IN ('shadow', 'replay'))
                       AND {calls_where}) c
            LEFT JOIN ({kept}) k ON k.request_id = c.request_id AND k.backend = c.backend
                 AND k.role = c.role
            WHERE k.n IS NOT NULL OR c.recorded"""


def stream_divergence(
    con: duckdb.DuckDBPyConnection, calls_where: str, primary: str, atol: float, rtol: float,
) -> dict[tuple[Any, Any, Any], dict[str, Any]]:
    """Per (route, primary, shadow): the streams' message-by-message figures.

    ``streams``: stream pairs, how many differ in a compared message, ``cut`` (a side did not
    end OK: compared on the messages both sent), ``length_mismatch`` (both ended OK with
    different counts); ``messages``: pairs compared, how many differ (score beyond tolerance,
    label, or whole output vector), the score differences' mean and max, and where the
    differing messages sit in their stream (first, middle, last compared message)."""
    base = stream_messages_sql(calls_where, primary)
    differs = (f"(abs(s.score - p.score) > {atol!r} + {rtol!r} * abs(p.score) "
              "OR (p.score IS NULL) <> (s.score IS NULL) OR p.label IS DISTINCT FROM s.label "
              f"OR (p.output IS NOT NULL AND s.output IS NOT NULL AND {_vector_out(atol, rtol)}) "
              "OR (p.output IS NULL) <> (s.output IS NULL) "
              "OR (p.score IS NULL AND p.label IS NULL AND p.output IS NULL "
              "AND p.message_json IS DISTINCT FROM s.message_json))")
    sql = f"""
        WITH msgs AS ({base}),
        pm AS (SELECT * FROM msgs WHERE side = 'p'),
        sm AS (SELECT * FROM msgs WHERE side = 's'),
        paired AS (
            SELECT p.route, p.backend AS pb, s.backend AS sb, p.request_id, p.idx,
                   s.score - p.score AS d, {differs} AS differs,
                   max(p.idx) OVER (PARTITION BY p.request_id, p.backend, s.backend) AS last_idx
            FROM pm p JOIN sm s ON s.request_id = p.request_id AND s.route = p.route
                 AND s.k = p.k),
        counts AS ({_stream_counts(con, calls_where, primary)}),
        streams AS (
            SELECT p.route, p.backend AS pb, s.backend AS sb, p.request_id,
                   p.status <> 'OK' OR s.status <> 'OK' AS cut,
                   p.status = 'OK' AND s.status = 'OK' AND p.n <> s.n AS mismatch,
                   greatest(p.n - s.n, 0) AS only_p, greatest(s.n - p.n, 0) AS only_s
            FROM counts p JOIN counts s ON s.request_id = p.request_id AND s.route = p.route
                 AND p.side = 'p' AND s.side = 's'),
        per_stream AS (
            SELECT route, pb, sb, request_id, count(*) AS n, count(*) FILTER (WHERE differs)
                   AS differ
            FROM paired GROUP BY ALL)
        SELECT s.route, s.pb, s.sb,
               count(*) AS streams,
               count(*) FILTER (WHERE ps.differ > 0) AS streams_differ,
               count(*) FILTER (WHERE s.cut) AS cut,
               count(*) FILTER (WHERE s.mismatch) AS length_mismatch,
               sum(s.only_p) AS only_primary, sum(s.only_s) AS only_shadow,
               (SELECT count(*) FROM paired x WHERE x.route = s.route AND x.pb = s.pb
                AND x.sb = s.sb) AS n,
               (SELECT count(*) FILTER (WHERE differs) FROM paired x WHERE x.route = s.route
                AND x.pb = s.pb AND x.sb = s.sb) AS differ,
               (SELECT avg(d) FROM paired x WHERE x.route = s.route AND x.pb = s.pb
                AND x.sb = s.sb AND isfinite(d)) AS mean_diff,
               (SELECT max(abs(d)) FROM paired x WHERE x.route = s.route AND x.pb = s.pb
                AND x.sb = s.sb AND isfinite(d)) AS max_abs,
               (SELECT count(*) FILTER (WHERE differs AND idx = 0) FROM paired x
                WHERE x.route = s.route AND x.pb = s.pb AND x.sb = s.sb) AS at_first,
               (SELECT count(*) FILTER (WHERE differs AND idx = last_idx AND idx > 0)
                FROM paired x WHERE x.route = s.route AND x.pb = s.pb AND x.sb = s.sb)
                   AS at_last
        FROM streams s LEFT JOIN per_stream ps ON ps.route = s.route AND ps.pb = s.pb
             AND ps.sb = s.sb AND ps.request_id = s.request_id
        GROUP BY s.route, s.pb, s.sb
    """
    found: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description or []]
    for values in cursor.fetchall():
        row = dict(zip(names, values, strict=True))
        n, differ = int(row["n"]), int(row["differ"])
        first, last = int(row["at_first"]), int(row["at_last"])
        found[(row["route"], row["pb"], row["sb"])] = {
            "streams": {"n": int(row["streams"]), "differ": int(row["streams_differ"]),
                        "cut": int(row["cut"]), "length_mismatch": int(row["length_mismatch"]),
                        "only_primary_messages": int(row["only_primary"] or 0),
                        "only_shadow_messages": int(row["only_shadow"] or 0)},
            "messages": {"n": n, "differ": differ, "diff_rate": differ / n if n else None,
                         "mean_diff": row["mean_diff"], "max_abs": row["max_abs"],
                         "differ_at": {"first": first, "middle": differ - first - last,
                                       "last": last}},
        }
    return found


def stream_field_base(calls_where: str, route: str, primary: str) -> str:
    """SQL in the fields report's shape (request_id, route, backend, role, served, j) over
    the route's stream messages: one row per message, its request id suffixed with the
    pairing key, so the report's field comparison pairs messages, not merged streams."""
    return f"""
        SELECT m.request_id || '#' || coalesce(m.key, m.idx::VARCHAR) AS request_id,
               m.route, m.backend, m.role, c.served, try_cast(m.message_json AS JSON) AS j
        FROM stream_messages m JOIN (
            SELECT request_id, backend, role, served FROM calls
            WHERE ({primary} OR role IN ('shadow', 'replay')) AND {calls_where}
        ) c ON c.request_id = m.request_id AND c.backend = m.backend AND c.role = m.role
        WHERE m.direction = 'response' AND m.message_json IS NOT NULL
              AND m.route = {sql_quote(route)}
    """


def stream_routes(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Routes with recorded response messages."""
    if not has_streams(con):
        return set()
    rows = con.execute(
        "SELECT DISTINCT route FROM stream_messages WHERE direction = 'response'").fetchall()
    return {str(r[0]) for r in rows}


def attach_streams(
    con: duckdb.DuckDBPyConnection, pairs: list[Any], calls_where: str, primary: str,
    atol: float, rtol: float,
) -> tuple[list[Any], bool]:
    """The divergence report's pairs with their ``streams`` figures (pairs not split by
    segment), and whether any pair has some."""
    if not has_streams(con):
        return pairs, False
    return with_streams(pairs, stream_divergence(con, calls_where, primary, atol, rtol))


def with_streams(pairs: list[Any], figures: Mapping[tuple[Any, Any, Any], dict[str, Any]],
                 ) -> tuple[list[Any], bool]:
    """``pairs`` with the ``streams`` figures of their (route, primary, shadow), pairs split
    by segment left without, and whether any pair has some (both engines' last step)."""
    out, found = [], False
    for pair in pairs:
        fig = None if pair.segment is not None else figures.get(
            (pair.route, pair.primary, pair.shadow))
        if fig is not None:
            pair, found = replace(pair, streams=fig), True
        out.append(pair)
    return out, found
