"""One scan of the recorded input tensors into each feature's values, for the drift report.

The DuckDB path of :func:`analysis.drift.analyze_drift` reads the requests of both windows
once, as Arrow batches of (route, window flags, tensors), and splits every tensor element
into its feature (``tensor`` for a one-element tensor, else ``tensor[i]``) with vectorised
numpy: a numeric feature keeps its finite values per window (the exact KS, Wasserstein and
PSI need them: 8 bytes a value), a categorical one its category counts. No table of one row
per element is built (issue 19: that was 10M rows, 1 GB and most of the time at 1M x 10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import duckdb
import numpy as np

from analysis.load import sql_timestamp

__all__ = ["BATCH_ROWS", "WINDOWS", "FeatureValues", "ScannedFeatures", "scan_features"]

#: The two windows, in the order of the per-window counts below.
WINDOWS: tuple[str, str] = ("reference", "current")
#: Requests per Arrow batch: bounds the scan's working memory (a few arrays of one int or
#: float per element of the batch) whatever the number of requests.
BATCH_ROWS = 131_072

Kind = Literal["numeric", "categorical"]
FeatureKey = tuple[str | None, str | None, Kind]


@dataclass
class FeatureValues:
    """One feature of one route, as read: values or category counts per window."""

    route: str | None
    feature: str | None
    kind: Kind
    #: finite values (numeric) or non-null categories (categorical) per window
    valid: list[int] = field(default_factory=lambda: [0, 0])
    #: numeric: the finite values per window, in chunks as read
    chunks: tuple[list[np.ndarray], list[np.ndarray]] = field(default_factory=lambda: ([], []))
    #: categorical: each category's count per window
    categories: dict[str, list[int]] = field(default_factory=dict)

    def values(self, window: int) -> np.ndarray:
        """The finite values of one window (0 reference, 1 current), sorted; the chunks
        are released."""
        parts = self.chunks[window]
        out = np.concatenate(parts) if parts else np.empty(0)
        parts.clear()
        out.sort()
        return out


@dataclass
class ScannedFeatures:
    """What one scan found: requests per window and route, and every feature read."""

    #: window name -> str(route) -> requests with decoded inputs
    n_requests: dict[str, dict[str, int]] = field(default_factory=dict)
    features: dict[FeatureKey, FeatureValues] = field(default_factory=dict)
    #: the features in the order first seen (the element arrays hold these indexes)
    by_id: list[FeatureValues] = field(default_factory=list, repr=False)
    _ids: dict[FeatureKey, int] = field(default_factory=dict, repr=False)

    def ordered(self) -> list[FeatureValues]:
        """Features by route and name (missing ones last, as SQL's ``NULLS LAST``)."""
        def key(k: FeatureKey) -> tuple[Any, ...]:
            return (k[0] is None, k[0] or "", k[1] is None, k[1] or "", k[2])
        return [self.features[k] for k in sorted(self.features, key=key)]

    def feature_id(self, route: str | None, name: str | None, kind: Kind) -> int:
        """The index of a feature in :attr:`by_id`, added when first seen."""
        key: FeatureKey = (route, name, kind)
        index = self._ids.get(key)
        if index is None:
            index = self._ids[key] = len(self.by_id)
            self.features[key] = FeatureValues(route, name, kind)
            self.by_id.append(self.features[key])
        return index


def scan_features(
    con: duckdb.DuckDBPyConnection, route_sql: str,
    ref: tuple[datetime, datetime], cur: tuple[datetime, datetime],
    *, batch_rows: int = BATCH_ROWS,
) -> ScannedFeatures:
    """Read the decoded inputs of the requests in either window (``route_sql`` holding)
    once and split them into features. A request in both windows (overlapping windows)
    counts in both, as a join of requests with the windows would."""
    inside = [f"(ts >= {sql_timestamp(lo)} AND ts < {sql_timestamp(hi)})" for lo, hi in (ref, cur)]
    # Only the three fields the report reads, with fixed types whatever the source wrote; a
    # missing list reads as empty (no element either way) so no Arrow array below has nulls
    # but names and values.
    query = f"""
        SELECT route, {inside[0]}::UTINYINT + 2 * {inside[1]}::UTINYINT AS win,
               list_transform(inputs, lambda t: struct_pack(
                   name := t.name::VARCHAR,
                   data := coalesce(t.data::DOUBLE[], []::DOUBLE[]),
                   text := coalesce(t.text::VARCHAR[], []::VARCHAR[]))) AS tensors
        FROM requests WHERE inputs IS NOT NULL AND {route_sql} AND ({inside[0]} OR {inside[1]})
    """
    found = ScannedFeatures()
    for batch in con.sql(query).to_arrow_reader(batch_rows):
        routes, route_codes = _codes(batch.column("route"))
        win = _numbers(batch.column("win"))
        in_win = [(win & (1 << w)) != 0 for w in range(2)]
        for w, name in enumerate(WINDOWS):
            per_route = np.bincount(route_codes[in_win[w]], minlength=len(routes))
            counts = found.n_requests.setdefault(name, {})
            for code in np.flatnonzero(per_route):
                key = str(routes[code])
                counts[key] = counts.get(key, 0) + int(per_route[code])
        _split_batch(found, batch.column("tensors"), routes, route_codes, in_win)
    return found


# Arrow to numpy by the arrays' buffers: pyarrow's own conversions (to_numpy, to_pylist)
# import pandas, 0.4 s of a report that takes 2.

def _numbers(array: Any) -> np.ndarray:
    """A fixed-width Arrow array without nulls as numpy, without a copy."""
    dtype = np.dtype(_NUMPY_TYPES[str(array.type)])
    if array.null_count:
        raise ValueError(f"unexpected nulls in a {array.type} column")
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=len(array),
                         offset=array.offset * dtype.itemsize)


_NUMPY_TYPES = {"uint8": "uint8", "int32": "int32", "int64": "int64", "double": "float64"}


def _valid(array: Any) -> np.ndarray:
    """Which entries of an Arrow array are not null."""
    bitmap = array.buffers()[0]
    if bitmap is None or array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bits[array.offset:array.offset + len(array)].astype(bool)


def _texts(array: Any) -> list[str | None]:
    """A (small) Arrow string array as Python strings."""
    import pyarrow as pa

    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = array.cast(pa.string())
    wide = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=wide, count=len(array) + 1,
                            offset=array.offset * np.dtype(wide).itemsize).tolist()
    raw = array.buffers()[2]
    data = raw.to_pybytes() if raw is not None else b""
    valid = _valid(array).tolist()
    return [data[offsets[i]:offsets[i + 1]].decode() if valid[i] else None
            for i in range(len(array))]


def _codes(array: Any) -> tuple[list[str | None], np.ndarray]:
    """Distinct strings of an Arrow string array (``None`` for null) and each row's index."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(array, null_encoding="encode")
    return _texts(encoded.dictionary), _numbers(encoded.indices).astype(np.int64)


def _lengths(lists: Any) -> np.ndarray:
    """Each list's length (the lists hold no nulls: see the scan's query)."""
    return np.diff(_numbers(lists.offsets)).astype(np.int64)


def _split_batch(found: ScannedFeatures, tensors: Any, routes: list[str | None],
                 route_codes: np.ndarray, in_win: list[np.ndarray]) -> None:
    import pyarrow.compute as pc

    parent = _numbers(pc.list_parent_indices(tensors))
    if parent.size == 0:
        return
    names_arr, data, text = tensors.flatten().flatten()
    names, name_codes = _codes(names_arr)
    data_width = _lengths(data)
    text_width = _lengths(text)
    tensor_route = route_codes[parent]
    numeric = data_width > 0
    # A tensor is categorical only without numbers (as the SQL path's rule).
    categorical = (data_width == 0) & (text_width > 0)
    if numeric.any():
        flat = data.flatten()  # only numeric tensors have numbers
        values = _numbers(flat) if not flat.null_count else np.where(
            _valid(flat), np.frombuffer(flat.buffers()[1], dtype=np.float64, count=len(flat),
                                        offset=flat.offset * 8), np.nan)
        slots, first = _slots(found, "numeric", routes, names, tensor_route[numeric],
                              name_codes[numeric], data_width[numeric])
        columns = _row_layout(parent[numeric], first, data_width[numeric], len(in_win[0]))
        if columns is not None:
            _numeric_rows(found, values.reshape(len(in_win[0]), -1), slots[columns], in_win)
        else:
            _numeric_elements(found, values, _element_ids(slots, first, data_width[numeric]),
                              parent[numeric], data_width[numeric], in_win)
    if categorical.any():
        cats, codes = _codes(text.flatten())
        slots, first = _slots(found, "categorical", routes, names,
                              tensor_route[categorical], name_codes[categorical],
                              text_width[categorical])
        gid = _element_ids(slots, first, text_width[categorical])
        _category_elements(found, cats, codes[np.repeat(categorical, text_width)], gid,
                           parent[categorical], text_width[categorical], in_win)


def _slots(found: ScannedFeatures, kind: Kind, routes: list[str | None],
           names: list[str | None], route_code: np.ndarray, name_code: np.ndarray,
           width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The feature id of each slot, and each tensor's first slot.

    Tensors are grouped by (route, name, one element or more); a group's slots are its
    positions up to its widest tensor, each slot one feature (``name`` or ``name[i]``).
    """
    scalar = width == 1
    combo_key = (route_code * (len(names) + 1) + name_code) * 2 + scalar
    if (combo_key == combo_key[0]).all():  # one kind of tensor: the usual case
        combos, which = combo_key[:1], np.zeros(combo_key.size, dtype=np.int64)
    else:
        combos, which = np.unique(combo_key, return_inverse=True)
    widest = np.zeros(combos.size, dtype=np.int64)
    np.maximum.at(widest, which, width)
    base = np.concatenate([[0], np.cumsum(widest)[:-1]])
    slot_feature = np.empty(int(widest.sum()), dtype=np.int64)
    for c, key in enumerate(combos.tolist()):
        name = names[(key // 2) % (len(names) + 1)]
        route = routes[(key // 2) // (len(names) + 1)]
        for i in range(int(widest[c])):
            label = name if key % 2 or name is None else f"{name}[{i}]"
            slot_feature[base[c] + i] = found.feature_id(route, label, kind)
    # The smallest unsigned type: numpy's stable argsort of 8 and 16-bit keys is a radix
    # sort, ten times faster than on int64 (the grouping step of a batch).
    return slot_feature.astype(np.min_scalar_type(len(found.by_id))), base[which]


def _element_ids(slots: np.ndarray, first: np.ndarray, width: np.ndarray) -> np.ndarray:
    """The feature id of every element of the tensors, in element order."""
    starts = np.cumsum(width) - width
    position = np.arange(int(width.sum()), dtype=np.int64) - np.repeat(starts, width)
    position += np.repeat(first, width)
    result: np.ndarray = slots[position]
    return result


def _row_layout(parent: np.ndarray, first: np.ndarray, width: np.ndarray,
                rows: int) -> np.ndarray | None:
    """When every request of the batch has the same tensors (features, widths, order), the
    slot of each column of the (requests x elements) matrix the values then form; else
    None. A recording's requests usually look alike, and columns of a matrix are cheaper
    to pick than elements grouped one by one."""
    if rows == 0 or parent.size % rows:
        return None
    per = parent.size // rows
    if not np.array_equal(np.bincount(parent, minlength=rows), np.full(rows, per)):
        return None
    first, width = first.reshape(rows, per), width.reshape(rows, per)
    if not ((first == first[0]).all() and (width == width[0]).all()):
        return None
    return np.concatenate([np.arange(f, f + w) for f, w in zip(first[0].tolist(),
                                                               width[0].tolist(), strict=True)])


def _numeric_rows(found: ScannedFeatures, matrix: np.ndarray, features: np.ndarray,
                  in_win: list[np.ndarray]) -> None:
    finite = np.isfinite(matrix)
    all_finite = bool(finite.all())
    for w in range(2):
        rows = in_win[w]
        if not rows.any():
            continue
        every_row = bool(rows.all())
        for c, g in enumerate(features.tolist()):
            column = matrix[:, c]
            if all_finite:
                # A view of the batch (kept alive by it) when no row is left out: the
                # values are copied once, by FeatureValues.values.
                part = column if every_row else column[rows]
            else:
                part = column[finite[:, c] & rows]
            feature = found.by_id[g]
            feature.valid[w] += part.size
            feature.chunks[w].append(part)


def _numeric_elements(found: ScannedFeatures, values: np.ndarray, gid: np.ndarray,
                      parent: np.ndarray, width: np.ndarray, in_win: list[np.ndarray]) -> None:
    finite = np.isfinite(values)
    for w in range(2):
        take = np.repeat(in_win[w][parent], width)
        take &= finite
        _append_grouped(found, values[take], gid[take], w)


def _append_grouped(found: ScannedFeatures, values: np.ndarray, gid: np.ndarray,
                    window: int) -> None:
    """Append each feature's values of one window (finite only) to its chunks."""
    if gid.size == 0:
        return
    counts = np.bincount(gid)
    present = np.flatnonzero(counts)
    if present.size == 1:
        groups = [(int(present[0]), values)]
    else:
        order = np.argsort(gid, kind="stable")
        ordered = values[order]
        ends = np.cumsum(counts)
        groups = [(int(g), ordered[ends[g] - counts[g]:ends[g]]) for g in present]
    for g, part in groups:
        feature = found.by_id[g]
        feature.valid[window] += part.size
        feature.chunks[window].append(part)


def _category_elements(found: ScannedFeatures, cats: list[str | None], codes: np.ndarray,
                       gid: np.ndarray, parent: np.ndarray, width: np.ndarray,
                       in_win: list[np.ndarray]) -> None:
    known = np.array([c is not None for c in cats])[codes]  # a null category is no value
    for w in range(2):
        take = np.repeat(in_win[w][parent], width) & known
        if not take.any():
            continue
        pair = gid[take].astype(np.int64) * len(cats) + codes[take]
        keys, counts = np.unique(pair, return_counts=True)
        for k, n in zip(keys.tolist(), counts.tolist(), strict=True):
            feature = found.by_id[k // len(cats)]
            feature.valid[w] += n
            feature.categories.setdefault(str(cats[k % len(cats)]), [0, 0])[w] += n
