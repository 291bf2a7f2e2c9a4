"""Divergence between a route's primary and each shadow: paired outputs, classes, distributions.

DuckDB reduces the joined pairs to moments and counts; numpy/scipy finish (DESIGN section 5).
"""

from __future__ import annotations

import importlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import duckdb
import numpy as np

from analysis.agreement import ClassAgreement, class_agreement, label_cells
from analysis.distribution import DistributionShift
from analysis.distribution_engine import ScoreFigures, score_figures, shift_of
from analysis.divergence_pairs import (
    PAIRS_TABLE,
    PairIds,
    finite_pairs,
    finite_sizes,
    identical_counts,
    join_passes,
    materialize_pairs,
    pair_rows,
    score_columns,
    whole_vectors,
)
from analysis.engine import duckdb_engine, memory_limit_bytes
from analysis.identical import with_identical
from analysis.load import (
    PRIMARY_SQL,
    AnalysisSourceError,
    relation_columns,
    release_memory,
    sql_quote,
    time_filter,
    version_scope,
)
from analysis.noise_floor import ReplicaRule, compare_with_floor, replica_rule
from analysis.operations import (
    Operations,
    backend_operations,
    error_summary,
    latency_cdfs,
    latency_summary,
)
from analysis.paired_figures import BYTES_PER_PAIR, paired_figures
from analysis.report.json import jsonable
from analysis.stats import P_FLOOR, finite_or_none
from analysis.stream_diff import STREAM_NOTE, VECTOR_NOTE, attach_streams

__all__ = [
    "SCHEMA",
    "ClassAgreement",
    "DivergenceReport",
    "NumericDivergence",
    "PairDivergence",
    "analyze_divergence",
]

#: /2: replicas pair only with the backend they copy, one config version per route by
#: default, ``null_reasons``, ``ks_p_is_bound`` and the report's own ``notes``.
SCHEMA = "shadowcar.report.divergence/2"
#: The rules of every pair, stated in the report itself.
NOTES = (
    "d = shadow - primary for every paired difference (mean_diff, its interval, the "
    "difference histogram); latency ratio_median = shadow / primary",
    "out_of_tolerance: share of pairs with |d| > atol + rtol * |primary score|",
    "distribution: primary is the expected sample, shadow the actual one (PSI deciles of "
    "the primary; wasserstein in primary standard deviations); a ks_p below 1e-300 is "
    "reported as that bound (ks_p_is_bound)",
    "a replica shadow is compared only with the backend it copies (replica_of, else the "
    "backend recorded with its version, else the route's primary); its figures are the "
    "noise floor of the route's other shadows against the same primary",
    VECTOR_NOTE,
)

@dataclass(frozen=True)
class NumericDivergence:
    """Paired differences ``d = shadow - primary`` of the scalar score."""

    mean_diff: float | None
    mean_diff_ci: tuple[float, float] | None
    mae: float | None
    rmse: float | None
    max_abs: float | None
    pearson: float | None
    spearman: float | None
    out_of_tolerance: float | None
    message: str | None = None


@dataclass(frozen=True)
class PairDivergence:
    """One (route, primary backend, shadow backend[, segment]) comparison."""

    route: str
    primary: str | None
    shadow: str
    replica: bool
    n: int
    unmatched: int
    incomplete: int
    numeric: NumericDivergence | None
    classes: ClassAgreement | None
    js_divergence: float | None
    distribution: DistributionShift | None
    latency_ms: dict[str, Any]
    errors: dict[str, Any]
    noise_floor: dict[str, Any] | None = None
    flags: tuple[str, ...] = ()
    segment: dict[str, Any] | None = None
    plots: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    #: Byte-identical answers (by response hash): works for any codec, raw and streams too.
    identical: dict[str, Any] | None = None
    #: Why each null figure is null (js_divergence, noise_floor, identical, ...).
    null_reasons: dict[str, str] = field(default_factory=dict)
    #: The shadow's copies on this route, in the live counters' words (docs/counters.md):
    #: sampled = sent + dropped, sent = answered + errored.
    shadow_calls: dict[str, int] | None = None
    #: Pairs with output vectors compared whole (analysis.stream_diff): n, out_of_tolerance,
    #: length_mismatch; None when the outputs are scalars.
    vectors: dict[str, int] | None = None
    #: Streams compared message by message (analysis.stream_diff): streams and messages
    #: figures; None when the route recorded no stream messages.
    streams: dict[str, Any] | None = None


def _shadow_calls(ops: Operations, route: str, shadow: str) -> dict[str, int]:
    figures = ops.get((route, shadow, "shadow"), {}).get("errors") or {}
    sent, errored, dropped = (int(figures.get(k) or 0) for k in ("n", "errors", "dropped"))
    return {"sampled": sent + dropped, "sent": sent, "dropped": dropped, "errored": errored,
            "answered": sent - errored}


@dataclass(frozen=True)
class DivergenceReport:
    """All pairs of one analysis, with the parameters that produced it."""

    pairs: tuple[PairDivergence, ...]
    params: dict[str, Any]
    message: str | None = None
    #: sign conventions and rules, and which config versions are covered
    notes: tuple[str, ...] = NOTES
    versions: dict[str, Any] | None = None
    #: backend -> ``backend@version (model)`` for backends asked for another model name
    labels: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form, schema ``shadowcar.report.divergence/2``."""
        labels = self.labels or {}
        pairs = [jsonable(_pair_dict(p)) for p in self.pairs]
        for pair in pairs:  # issue 17: a model name shows where one is set
            for side in ("primary", "shadow"):
                pair[f"{side}_label"] = labels.get(pair.get(side) or "", pair.get(side))
        return {
            "schema": SCHEMA,
            "notes": list(self.notes),
            "params": jsonable(self.params),
            "versions": self.versions,
            "pairs": pairs,
            "message": self.message,
        }


def _pair_dict(pair: PairDivergence) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in PairDivergence.__dataclass_fields__:
        value = getattr(pair, name)
        if name in ("numeric", "classes", "distribution") and value is not None:
            value = {k: getattr(value, k) for k in type(value).__dataclass_fields__}
        out[name] = value
    dist = out.get("distribution")
    if dist is not None:
        bound = dist.get("ks_p") == 0.0
        dist["ks_p_is_bound"] = bound
        if bound:  # underflow: the true p-value is below the smallest we print
            dist["ks_p"] = P_FLOOR
    reasons = dict(pair.null_reasons)
    for name in ("numeric", "classes", "js_divergence", "distribution", "noise_floor",
                 "identical"):
        if out.get(name) is None and name not in reasons:
            reasons[name] = _DEFAULT_REASONS[name]
    out["null_reasons"] = {k: v for k, v in reasons.items() if out.get(k) is None}
    return out


_DEFAULT_REASONS = {
    "numeric": "no pair has a scalar score on both sides",
    "classes": "no pair has a class label on both sides (scalar outputs)",
    "js_divergence": "no pair has output vectors on both sides",
    "distribution": "no pair has a finite score on both sides",
    "noise_floor": "no replica shadow of this route copies this primary",
    "identical": "no matched pair has a response hash on both sides",
}




def analyze_divergence(
    con: duckdb.DuckDBPyConnection,
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    route: str | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    segment: str | None = None,
    version: str | None = None,
    all_versions: bool = False,
    numpy_bytes: float | None = None,
    passes: int | None = None,
) -> DivergenceReport:
    """Compare every shadow backend with its route's primary over the recorded calls.

    Each route's newest config version is analysed unless ``version`` names one or
    ``all_versions``; a replica shadow is paired only with the backend it copies.
    ``numpy_bytes`` bounds the score and latency columns taken into numpy (default: the
    connection's ``memory_limit``); past it the same figures come from DuckDB, slower.
    ``passes`` splits the pair join by request id (default: sized from ``memory_limit``,
    :func:`analysis.divergence_pairs.join_passes`).
    """
    # scipy.stats (0.4 s of imports, for the intervals and the KS p-value at the end) loads
    # while DuckDB joins
    threading.Thread(target=importlib.import_module, args=("scipy.stats",), daemon=True,
                     name="shadowcar-import").start()
    params = {"since": since, "until": until, "route": route, "atol": atol, "rtol": rtol,
              "segment": segment, "version": version, "all_versions": all_versions}
    calls = relation_columns(con, "calls")
    if not calls:
        return DivergenceReport((), params, "the source has no calls table")
    where = time_filter(since, until)
    if route is not None:
        where += " AND route = " + sql_quote(route)
    scope = version_scope(con, "calls", where=f"{where} AND role IN ('shadow', 'replay')",
                          version=version, all_versions=all_versions)
    where += f" AND {scope.condition}"
    notes: tuple[str, ...] = (*NOTES, scope.note)
    seg_sql, seg_join = _segment_sql(con, segment, calls)
    seg_column = f', "{segment}"' if seg_sql.startswith("s.") else ""
    hashes = "response_hash" in calls and segment is None
    has_vectors, hashed = (bool(x) for x in con.execute(f"""SELECT
        EXISTS (SELECT 1 FROM calls WHERE output IS NOT NULL),
        {'EXISTS (SELECT 1 FROM calls WHERE response_hash IS NOT NULL)' if hashes else 'false'}
        """).fetchall()[0])
    ids = PairIds.scan(con, where, PRIMARY_SQL)

    def materialize(label: str) -> None:
        # Only what the pair table reads crosses the join: no output vectors or answer
        # hashes when none were recorded (the join's build side is what spills).
        columns = ("request_id, route, backend, score, latency_ms, " + label
                   + (", output" if has_vectors else "")
                   + (", response_hash" if hashed else ""))

        def base(part: str) -> str:
            return f"""
                WITH prim AS (SELECT {columns}, {ids.primary_sql()} AS pid FROM calls
                              WHERE {PRIMARY_SQL} AND {where} AND {part}),
                     shad AS (SELECT {columns}{seg_column}, {ids.shadow_sql()} AS sid
                              FROM calls WHERE role IN ('shadow', 'replay') AND {where}
                                  AND {part})
            """

        join = f"FROM shad s LEFT JOIN prim p ON p.request_id = s.request_id {seg_join}"
        materialize_pairs(con, base, join, seg_sql if segment is not None else None,
                          vectors=has_vectors, hashes=hashed, atol=atol, rtol=rtol,
                          passes=passes or join_passes(ids.primary_calls, memory_limit_bytes(con)))

    budget = memory_limit_bytes(con) if numpy_bytes is None else numpy_bytes
    try:  # the temporary table goes whatever fails
        try:
            materialize(_label_sql(con, where))
        except duckdb.ConversionException:  # a label recorded since the labels were read
            materialize("label")
        rows = pair_rows(con, ids, atol, rtol, segment=segment is not None, vectors=has_vectors,
                         budget=budget)
        same = identical_counts(con, ids) if hashed else {}
        figures, scores = _score_figures(con, segment is not None, budget)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {PAIRS_TABLE}")
    release_memory(con)  # the pair table's buffers: numpy's turn
    with ThreadPoolExecutor(max_workers=1) as beside:
        # numpy's figures beside the operations pass (errors per backend in DuckDB, latency
        # quantiles in numpy): each leaves part of the two cores idle
        done = beside.submit(_figures_of, scores)
        ops = backend_operations(con, where, PRIMARY_SQL, budget_bytes=budget)
        figures |= done.result()
    whole = whole_vectors(rows)
    if not rows:
        return DivergenceReport((), params, "no shadow calls in the selected window", notes,
                                scope.to_dict())
    replicas = replica_rule(con, where)
    pairs: list[PairDivergence] = []
    unmatched_only: list[dict[str, Any]] = []
    skipped: dict[tuple[str, str, str], int] = {}
    for row in rows:
        ids_key = row.pop("_key")
        if row["pb"] is None:
            unmatched_only.append(row)
            continue
        if not replicas.pairs(row["route"], row["pb"], row["sb"]):
            key = (row["route"], row["sb"], row["pb"])
            skipped[key] = skipped.get(key, 0) + int(row["matched"])
            continue
        fig = figures.get(ids_key if segment is not None else ids_key[:2])
        pair = _build_pair(row, fig, ops, replicas)
        vec = whole.get((row["route"], row["pb"], row["sb"], row["seg"]))
        if vec is not None:  # issue 20.7: whole vectors, not output[score_index]
            numeric = pair.numeric and replace(
                pair.numeric, out_of_tolerance=vec["out_of_tolerance"] / vec["n"])
            pair = replace(pair, vectors=vec, numeric=numeric)
        pairs.append(pair)
    pairs = _attach_unmatched(pairs, unmatched_only, ops, replicas, segment)
    pairs = _apply_noise_floor(pairs)
    pairs, streamed = attach_streams(con, pairs, where, PRIMARY_SQL, atol, rtol)
    if streamed:
        notes = (*notes, STREAM_NOTE)
    if hashes:
        pairs = with_identical(pairs, same)
    else:
        pairs = without_identical(pairs, segment)
    from analysis.models import backend_labels

    return DivergenceReport(tuple(pairs), params, report_message(pairs, skipped, replicas),
                            notes, scope.to_dict(), backend_labels(con))


#: Up to this many distinct labels cross the join as a DuckDB ENUM (one byte or two per
#: side instead of a string), else as the strings.
_ENUM_LABELS = 4096


def _label_sql(con: duckdb.DuckDBPyConnection, where: str) -> str:
    """The label column as the pair join should carry it: an ENUM of the labels in the
    selected calls (a tenth of the join's memory at 10M pairs), else the strings."""
    labels = [str(r[0]) for r in con.execute(f"""
        SELECT DISTINCT label FROM calls WHERE label IS NOT NULL
            AND (role IN ('shadow', 'replay') OR {PRIMARY_SQL}) AND {where}
        LIMIT {_ENUM_LABELS + 1}""").fetchall()]
    if not labels or len(labels) > _ENUM_LABELS:
        return "label"
    return f"label::ENUM({', '.join(sql_quote(x) for x in sorted(labels))}) AS label"


def _figures_of(scores: dict[tuple[Any, ...], list[np.ndarray]],
                ) -> dict[tuple[Any, ...], ScoreFigures]:
    """:func:`analysis.paired_figures.paired_figures` of each pair's columns, taken out of
    ``scores`` one pair at a time (each pair's columns are freed when it is done)."""
    return {key: paired_figures(scores.pop(key)) for key in list(scores)}


def _score_figures(
    con: duckdb.DuckDBPyConnection, segment: bool, budget: float,
) -> tuple[dict[tuple[Any, ...], ScoreFigures], dict[tuple[Any, ...], list[np.ndarray]]]:
    """Each pair's exact score figures, keyed as :func:`pair_rows`'s ``_key`` (without the
    segment when there is none), or the two score columns they are computed from.

    While every pair's columns fit ``budget`` bytes (:data:`BYTES_PER_PAIR` a pair) they
    come back for :func:`analysis.paired_figures.paired_figures` (numpy on sorted columns),
    else the figures are the engine reductions Spark runs, which spill but run several times
    slower in DuckDB (its window sorts of one pair are single-threaded)."""
    sizes = finite_sizes(con, segment=segment)
    if not sizes:
        return {}, {}
    if sum(sizes.values()) * BYTES_PER_PAIR > budget:
        return score_figures(duckdb_engine(con), finite_pairs(segment),
                             ["sid", "pid", *(["seg"] if segment else [])]), {}
    return {}, {key if segment else key[:2]: [ps, ss]
                for key, ps, ss in score_columns(con, list(sizes), segment=segment)}


def without_identical(pairs: list[PairDivergence], segment: str | None) -> list[PairDivergence]:
    """``pairs`` saying why they have no identical-answer share (either engine)."""
    why = ("identical rates are not split by segment" if segment is not None else
           "the calls table has no response_hash column (recorded by an older sidecar)")
    return [replace(p, null_reasons={**p.null_reasons, "identical": why}) for p in pairs]


def report_message(pairs: list[PairDivergence], skipped: dict[tuple[str, str, str], int],
                   replicas: ReplicaRule) -> str | None:
    """The report's message: no pair with outputs, and the replica copies left out."""
    found = [f"replica {sb} was mirrored on {n} request(s) served by {pb}: left out "
             f"(it is compared only with {', '.join(sorted(replicas.copies(r, sb)))})"
             for (r, sb, pb), n in sorted(skipped.items())]
    message = None if any(p.n for p in pairs) else (
        "no primary/shadow pair has outputs on both sides")
    if found:
        message = "; ".join([*([message] if message else []), *found])
    return message


def _segment_sql(
    con: duckdb.DuckDBPyConnection, segment: str | None, calls: set[str]
) -> tuple[str, str]:
    """The SQL of the segment value (read from the shadow's call or its request) and a join."""
    if segment is None:
        return "NULL::VARCHAR", ""
    if segment in calls:
        return f's."{segment}"::VARCHAR', ""
    if segment in relation_columns(con, "requests"):
        return f'r."{segment}"::VARCHAR', "LEFT JOIN requests r ON r.request_id = s.request_id"
    raise AnalysisSourceError(f"segment {segment!r} is not a column of calls or requests")


def _numeric(row: dict[str, Any], rho: float | None) -> NumericDivergence:
    n = int(row["n"])
    if n == 0:
        return NumericDivergence(None, None, None, None, None, None, None, None,
                                 "no pair has a finite score on both sides")
    notes: list[str] = []
    mean = float(row["sum_d"]) / n
    ci: tuple[float, float] | None = None
    if n >= 2 and row["var_d"] is not None:
        from scipy import stats  # scipy.stats takes 0.4 s to import: warmed beside the join

        half = float(stats.t.ppf(0.975, n - 1)) * np.sqrt(float(row["var_d"]) / n)
        ci = (mean - half, mean + half)
    else:
        notes.append("mean_diff_ci needs at least 2 pairs")
    constant = not (row["p_varies"] and row["s_varies"])
    pearson = spearman = None
    if constant or n < 2:
        notes.append("pearson and spearman are undefined for constant scores")
    else:
        pearson, spearman = finite_or_none(row["pearson"]), rho
    if row["n_nonfinite"]:
        notes.append(f"{row['n_nonfinite']} pairs with a NaN or infinite score were left out")
    return NumericDivergence(
        mean_diff=mean, mean_diff_ci=ci, mae=float(row["sum_abs_d"]) / n,
        rmse=float(np.sqrt(float(row["sum_d2"]) / n)), max_abs=finite_or_none(row["max_abs"]),
        pearson=pearson, spearman=spearman, out_of_tolerance=int(row["n_out"]) / n,
        message="; ".join(notes) or None,
    )


def _build_pair(
    row: dict[str, Any], fig: ScoreFigures | None, ops: Operations, replicas: ReplicaRule,
) -> PairDivergence:
    """One pair's result from its row of moments and counts and its exact score figures
    (:func:`analysis.distribution_engine.score_figures`; None without finite pairs)."""
    route, pb, sb = row["route"], row["pb"], row["sb"]
    plots = {"latency_cdf": latency_cdfs(ops, route, pb, sb)}
    rho, distribution = None, None
    if row["n"] and fig is not None:
        rho, distribution = fig["spearman"], shift_of(fig)
        plots = fig["plots"] | plots
    numeric = _numeric(row, rho) if row["n"] or not row["n_labels"] else None
    classes = class_agreement(int(row["n_labels"]), int(row["n_agree"]),
                              label_cells(row["label_pairs"]))
    n = int(max(row["n"], row["n_labels"]))
    js = float(row["sum_js"]) / int(row["n_js"]) if row["n_js"] else None
    notes = []
    if n == 0:
        notes.append("no pair has outputs on both sides")
    reasons: dict[str, str] = {}
    if row["n_vectors"] and not row["n_js"]:
        notes.append("output vectors are not probability vectors of equal length; no js_divergence")
        reasons["js_divergence"] = ("output vectors differ in length, have fewer than 2 "
                                    "entries, negative entries or a zero sum")
    elif not row["n_vectors"]:
        reasons["js_divergence"] = ("no matched pair has output vectors on both sides "
                                    "(scalar or undecoded outputs)")
    calls = _shadow_calls(ops, route, sb)
    if row["n_without_output"]:
        # Mostly the shadow's dropped and failed copies: say so, in the counters' words.
        notes.append(f"{row['n_without_output']} matched pairs lack an output on one side "
                     f"(of {calls['sampled']} sampled copies the shadow's route had, "
                     f"{calls['dropped']} were dropped and {calls['errored']} errored)")
    return PairDivergence(
        route=route, primary=pb, shadow=sb, replica=replicas.is_replica(route, sb),
        n=n, unmatched=int(row["unmatched"]), incomplete=int(row["n_without_output"]),
        numeric=numeric, classes=classes, js_divergence=js, distribution=distribution,
        latency_ms=latency_summary(ops, route, pb, sb, row["latency_ratio"]),
        errors=error_summary(ops, route, pb, sb),
        segment=None if row["seg"] is None else {"value": row["seg"]},
        plots=plots,
        message="; ".join(notes) or None,
        null_reasons=reasons,
        shadow_calls=calls,
    )


def _attach_unmatched(
    pairs: list[PairDivergence], orphans: list[dict[str, Any]],
    ops: Operations, replicas: ReplicaRule, segment: str | None,
) -> list[PairDivergence]:
    """Shadow calls without a primary count as ``unmatched`` on their (route, shadow) pairs."""
    out = list(pairs)
    for orphan in orphans:
        key = (orphan["route"], orphan["sb"], orphan["seg"])
        hits = [i for i, p in enumerate(out)
                if (p.route, p.shadow, (p.segment or {}).get("value")) == key]
        for i in hits:
            out[i] = replace(out[i], unmatched=out[i].unmatched + int(orphan["unmatched"]))
        if not hits:
            route, sb = orphan["route"], orphan["sb"]
            out.append(PairDivergence(
                route=route, primary=None, shadow=sb, replica=replicas.is_replica(route, sb),
                n=0, unmatched=int(orphan["unmatched"]), incomplete=0, numeric=None,
                classes=None, js_divergence=None, distribution=None,
                latency_ms=latency_summary(ops, route, None, sb, None),
                errors=error_summary(ops, route, None, sb),
                segment=None if segment is None else {"value": orphan["seg"]},
                message="no shadow call of this backend matched a primary call",
                shadow_calls=_shadow_calls(ops, route, sb),
            ))
    return out


def _noise_metrics(pair: PairDivergence) -> dict[str, float | None]:
    num, dist, cls = pair.numeric, pair.distribution, pair.classes
    return {
        "abs_mean_diff": abs(num.mean_diff) if num and num.mean_diff is not None else None,
        "mae": num.mae if num else None,
        "rmse": num.rmse if num else None,
        "max_abs": num.max_abs if num else None,
        "out_of_tolerance": num.out_of_tolerance if num else None,
        "disagreement": 1 - cls.agreement if cls and cls.agreement is not None else None,
        "js_divergence": pair.js_divergence,
        "psi": dist.psi if dist else None,
        "ks_stat": dist.ks_stat if dist else None,
        "wasserstein": dist.wasserstein if dist else None,
    }


def _apply_noise_floor(pairs: list[PairDivergence]) -> list[PairDivergence]:
    """Give each candidate its replicas' metrics and flag what exceeds them."""
    out: list[PairDivergence] = []
    for pair in pairs:
        seg = (pair.segment or {}).get("value")
        refs = [(p.shadow, _noise_metrics(p)) for p in pairs
                if p.replica and p.n and p.route == pair.route and p.primary == pair.primary
                and (p.segment or {}).get("value") == seg]
        if pair.replica or not refs:
            if pair.replica:
                why = "this pair is the replica: it is the noise floor of the other shadows"
            elif any(p.replica and p.route == pair.route for p in pairs):
                why = (f"the route's replica has no pairs with {pair.primary}"
                       + (" in this segment" if seg is not None else ""))
            else:
                why = "the route has no replica shadow (replica: true) to measure noise with"
            out.append(replace(pair, null_reasons={**pair.null_reasons, "noise_floor": why}))
            continue
        floor, flags = compare_with_floor(_noise_metrics(pair), refs)
        out.append(replace(pair, noise_floor=floor, flags=flags))
    return out
