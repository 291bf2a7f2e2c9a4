"""The divergence report's pair table on DuckDB: the calls joined once, every reduction read
from it.

Each shadow call is joined to its primary's call on ``request_id`` once, into a temporary
table one narrow row per shadow call wide: small integer ids for (route, shadow) and the
primary backend instead of their names, the finite scores, the label pair, the latency
ratio, the answers' hash equality and (with output vectors) the Jensen-Shannon term. The
moments, label cells and identical answers are one ``GROUP BY`` of it; each pair's two
score columns come back once for :mod:`analysis.paired_figures` while they fit the budget
(else :mod:`analysis.distribution_engine`'s reductions read the table). The table spills to
DuckDB's temporary directory past ``--memory-limit``, and past three times it the join runs
in passes over shares of the request ids (:func:`join_passes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from analysis.load import sql_quote
from analysis.stream_diff import _vector_out

if TYPE_CHECKING:
    import ibis.expr.types as ir

__all__ = [
    "PAIRS_TABLE",
    "PairIds",
    "finite_pairs",
    "finite_sizes",
    "identical_counts",
    "join_passes",
    "materialize_pairs",
    "pair_rows",
    "score_columns",
    "whole_vectors",
]

#: The temporary table of one report's pairs (dropped when the report is done).
PAIRS_TABLE = "shadowcar_divergence_pairs"
#: The segment value of calls without one (a join on the groups does not match NULLs).
NULL_SEG = "\x00"

_JS_VALID = """(len(p.output) = len(s.output) AND len(p.output) >= 2
    AND list_min(p.output) >= 0 AND list_min(s.output) >= 0
    AND list_sum(p.output) > 0 AND list_sum(s.output) > 0)"""
# Jensen-Shannon divergence in bits of the normalised vectors; 0 * ln(0) counts as 0.
_P = "(p.output[i] / list_sum(p.output))"
_S = "(s.output[i] / list_sum(s.output))"
_JS = f"""list_sum(list_transform(generate_series(1, len(p.output)), lambda i:
    (CASE WHEN p.output[i] > 0 THEN {_P} * ln({_P} / (({_P} + {_S}) / 2)) ELSE 0 END
   + CASE WHEN s.output[i] > 0 THEN {_S} * ln({_S} / (({_P} + {_S}) / 2)) ELSE 0 END
    ) / 2)) / ln(2)"""


@dataclass(frozen=True)
class PairIds:
    """Small integer ids of the (route, shadow backend) and primary backend names, taken
    from the operations pass (which groups the same calls by route and backend), so the
    pair table carries two SMALLINTs instead of three strings per row."""

    shadows: tuple[tuple[str | None, str | None], ...]
    primaries: tuple[str, ...]
    #: primary calls in the selection (sizes the pair join)
    primary_calls: int = 0

    @staticmethod
    def scan(con: duckdb.DuckDBPyConnection, where: str, primary_sql: str) -> PairIds:
        """The ids of the shadow (route, backend) and primary backend names in the calls
        selected by ``where`` (one cheap grouping; the operations pass runs beside the
        pair join, not before it)."""
        def key(value: str | None) -> tuple[bool, str]:
            return value is None, value or ""

        found = con.execute(f"""
            SELECT route, backend, role IN ('shadow', 'replay') AS shadow, count(*) FROM calls
            WHERE (role IN ('shadow', 'replay') OR {primary_sql}) AND {where}
            GROUP BY ALL""").fetchall()
        shadows = sorted({(r, b) for r, b, shadow, _ in found if shadow},
                         key=lambda rb: (key(rb[0]), key(rb[1])))
        primaries = sorted({b for _, b, shadow, _ in found if not shadow and b is not None})
        calls = sum(int(n) for _, _, shadow, n in found if not shadow)
        return PairIds(tuple(shadows), tuple(primaries), calls)

    def shadow_sql(self) -> str:
        """The id of a shadow call's (route, backend), from its own columns."""
        if not self.shadows:
            return "NULL::SMALLINT"
        whens = " ".join(
            f"WHEN route IS NOT DISTINCT FROM {_literal(r)} AND backend IS NOT DISTINCT "
            f"FROM {_literal(b)} THEN {i}" for i, (r, b) in enumerate(self.shadows))
        return f"CASE {whens} END::SMALLINT"

    def primary_sql(self) -> str:
        """The id of a primary call's backend (NULL: no backend), from its own columns."""
        if not self.primaries:
            return "NULL::SMALLINT"
        whens = " ".join(f"WHEN {sql_quote(b)} THEN {i}" for i, b in enumerate(self.primaries))
        return f"CASE backend {whens} END::SMALLINT"

    def names(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` (with ``sid``, ``pid`` and ``seg``) with route, pb, sb and seg instead, and
        its ids as ``_key``."""
        sid, pid = row.pop("sid"), row.pop("pid")
        route, sb = self.shadows[sid] if sid is not None else (None, None)
        seg = row.get("seg")
        return {**row, "route": route, "sb": sb, "_key": (sid, pid, seg),
                "pb": self.primaries[pid] if pid is not None else None,
                "seg": None if seg is None or seg == NULL_SEG else seg}


def _literal(value: str | None) -> str:
    return "NULL" if value is None else sql_quote(value)


def materialize_pairs(
    con: duckdb.DuckDBPyConnection, base: Callable[[str], str], join: str, seg: str | None,
    *, vectors: bool, hashes: bool, atol: float, rtol: float, passes: int = 1,
) -> None:
    """Join every shadow call to its primary once, into :data:`PAIRS_TABLE`.

    ``base(part)`` selects the primary calls as ``prim`` and the shadow calls as ``shad``,
    both with the condition ``part`` (the pass's share of the request ids,
    :func:`join_passes`), each with its id (:meth:`PairIds.primary_sql`,
    :meth:`PairIds.shadow_sql`: two small integers through the join instead of three names,
    a quarter of its time).

    ``seg`` is the segment's SQL (None: no segment column); ``vectors`` adds the output
    vectors' flags, Jensen-Shannon term and whole-vector tolerance
    (:func:`analysis.stream_diff.vector_tolerance`'s rule), ``hashes`` the answers' hash
    equality."""
    p_out, s_out = ("p.output", "s.output") if vectors else ("NULL", "NULL")
    both = "isfinite(p.score) AND isfinite(s.score)"
    columns = [
        "s.sid", "p.pid",
        *([f"coalesce({seg}, {sql_quote(NULL_SEG)}) AS seg"] if seg is not None else []),
        # NULL where a figure does not apply: the aggregates skip NULLs without a FILTER
        "CASE WHEN p.request_id IS NOT NULL THEN true END AS matched",
        f"CASE WHEN {both} THEN p.score END AS ps",
        f"CASE WHEN {both} THEN s.score END AS ss",
        "CASE WHEN p.score IS NOT NULL AND s.score IS NOT NULL "
        f"AND NOT ({both}) THEN true END AS nonfinite",
        f"""CASE WHEN p.request_id IS NOT NULL
            AND ((p.score IS NULL AND p.label IS NULL AND {p_out} IS NULL)
                 OR (s.score IS NULL AND s.label IS NULL AND {s_out} IS NULL))
            THEN true END AS empty""",
        "p.label AS pl", "s.label AS sl",
        "CASE WHEN p.latency_ms > 0 AND s.latency_ms >= 0 "
        "THEN s.latency_ms / p.latency_ms END AS ratio",
    ]
    if hashes:
        columns.append("p.response_hash = s.response_hash AS same")
    if vectors:
        whole = ("p.output IS NOT NULL AND s.output IS NOT NULL "
                 "AND (len(p.output) > 1 OR len(s.output) > 1)")
        columns += [f"CASE WHEN {p_out} IS NOT NULL AND {s_out} IS NOT NULL THEN true END"
                    " AS vectors", f"CASE WHEN {_JS_VALID} THEN {_JS} END AS js",
                    f"CASE WHEN {whole} THEN true END AS v_n",
                    f"CASE WHEN {whole} AND {_vector_out(atol, rtol)} THEN true END AS v_out",
                    f"CASE WHEN {whole} AND len(p.output) <> len(s.output) THEN true END"
                    " AS v_len"]
    for part, condition in enumerate(_parts(passes)):
        query = f"{base(condition)} SELECT {', '.join(columns)} {join}"
        con.execute(f"CREATE OR REPLACE TEMP TABLE {PAIRS_TABLE} AS {query}" if part == 0
                    else f"INSERT INTO {PAIRS_TABLE} {query}")


def join_passes(primary_calls: int, memory_limit_bytes: float) -> int:
    """How many passes the pair join takes: one while the primaries' side of the join is
    within :data:`_JOIN_SPILL` times the memory limit (DuckDB spills the rest), else as many
    as keep each pass's share there. DuckDB's own spilling hash join ran out of memory on
    100M primaries at the 600MB default; four passes of a quarter each completed."""
    need = primary_calls * _JOIN_ROW_BYTES
    return max(1, math.ceil(need / (_JOIN_SPILL * max(memory_limit_bytes, 1.0))))


#: Bytes a primary call takes in the join's build side (request id, scores, label, latency).
_JOIN_ROW_BYTES = 64
#: The build side DuckDB's spilling join handled per pass, in multiples of the memory limit
#: (10M primaries at 600MB: 1.1x; 25M: 2.8x).
_JOIN_SPILL = 3.0


def _parts(passes: int) -> list[str]:
    """Each pass's condition on ``request_id`` (a pair's two calls share it, so a shadow call
    and its primary always fall in the same pass)."""
    if passes <= 1:
        return ["true"]
    return [f"hash(request_id) % {passes} = {k}" for k in range(passes)]


def pair_rows(
    con: duckdb.DuckDBPyConnection, ids: PairIds, atol: float, rtol: float, *, segment: bool,
    vectors: bool, budget: float,
) -> list[dict[str, Any]]:
    """Per (route, primary, shadow[, segment]): the moments, counts and label cells of
    :func:`analysis.divergence._build_pair`, from :data:`PAIRS_TABLE`, in the report's order
    (route, shadow, primary with NULL last, segment).

    The median latency ratio is DuckDB's ``quantile_cont`` while the table's ratios fit
    ``budget`` bytes (it holds a group's every value), else order statistics of a sort that
    spills (:func:`analysis.operations.ordered_quantiles`)."""
    (total,) = con.execute(f"SELECT count(*) FROM {PAIRS_TABLE}").fetchall()[0]
    in_memory = int(total) * 8 <= budget
    median = "quantile_cont(ratio, 0.5)" if in_memory else "NULL::DOUBLE"
    seg = "" if segment else f"{sql_quote(NULL_SEG)} AS seg, "
    js = ("count(vectors) AS n_vectors, count(js) AS n_js, fsum(js) AS sum_js, "
          "count(v_n) AS v_n, count(v_out) AS v_out, count(v_len) AS v_len" if vectors
          else "0 AS n_vectors, 0 AS n_js, NULL::DOUBLE AS sum_js, 0 AS v_n")
    cursor = con.execute(f"""
        SELECT sid, pid, seg,
            count(*) - count(matched) AS unmatched,
            count(matched) AS matched,
            count(d) AS n,
            count(nonfinite) AS n_nonfinite,
            count(empty) AS n_without_output,
            fsum(d) AS sum_d,
            var_samp(d) AS var_d,
            sum(abs(d)) AS sum_abs_d,
            sum(d * d) AS sum_d2,
            max(abs(d)) AS max_abs,
            corr(ss, ps) AS pearson,
            min(ps) < max(ps) AS p_varies,
            min(ss) < max(ss) AS s_varies,
            count(out) AS n_out,
            count(agree) AS n_labels,
            count(agree) FILTER (WHERE agree) AS n_agree,
            histogram(label_pair) AS label_pairs,
            {js},
            count(ratio) AS n_ratio,
            {median} AS latency_ratio
        FROM (
            SELECT *, CASE WHEN abs(d) > {atol!r} + {rtol!r} * abs(ps) THEN true END AS out,
                CASE WHEN agree IS NOT NULL THEN {{'p': pl, 's': sl}} END AS label_pair
            FROM (SELECT *, {seg}ss - ps AS d, pl = sl AS agree FROM {PAIRS_TABLE})
        )
        GROUP BY ALL""")
    names = [d[0] for d in cursor.description or []]
    found = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    if not in_memory:
        from analysis.operations import ordered_quantiles

        seg_key = "seg" if segment else f"{sql_quote(NULL_SEG)} AS seg"
        medians = ordered_quantiles(
            con, f"SELECT sid, pid, {seg_key}, ratio AS v FROM {PAIRS_TABLE} "
            "WHERE ratio IS NOT NULL", ["sid", "pid", "seg"],
            {(r["sid"], r["pid"], r["seg"]): int(r["n_ratio"]) for r in found}, [0.5])
        for r in found:
            median_of = medians.get((r["sid"], r["pid"], r["seg"]))
            r["latency_ratio"] = median_of[0] if median_of else None
    return sorted((ids.names(r) for r in found), key=_order)


def _order(row: dict[str, Any]) -> tuple[Any, ...]:
    def last(value: Any) -> tuple[bool, Any]:
        return value is None, "" if value is None else value

    return (*last(row["route"]), *last(row["sb"]), *last(row["pb"]), *last(row["seg"]))


def whole_vectors(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, int]]:
    """:func:`analysis.stream_diff.vector_tolerance`'s figures from :func:`pair_rows`:
    (route, primary, shadow, segment) -> n, out_of_tolerance, length_mismatch."""
    return {(r["route"], r["pb"], r["sb"], r["seg"]): {
        "n": int(r["v_n"]), "out_of_tolerance": int(r["v_out"]),
        "length_mismatch": int(r["v_len"])} for r in rows if r["v_n"]}


def identical_counts(con: duckdb.DuckDBPyConnection,
                     ids: PairIds) -> dict[tuple[Any, ...], tuple[int, int]]:
    """(route, primary, shadow) -> (pairs whose answers both have a hash, identical ones)."""
    found: dict[tuple[Any, ...], tuple[int, int]] = {}
    for sid, pid, n, same in con.execute(f"""
            SELECT sid, pid, count(same), count(same) FILTER (WHERE same)
            FROM {PAIRS_TABLE} WHERE pid IS NOT NULL GROUP BY ALL""").fetchall():
        if n:
            route, sb = ids.shadows[sid]
            found[(route, ids.primaries[pid], sb)] = (int(n), int(same))
    return found


def finite_pairs(segment: bool) -> ir.Table:
    """The matched pairs with finite scores on both sides, for
    :func:`analysis.distribution_engine.score_figures` (keys sid, pid and seg)."""
    import ibis

    schema = {"sid": "int16", "pid": "int16", **({"seg": "string"} if segment else {}),
              "ps": "float64", "ss": "float64"}
    t = ibis.table(schema, name=PAIRS_TABLE)
    return t.filter(t.ps.notnull() & t.pid.notnull())


def finite_sizes(con: duckdb.DuckDBPyConnection, *,
                 segment: bool) -> dict[tuple[Any, ...], int]:
    """(sid, pid, seg) -> the matched pairs with finite scores on both sides (seg is
    :data:`NULL_SEG` without a segment, as in :func:`pair_rows`'s keys)."""
    seg = "seg" if segment else f"{sql_quote(NULL_SEG)} AS seg"
    return {(sid, pid, s): int(n) for sid, pid, s, n in con.execute(f"""
        SELECT sid, pid, {seg}, count(*) FROM {PAIRS_TABLE}
        WHERE ps IS NOT NULL AND pid IS NOT NULL GROUP BY ALL""").fetchall()}


def score_columns(con: duckdb.DuckDBPyConnection, keys: list[tuple[Any, ...]], *,
                  segment: bool) -> Iterator[tuple[tuple[Any, ...], np.ndarray, np.ndarray]]:
    """Each key's (``(sid, pid, seg)`` of :func:`pair_rows`) finite primary and shadow scores
    as numpy columns, one key at a time (one scan of the narrow pair table each)."""
    for key in keys:
        sid, pid, seg = key
        cond, params = "ps IS NOT NULL AND sid = ? AND pid = ?", [sid, pid]
        if segment:
            cond, params = cond + " AND seg = ?", [*params, seg]
        arrays = con.execute(f"SELECT ps, ss FROM {PAIRS_TABLE} WHERE {cond}",
                             params).fetchnumpy()
        yield (key, np.asarray(arrays["ps"], dtype=np.float64),
               np.asarray(arrays["ss"], dtype=np.float64))
