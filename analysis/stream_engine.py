"""Recorded streams compared message by message, as Ibis expressions: the divergence report's
``streams`` figures on DuckDB and Spark alike.

Mirrors :func:`analysis.stream_diff.stream_divergence` rule for rule: a shadow's response
message pairs with the primary's of the same index (or ``stream_key`` value); a message
differs by score beyond tolerance, label, whole output vector or, for a message with none of
those, its decoded JSON; streams are cut when a side did not end OK and mismatched when both
ended OK with different lengths. The engine returns a few counts per (route, primary,
shadow).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from analysis.engine import Engine
from analysis.stream_diff import with_streams
from analysis.vector_engine import vector_out

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from analysis.divergence import PairDivergence

__all__ = ["attach_streams_engine", "stream_divergence_engine", "stream_messages"]

StreamKey = tuple[Any, Any, Any]


def stream_messages(engine: Engine, calls: ir.Table, cond: ir.BooleanValue,
                    primary: ir.BooleanValue, shadow_role: ir.BooleanValue) -> ir.Table | None:
    """The response messages of recorded streams with their call's status, side (``p``
    primary, ``s`` shadow or replay), served flag and pairing key ``k``; None without a
    stream_messages table (:func:`analysis.stream_diff.stream_messages_sql`)."""
    import ibis

    if not engine.has("stream_messages"):
        return None
    served = calls.served if "served" in engine.columns("calls") else ibis.null("boolean")
    c = calls.filter((primary | shadow_role) & cond).select(
        c_rid=calls.request_id, c_backend=calls.backend, c_role=calls.role,
        call_status=calls.status, served=served,
        side=ibis.ifelse(primary, "p", "s"))
    m = engine.table("stream_messages")
    m = m.filter(m.direction == "response")
    j = m.inner_join(c, (c.c_rid == m.request_id) & (c.c_backend == m.backend)
                     & (c.c_role == m.role))
    return j.select(request_id=j.request_id, route=j.route, backend=j.backend, role=j.role,
                    idx=j.idx, k=ibis.coalesce(j.key, j.idx.cast("string")), score=j.score,
                    label=j.label, output=j.output, message_json=j.message_json,
                    call_status=j.call_status, served=j.served, side=j.side)


def _differs(p: ir.Table, s: ir.Table, atol: float, rtol: float) -> ir.BooleanValue:
    import ibis

    a, r = ibis.literal(atol, type="float64"), ibis.literal(rtol, type="float64")
    both = p.output.notnull() & s.output.notnull()
    return (((s.score - p.score).abs() > a + r * p.score.abs())
            | (p.score.isnull() != s.score.isnull())
            | ~p.label.identical_to(s.label)
            | (both & vector_out(p.output, s.output, atol, rtol))
            | (p.output.isnull() != s.output.isnull())
            | (p.score.isnull() & p.label.isnull() & p.output.isnull()
               & ~p.message_json.identical_to(s.message_json)))


def _stream_counts(engine: Engine, calls: ir.Table, cond: ir.BooleanValue,
                   primary: ir.BooleanValue, shadow_role: ir.BooleanValue) -> ir.Table:
    """Each streaming call's route, request id, backend, side, status and kept response
    messages, 0 when none was kept (:func:`analysis.stream_diff._stream_counts`)."""
    import ibis

    m = engine.table("stream_messages")
    m = m.filter(m.direction == "response")
    kept = m.aggregate(by=["request_id", "backend", "role"], k_n=m.count()).rename(
        k_rid="request_id", k_backend="backend", k_role="role")
    c = calls.filter((primary | shadow_role) & cond)
    recorded = (c.messages.notnull() if "messages" in engine.columns("calls")
                else ibis.literal(False))
    c = c.select(route=c.route, request_id=c.request_id, backend=c.backend, role=c.role,
                 status=c.status, side=ibis.ifelse(primary, "p", "s"), recorded=recorded)
    j = c.left_join(kept, (kept.k_rid == c.request_id) & (kept.k_backend == c.backend)
                    & (kept.k_role == c.role))
    j = j.filter(j.k_n.notnull() | j.recorded)  # a kept message, or recorded as a stream
    return j.select(route=j.route, request_id=j.request_id, backend=j.backend, side=j.side,
                    status=j.status, n=ibis.coalesce(j.k_n, 0))


def stream_divergence_engine(
    engine: Engine, calls: ir.Table, cond: ir.BooleanValue, primary: ir.BooleanValue,
    shadow_role: ir.BooleanValue, atol: float, rtol: float,
) -> dict[StreamKey, dict[str, Any]]:
    """Per (route, primary, shadow): the streams' message-by-message figures of
    :func:`analysis.stream_diff.stream_divergence`."""
    import ibis

    msgs = stream_messages(engine, calls, cond, primary, shadow_role)
    if msgs is None:
        return {}
    pm = msgs.filter(msgs.side == "p")
    sm = msgs.filter(msgs.side == "s").view()
    pj = pm.inner_join(sm, (sm.request_id == pm.request_id) & (sm.route == pm.route)
                       & (sm.k == pm.k))
    paired = pj.select(route=pm.route, pb=pm.backend, sb=sm.backend, request_id=pm.request_id,
                       idx=pm.idx, d=sm.score - pm.score, differs=_differs(pm, sm, atol, rtol))
    paired = paired.mutate(last_idx=paired.idx.max().over(
        group_by=[paired.request_id, paired.pb, paired.sb]))
    finite = paired.d.notnull() & ~paired.d.isnan() & ~paired.d.isinf()
    hit = paired.differs.fill_null(False)
    keys = ["route", "pb", "sb"]
    messages = paired.aggregate(
        by=keys, n=paired.count(), differ=paired.count(where=hit),
        mean_diff=paired.d.mean(where=finite), max_abs=paired.d.abs().max(where=finite),
        at_first=paired.count(where=hit & (paired.idx == 0)),
        at_last=paired.count(where=hit & (paired.idx == paired.last_idx) & (paired.idx > 0)))
    per_stream = paired.aggregate(by=[*keys, "request_id"], differ=paired.count(where=hit))
    counts = _stream_counts(engine, calls, cond, primary, shadow_role)
    cp = counts.filter(counts.side == "p")
    cs = counts.filter(counts.side == "s").view()
    sj = cp.inner_join(cs, (cs.request_id == cp.request_id) & (cs.route == cp.route))
    zero = ibis.literal(0, type="int64")
    streams = sj.select(
        route=cp.route, pb=cp.backend, sb=cs.backend, s_rid=cp.request_id,
        cut=(cp.status != "OK") | (cs.status != "OK"),
        mismatch=(cp.status == "OK") & (cs.status == "OK") & (cp.n != cs.n),
        only_p=ibis.greatest(cp.n - cs.n, zero), only_s=ibis.greatest(cs.n - cp.n, zero))
    ps = per_stream.rename(ps_route="route", ps_pb="pb", ps_sb="sb", ps_rid="request_id")
    st = streams.left_join(ps, (ps.ps_route == streams.route) & (ps.ps_pb == streams.pb)
                           & (ps.ps_sb == streams.sb) & (ps.ps_rid == streams.s_rid))
    per_pair = st.aggregate(
        by=keys, streams=st.count(), streams_differ=st.count(where=st.differ > 0),
        cut=st.count(where=st.cut), length_mismatch=st.count(where=st.mismatch),
        only_primary=st.only_p.sum(), only_shadow=st.only_s.sum())
    by_key = {tuple(r[k] for k in keys): r for r in engine.rows(messages)}
    found: dict[StreamKey, dict[str, Any]] = {}
    for row in engine.rows(per_pair):
        key = (row["route"], row["pb"], row["sb"])
        m = by_key.get(key, {})
        n, differ = int(m.get("n") or 0), int(m.get("differ") or 0)
        first, last = int(m.get("at_first") or 0), int(m.get("at_last") or 0)
        found[key] = {
            "streams": {"n": int(row["streams"]), "differ": int(row["streams_differ"]),
                        "cut": int(row["cut"]), "length_mismatch": int(row["length_mismatch"]),
                        "only_primary_messages": int(row["only_primary"] or 0),
                        "only_shadow_messages": int(row["only_shadow"] or 0)},
            "messages": {"n": n, "differ": differ, "diff_rate": differ / n if n else None,
                         "mean_diff": m.get("mean_diff"), "max_abs": m.get("max_abs"),
                         "differ_at": {"first": first, "middle": differ - first - last,
                                       "last": last}},
        }
    return found


def attach_streams_engine(
    engine: Engine, calls: ir.Table, cond: ir.BooleanValue, primary: ir.BooleanValue,
    shadow_role: ir.BooleanValue, pairs: list[PairDivergence], atol: float, rtol: float,
) -> tuple[list[PairDivergence], bool]:
    """The divergence pairs with their ``streams`` figures (pairs not split by segment), and
    whether any pair has some (:func:`analysis.stream_diff.attach_streams`)."""
    if not engine.has("stream_messages"):
        return pairs, False
    figures = stream_divergence_engine(engine, calls, cond, primary, shadow_role, atol, rtol)
    return with_streams(pairs, figures)
