"""How often a shadow's answer is byte-identical to the primary's, per pair of backends.

Both engines reduce the joined calls to (route, primary, shadow) -> (n, same); this module
turns those counts into each pair's share with a Wilson interval.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import duckdb

from analysis.distribution import wilson_interval
from analysis.load import PRIMARY_SQL

if TYPE_CHECKING:
    from analysis.divergence import PairDivergence


def attach_identical(
    con: duckdb.DuckDBPyConnection, where: str, pairs: list[PairDivergence]
) -> list[PairDivergence]:
    """Share of matched pairs whose answers are byte-identical, counted in DuckDB."""
    rows = con.execute(f"""
        WITH prim AS (SELECT request_id, backend, response_hash FROM calls
                      WHERE {PRIMARY_SQL} AND {where} AND response_hash IS NOT NULL),
             shad AS (SELECT request_id, route, backend, response_hash FROM calls
                      WHERE role IN ('shadow', 'replay') AND {where}
                        AND response_hash IS NOT NULL)
        SELECT s.route, p.backend, s.backend, count(*),
               count(*) FILTER (WHERE p.response_hash = s.response_hash)
        FROM shad s JOIN prim p USING (request_id) GROUP BY ALL
    """).fetchall()
    return with_identical(pairs, {(r[0], r[1], r[2]): (int(r[3]), int(r[4])) for r in rows})


def with_identical(
    pairs: list[PairDivergence], found: dict[tuple[Any, ...], tuple[int, int]]
) -> list[PairDivergence]:
    """Each pair with its identical-answer share, from (route, primary, shadow) -> (n, same)."""
    out = []
    for pair in pairs:
        n, same = found.get((pair.route, pair.primary, pair.shadow), (0, 0))
        identical = None
        if n:
            identical = {"n": n, "identical": same, "rate": same / n,
                         "rate_ci": list(wilson_interval(same, n) or (None, None))}
        out.append(replace(pair, identical=identical))
    return out
