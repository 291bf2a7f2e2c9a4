"""Comparisons the divergence and fields reports make beyond one scalar per call: whole output
vectors element by element, and streams message by message (docs/streams.md).

Runs on the DuckDB engine only (``--engine spark`` refuses the reports that use it).
"""

from __future__ import annotations

from typing import Any

import duckdb

__all__ = ["VECTOR_NOTE", "vector_tolerance"]

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

