"""Input drift: each request feature's current window compared with a reference window.

Features come from ``requests.inputs`` (decoded tensors), read once from DuckDB as Arrow
batches and split into features by :mod:`analysis.drift_scan`; the figures run on numpy.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import duckdb
import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from analysis.distribution import SCIPY_MAX_N
from analysis.drift_scan import WINDOWS, FeatureValues, ScannedFeatures, scan_features
from analysis.drift_shift import sorted_histogram, sorted_shift
from analysis.load import (
    VersionScope,
    parse_time,
    relations,
    sql_quote,
    time_filter,
    version_scope,
)
from analysis.report.json import jsonable
from analysis.significance import P_FLOOR

__all__ = [
    "CHI2_ALPHA", "DRIFT_METHODS", "DRIFT_THRESHOLDS", "PSI_ALERT", "SCHEMA", "DriftMethod",
    "DriftReport", "FeatureDrift", "analyze_drift",
]

#: /2: flags follow a stated drift method (default Evidently's size-aware rule, not PSI
#: alone), one config version per route by default, wasserstein/js_distance per feature.
SCHEMA = "shadowcar.report.drift/2"
#: PSI at or above this flags a numeric feature (the customary "significant shift" level).
PSI_ALERT = 0.2
#: A chi-square p-value below this flags a categorical feature (methods psi, wasserstein, ks).
CHI2_ALPHA = 0.001
#: How a feature is judged drifted. ``auto`` is Evidently's DataDriftPreset rule: with at
#: most AUTO_SMALL_N reference values a test (KS for numbers, chi-square for categories,
#: p < 0.05), else a distance (Wasserstein in reference sd units for numbers, Jensen-Shannon
#: distance for categories, >= 0.1). Tests alone flag trivial shifts at large n and
#: distances alone are noisy at small n; PSI over deciles misses a 0.1 sd shift.
DriftMethod = Literal["auto", "psi", "wasserstein", "jensenshannon", "ks"]
DRIFT_METHODS: tuple[str, ...] = ("auto", "psi", "wasserstein", "jensenshannon", "ks")
#: Default threshold of each method: a distance at or above it (psi, wasserstein,
#: jensenshannon), or a p-value below it (ks).
DRIFT_THRESHOLDS: dict[str, float] = {"psi": PSI_ALERT, "wasserstein": 0.1,
                                      "jensenshannon": 0.1, "ks": 0.05}
#: Up to this many reference values ``auto`` uses a test, above it a distance (Evidently).
AUTO_SMALL_N = 1000
#: ``auto``'s p-value level for the small-sample tests (Evidently's 0.95 confidence).
AUTO_ALPHA = 0.05
#: A histogram share below this is raised to it before Jensen-Shannon (Evidently's floor).
_JS_FLOOR = 1e-4
#: A null rate this much above the reference's flags the feature.
NULL_RATE_ALERT = 0.01
_MAX_CATEGORIES = 50
#: Threads for the figures of large numeric features (one per core, a few at most: each
#: holds one feature's sorted values and their merge, about 50 MB per million values).
_WORKERS = max(1, min(4, os.cpu_count() or 1))
_MAX_UNSEEN_LISTED = 20

Window = tuple[str | datetime | None, str | datetime | None]


@dataclass(frozen=True)
class FeatureDrift:
    """One feature (``tensor`` or ``tensor[i]``) of one route, reference vs current."""

    route: str
    feature: str
    kind: Literal["numeric", "categorical"]
    n_reference: int
    n_current: int
    null_rate_reference: float | None
    null_rate_current: float | None
    psi: float | None = None
    ks_stat: float | None = None
    ks_p: float | None = None
    #: Wasserstein-1 distance over the reference's standard deviation
    wasserstein: float | None = None
    #: Jensen-Shannon distance (natural log) of the binned shares (Sturges bins for numbers)
    js_distance: float | None = None
    chi2: float | None = None
    chi2_p: float | None = None
    dof: int | None = None
    #: which method judged drift, its score and threshold, and the verdict
    drift_method: str | None = None
    drift_score: float | None = None
    drift_threshold: float | None = None
    drifted: bool | None = None
    range: tuple[float, float] | None = None
    out_of_range_reference: float | None = None
    out_of_range_current: float | None = None
    unseen_categories: tuple[str, ...] = ()
    unseen_share: float | None = None
    flags: tuple[str, ...] = ()
    message: str | None = None


@dataclass(frozen=True)
class DriftReport:
    """Every feature's drift between two windows."""

    reference: dict[str, Any]
    current: dict[str, Any]
    features: tuple[FeatureDrift, ...]
    message: str | None = None
    #: the method, thresholds and conventions, stated in the report itself
    notes: tuple[str, ...] = ()
    versions: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form, schema ``shadowcar.report.drift/2``."""
        features = []
        for f in self.features:
            row = {k: getattr(f, k) for k in FeatureDrift.__dataclass_fields__}
            for key in ("ks_p", "chi2_p"):  # underflow: report the bound, flagged
                row[f"{key}_is_bound"] = row[key] == 0.0
                if row[key] == 0.0:
                    row[key] = P_FLOOR
            features.append(row)
        out: dict[str, Any] = jsonable({
            "schema": SCHEMA,
            "notes": list(self.notes),
            "reference": self.reference,
            "current": self.current,
            "versions": self.versions,
            "features": features,
            "message": self.message,
        })
        return out


def _default_windows(
    con: duckdb.DuckDBPyConnection, route_sql: str, span_sql: str
) -> tuple[tuple[datetime, datetime], tuple[datetime, datetime]] | None:
    row = con.execute(
        "SELECT min(ts), max(ts) FROM requests "
        f"WHERE inputs IS NOT NULL AND {route_sql} AND {span_sql}"
    ).fetchall()[0]
    if row[0] is None:
        return None
    start, end = row[0], row[1]
    middle = start + (end - start) / 2
    return (start, middle), (middle, end + timedelta(microseconds=1))


def analyze_drift(
    con: duckdb.DuckDBPyConnection,
    *,
    reference: Window | None = None,
    current: Window | None = None,
    route: str | None = None,
    ranges: dict[str, tuple[float, float]] | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    method: DriftMethod = "auto",
    threshold: float | None = None,
    version: str | None = None,
    all_versions: bool = False,
) -> DriftReport:
    """Compare each input feature's ``current`` window with its ``reference`` window.

    Windows are ``(since, until)``, half-open; without them the reference is the first half
    of the recorded time span (bounded by ``since``/``until`` when given) and the current
    window the second half. ``ranges`` declares each feature's valid ``[low, high]``.
    ``method`` (see DriftMethod) and ``threshold`` (default DRIFT_THRESHOLDS; for ``auto``
    the distance threshold) decide each feature's drift flag. Each route's newest config
    version is analysed unless ``version`` names one or ``all_versions``.
    """
    check_drift_options(method, threshold)
    ranges = dict(ranges or {})
    tables = relations(con)
    notes = _notes(method, threshold)
    if "requests" not in tables:
        return DriftReport({}, {}, (), "the source has no requests table", notes)
    route_sql = "TRUE" if route is None else f"route = {sql_quote(route)}"
    scope = version_scope(con, "requests",
                          where=f"inputs IS NOT NULL AND {route_sql} AND "
                                f"{time_filter(since, until)}",
                          version=version, all_versions=all_versions)
    route_sql = f"{route_sql} AND {scope.condition}"
    notes = (*notes, scope.note)
    defaults = _default_windows(con, route_sql, time_filter(since, until))
    if defaults is None:
        return DriftReport({}, {}, (), "no request has decoded inputs", notes, scope.to_dict())
    ref = _window(reference, defaults[0])
    cur = _window(current, defaults[1])
    scanned = scan_features(con, route_sql, ref, cur)
    n_requests = scanned.n_requests
    return drift_report(_features(scanned, ranges), method, threshold, ref, cur, n_requests,
                        notes, scope)


def drift_report(features: list[FeatureDrift], method: DriftMethod, threshold: float | None,
                 ref: Window, cur: Window,
                 n_requests: dict[str, dict[str, int]], notes: tuple[str, ...],
                 scope: VersionScope) -> DriftReport:
    """The report from each feature's figures, either engine's: judged by ``method``, with
    the two windows and their request counts."""
    judged = [_judge(f, method, threshold) for f in features]
    windows = [{"since": w[0], "until": w[1], "n": n_requests.get(k, {})}
               for k, w in (("reference", ref), ("current", cur))]
    message = None if judged else "no feature values in the two windows"
    return DriftReport(windows[0], windows[1], tuple(judged), message, notes,
                       scope.to_dict())


def check_drift_options(method: str, threshold: float | None) -> None:
    """A usage error (ValueError) for a drift method or threshold no report can use."""
    if method not in DRIFT_METHODS:
        raise ValueError(f"drift method must be one of {', '.join(DRIFT_METHODS)}, "
                         f"got {method!r}")
    if threshold is not None and not (np.isfinite(threshold) and threshold > 0):
        raise ValueError("drift threshold must be a finite number > 0")


def _notes(method: DriftMethod, threshold: float | None) -> tuple[str, ...]:
    if method == "auto":
        rule = (f"drift method auto (Evidently's default): with at most {AUTO_SMALL_N} "
                f"reference values KS (numbers) or chi-square (categories) at p < {AUTO_ALPHA};"
                " above that Wasserstein distance in reference standard deviations (numbers) or "
                "Jensen-Shannon distance (categories), flagged at >= "
                f"{threshold if threshold is not None else 0.1:g}")
    else:
        level = threshold if threshold is not None else DRIFT_THRESHOLDS[method]
        test = "p-value below" if method == "ks" else "at or above"
        cats = ("Jensen-Shannon distance" if method == "jensenshannon"
                else f"chi-square p < {CHI2_ALPHA:g}")
        rule = (f"drift method {method}: numeric features flagged with {method} {test} "
                f"{level:g}; categorical features by {cats}")
    return (rule, "reference is the expected sample, current the actual one (PSI uses the "
                  "reference deciles; wasserstein is over the reference standard deviation)")


def _window(given: Window | None, default: tuple[datetime, datetime]) -> tuple[datetime, datetime]:
    if given is None:
        return default
    start, end = parse_time(given[0]), parse_time(given[1])
    return (start or datetime.min, end or datetime.max)


def _features(scanned: ScannedFeatures, ranges: dict[str, tuple[float, float]],
              ) -> list[FeatureDrift]:
    """Each scanned feature's counts and shift, in the scan's order.

    Features past scipy's sample size (sorts, merges and scipy's KS p-value, all outside
    the GIL) run on a few threads; smaller ones stay on this thread, because scipy's small
    sample path changes the process's warning filters (not thread-safe). A feature's values
    are released as soon as its figures are done.
    """
    features = scanned.ordered()
    big = [i for i, f in enumerate(features)
           if f.kind == "numeric" and min(f.valid) > 0 and max(f.valid) > SCIPY_MAX_N]
    out: dict[int, FeatureDrift] = {}
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        pending = {i: pool.submit(_feature, features[i], scanned.n_requests, ranges)
                   for i in big}
        for i, f in enumerate(features):
            if i not in pending:
                out[i] = _feature(f, scanned.n_requests, ranges)
        out.update((i, job.result()) for i, job in pending.items())
    return [out[i] for i in range(len(features))]


def _feature(f: FeatureValues, n_requests: dict[str, dict[str, int]],
             ranges: dict[str, tuple[float, float]]) -> FeatureDrift:
    # A recording without a route or a tensor without a name gives None (JSON null).
    route, feature = cast(str, f.route), cast(str, f.feature)
    if f.kind == "numeric":
        ref_values, cur_values = f.values(0), f.values(1)
        bounds = ranges.get(feature) if feature is not None else None
        by_win = {name: (f.valid[w], _outside(values, bounds))
                  for w, (name, values) in enumerate(zip(WINDOWS, (ref_values, cur_values),
                                                         strict=True))}
        result = feature_counts(route, feature, f.kind, by_win, n_requests, ranges)
        result = _numeric_shift(result, ref_values, cur_values)
    else:
        by_win = {name: (f.valid[w], 0) for w, name in enumerate(WINDOWS)}
        result = feature_counts(route, feature, f.kind, by_win, n_requests, ranges)
        result = _categorical_shift(result, {k: (v[0], v[1]) for k, v in f.categories.items()})
    return replace(result, flags=_flags(result))


def _outside(values: np.ndarray, bounds: tuple[float, float] | None) -> int:
    if bounds is None or values.size == 0:
        return 0
    return int(np.count_nonzero((values < bounds[0]) | (values > bounds[1])))


def feature_counts(
    rt: str, feature: str, kind: str, by_win: dict[str, tuple[int, int]],
    n_requests: dict[str, dict[str, int]], ranges: dict[str, tuple[float, float]],
) -> FeatureDrift:
    """A feature's counts per window (valid values, values out of its declared range) as a
    result before any shift is measured; both engines reduce rows to these same counts."""
    ref_valid, ref_out = by_win.get("reference", (0, 0))
    cur_valid, cur_out = by_win.get("current", (0, 0))
    ref_total = n_requests.get("reference", {}).get(rt, 0)
    cur_total = n_requests.get("current", {}).get(rt, 0)
    result = FeatureDrift(
        route=rt, feature=feature, kind="numeric" if kind == "numeric" else "categorical",
        n_reference=ref_valid, n_current=cur_valid,
        null_rate_reference=_rate(ref_total - ref_valid, ref_total),
        null_rate_current=_rate(cur_total - cur_valid, cur_total),
    )
    if feature in ranges and kind == "numeric":
        lo, hi = ranges[feature]
        result = replace(result, range=(float(lo), float(hi)),
                         out_of_range_reference=_rate(ref_out, ref_valid),
                         out_of_range_current=_rate(cur_out, cur_valid))
    return result


def _rate(part: int, whole: int) -> float | None:
    return max(0.0, part / whole) if whole > 0 else None


def _numeric_shift(result: FeatureDrift, ref: np.ndarray, cur: np.ndarray) -> FeatureDrift:
    """The numeric figures of two windows' finite values, each sorted."""
    if ref.size == 0 or cur.size == 0:
        side = "reference" if ref.size == 0 else "current"
        return replace(result, message=f"no finite values in the {side} window")
    shift = sorted_shift(ref, cur)
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    js = _js(sorted_histogram(ref, edges), sorted_histogram(cur, edges))
    message = shift.message if shift.wasserstein is None else None
    return replace(result, psi=shift.psi, ks_stat=shift.ks_stat, ks_p=shift.ks_p,
                   wasserstein=shift.wasserstein, js_distance=js, message=message)


def _js(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float | None:
    """Jensen-Shannon distance (natural log) of two histograms' shares, floored as Evidently
    does so an empty bin on one side stays finite."""
    if ref_counts.sum() == 0 or cur_counts.sum() == 0:
        return None
    p = np.maximum(ref_counts / ref_counts.sum(), _JS_FLOOR)
    q = np.maximum(cur_counts / cur_counts.sum(), _JS_FLOOR)
    return float(jensenshannon(p, q))


def _categorical_shift(result: FeatureDrift, counts: dict[str, tuple[int, int]]) -> FeatureDrift:
    if not counts:
        return replace(result, message="no category values")
    ordered = sorted(counts.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))
    unseen = [name for name, (n_ref, n_cur) in ordered if n_ref == 0 and n_cur > 0]
    cur_total = sum(n_cur for _, n_cur in counts.values())
    unseen_share = (sum(counts[name][1] for name in unseen) / cur_total) if cur_total else None
    result = replace(result, unseen_categories=tuple(unseen[:_MAX_UNSEEN_LISTED]),
                     unseen_share=unseen_share)
    table = np.array([c for _, c in ordered], dtype=np.int64).T
    result = replace(result, js_distance=_js(table[0].astype(float), table[1].astype(float)))
    if table.shape[1] > _MAX_CATEGORIES:  # fold the rare tail so expected counts stay usable
        tail = table[:, _MAX_CATEGORIES - 1:].sum(axis=1, keepdims=True)
        table = np.hstack([table[:, : _MAX_CATEGORIES - 1], tail])
    if table[0].sum() == 0 or table[1].sum() == 0:
        side = "reference" if table[0].sum() == 0 else "current"
        return replace(result, message=f"no category values in the {side} window")
    if table.shape[1] < 2:
        return replace(result, message="chi-square needs at least two categories")
    chi2, p, dof, _ = stats.chi2_contingency(table)
    return replace(result, chi2=float(chi2), chi2_p=float(p), dof=int(dof))


def _judge(f: FeatureDrift, method: DriftMethod, threshold: float | None) -> FeatureDrift:
    """Apply the drift method: which score decides, at which threshold, and the verdict."""
    distance = threshold if threshold is not None else 0.1
    if f.kind == "categorical":
        if method == "auto" and f.n_reference <= AUTO_SMALL_N:
            name, score, level = "chi2", f.chi2_p, AUTO_ALPHA
        elif method in ("auto", "jensenshannon"):
            name, score = "jensenshannon", f.js_distance
            level = distance if method == "auto" else (threshold or DRIFT_THRESHOLDS[method])
        else:
            name, score, level = "chi2", f.chi2_p, CHI2_ALPHA
    elif method == "auto":
        if f.n_reference <= AUTO_SMALL_N:
            name, score, level = "ks", f.ks_p, AUTO_ALPHA
        else:
            name, score, level = "wasserstein", f.wasserstein, distance
    else:
        name = method
        score = {"psi": f.psi, "wasserstein": f.wasserstein, "jensenshannon": f.js_distance,
                 "ks": f.ks_p}[method]
        level = threshold if threshold is not None else DRIFT_THRESHOLDS[method]
    drifted = None
    if score is not None:
        drifted = score < level if name in ("ks", "chi2") else score >= level
    judged = replace(f, drift_method=name, drift_score=score, drift_threshold=level,
                     drifted=drifted)
    extra = (name,) if drifted else ()
    return replace(judged, flags=extra + tuple(x for x in f.flags if x not in extra))


def _flags(f: FeatureDrift) -> tuple[str, ...]:
    """Flags that hold under every drift method (the method's own flag comes from _judge)."""
    flags: list[str] = []
    if f.out_of_range_current:
        flags.append("out_of_range")
    if f.unseen_categories:
        flags.append("unseen_categories")
    if (f.null_rate_current is not None and f.null_rate_reference is not None
            and f.null_rate_current > f.null_rate_reference + NULL_RATE_ALERT):
        flags.append("null_rate")
    return tuple(flags)
