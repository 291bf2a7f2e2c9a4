"""Output vectors in the divergence report, as Ibis expressions: the same figures on DuckDB and
Spark.

Mirrors the vector parts of :func:`analysis.divergence.analyze_divergence` (its ``_pair_rows``
SQL and :func:`analysis.stream_diff.vector_tolerance`): per pair of calls, the
Jensen-Shannon divergence of the two normalised output vectors and whether the whole vectors
are within tolerance, computed on the arrays in the engine (Ibis ``zip``/``map``/``sums``:
DuckDB list functions, Spark ``arrays_zip``/``transform``/``aggregate``), then reduced per
(route, primary, shadow, segment) to a few counts and one sum. Nothing that grows with the
rows comes back.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from analysis.engine import Engine
from analysis.load import AnalysisSourceError

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from analysis.divergence import PairDivergence

__all__ = ["NULL_SEG", "has_vectors", "segment_value", "vector_out", "vector_rows",
           "with_vectors"]

#: The group key of a NULL segment value (as :mod:`analysis.divergence_engine`'s rows).
NULL_SEG = "\x00"
_LN2 = math.log(2.0)

VectorKey = tuple[Any, Any, Any, Any]


def has_vectors(engine: Engine, table: str = "calls") -> bool:
    """Whether ``table`` records an output vector anywhere (DuckDB's ``has_vectors`` rule)."""
    if "output" not in engine.columns(table):
        return False
    t = engine.table(table)
    return bool(engine.scalar(t.filter(t.output.notnull()).count()))


def segment_value(engine: Engine, s: ir.Table, segment: str | None) -> tuple[ir.Table, Any]:
    """The shadow rows ``s`` (a filtered ``calls``) and their segment value as a string
    column (from the call, else from its request), as the divergence report reads it."""
    import ibis

    if segment is None:
        return s, ibis.null("string")
    if segment in engine.columns("calls"):
        return s, s[segment].cast("string")
    if engine.has("requests") and segment in engine.columns("requests"):
        r = engine.table("requests")
        r = r.select(r_rid=r.request_id, r_seg=r[segment].cast("string"))
        s = s.left_join(r, s.request_id == r.r_rid)
        return s, s.r_seg
    raise AnalysisSourceError(f"segment {segment!r} is not a column of calls or requests")


def vector_out(po: ir.ArrayValue, so: ir.ArrayValue, atol: float,
               rtol: float) -> ir.BooleanValue:
    """True when two present output vectors differ in length or in any element beyond
    ``atol + rtol * |p|`` (NaN is beyond): :func:`analysis.stream_diff._vector_out`."""
    import ibis

    a, r = ibis.literal(atol, type="float64"), ibis.literal(rtol, type="float64")
    close = po.zip(so).map(lambda z: (z.f2 - z.f1).abs() <= a + r * z.f1.abs())
    return (po.length() != so.length()) | ~close.alls().fill_null(True)


def _js(po: ir.ArrayValue, so: ir.ArrayValue) -> ir.FloatingValue:
    """Jensen-Shannon divergence in bits of two valid vectors (DuckDB's ``_JS``)."""
    import ibis

    sp, ss = po.sums(), so.sums()
    zero = ibis.literal(0.0, type="float64")

    def term(z: Any) -> Any:
        p, s = z.f1 / sp, z.f2 / ss
        m = (p + s) / 2
        return (ibis.ifelse(z.f1 > 0, p * (p / m).ln(), zero)
                + ibis.ifelse(z.f2 > 0, s * (s / m).ln(), zero)) / 2

    return po.zip(so).map(term).sums() / ibis.literal(_LN2, type="float64")


def vector_rows(
    engine: Engine, calls: ir.Table, cond: ir.BooleanValue, primary: ir.BooleanValue,
    shadow_role: ir.BooleanValue, segment: str | None, atol: float, rtol: float,
    rows: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[VectorKey, dict[str, int]]]:
    """The divergence engine's pair rows with their vector figures (``n_vectors``, ``n_js``,
    ``sum_js``; ``n_without_output`` counting an output as an answer), and the whole-vector
    tolerance per (route, primary, shadow, segment) of :func:`vector_tolerance`'s form.

    Without any output vector the rows are returned as they are."""
    import ibis

    if not rows or not has_vectors(engine):
        return rows, {}
    p = calls.filter(cond & primary).select(
        p_rid=calls.request_id, pb=calls.backend, p_score=calls.score, pl=calls.label,
        po=calls.output)
    s, seg = segment_value(engine, calls.filter(cond & shadow_role), segment)
    s = s.select(request_id=s.request_id, route=s.route, sb=s.backend, s_score=s.score,
                 sl=s.label, so=s.output, seg=seg.fill_null(NULL_SEG))
    j = s.left_join(p, s.request_id == p.p_rid)
    matched = j.p_rid.notnull()
    p_empty = j.p_score.isnull() & j.pl.isnull() & j.po.isnull()
    s_empty = j.s_score.isnull() & j.sl.isnull() & j.so.isnull()
    both = j.po.notnull() & j.so.notnull()
    valid = (both & (j.po.length() == j.so.length()) & (j.po.length() >= 2)
             & (j.po.mins() >= 0) & (j.so.mins() >= 0) & (j.po.sums() > 0) & (j.so.sums() > 0))
    js = ibis.ifelse(valid, _js(j.po, j.so), ibis.null("float64"))
    whole = matched & both & ((j.po.length() > 1) | (j.so.length() > 1))
    lengths = j.po.length() != j.so.length()
    j = j.mutate(js=js, whole=whole, out=whole & vector_out(j.po, j.so, atol, rtol),
                 lengths=whole & lengths, empty=matched & (p_empty | s_empty), both=both)
    agg = j.aggregate(
        by=["route", "pb", "sb", "seg"], n_vectors=j.count(where=j.both), n_js=j.js.count(),
        sum_js=j.js.sum(), n_without_output=j.count(where=j.empty),
        v_n=j.count(where=j.whole), v_out=j.count(where=j.out),
        v_len=j.count(where=j.lengths))
    found = {(r["route"], r["pb"], r["sb"], r["seg"]): r for r in engine.rows(agg)}
    out = []
    whole_found: dict[VectorKey, dict[str, int]] = {}
    for row in rows:
        key = (row["route"], row["pb"], row["sb"], row["seg"])
        fig = found.get(key)
        if fig is None:
            out.append(row)
            continue
        out.append({**row, "n_vectors": int(fig["n_vectors"]), "n_js": int(fig["n_js"]),
                    "sum_js": fig["sum_js"], "n_without_output": int(fig["n_without_output"])})
        if fig["v_n"]:
            seg_key = None if row["seg"] == NULL_SEG else row["seg"]
            whole_found[(row["route"], row["pb"], row["sb"], seg_key)] = {
                "n": int(fig["v_n"]), "out_of_tolerance": int(fig["v_out"]),
                "length_mismatch": int(fig["v_len"])}
    return out, whole_found


def with_vectors(pairs: list[PairDivergence],
                 whole: dict[VectorKey, dict[str, int]]) -> list[PairDivergence]:
    """Pairs with output vectors judged whole (issue 20.7): their ``vectors`` figures, and
    out_of_tolerance over whole vectors rather than ``output[score_index]``."""
    if not whole:
        return pairs
    out = []
    for pair in pairs:
        seg = None if pair.segment is None else pair.segment.get("value")
        vec = whole.get((pair.route, pair.primary, pair.shadow, seg))
        if vec is not None:
            numeric = pair.numeric and replace(
                pair.numeric, out_of_tolerance=vec["out_of_tolerance"] / vec["n"])
            pair = replace(pair, vectors=vec, numeric=numeric)
        out.append(pair)
    return out
