"""Turning buffered records into Arrow batches and DuckDB rows (runs in the writer thread).

Decoding (codecs) happens here, off the caller's path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

import duckdb
import numpy as np
import pyarrow as pa

from sidecar.codecs import CodecError, summarize
from sidecar.codecs.descriptor import MethodCodec, json_tensors
from sidecar.codecs.fieldpath import summarize_json
from sidecar.sink.records import CallRecord, Decoding, RequestRecord
from sidecar.sink.streams import stream_messages_table

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "CallObserver",
    "Observed",
    "build_batch",
    "insert_batch",
    "observe",
    "warm_up",
    "write_batch",
]

#: Called by the writer thread for each call written: (record, score, label).
CallObserver = Callable[[CallRecord, float | None, str | None], None]
#: Score and label of each call of a batch, in row order: the observer is told once the
#: call's row is written.
Observed = tuple[list[float | None], list[str | None]]

#: ``storage.max_payload_bytes``'s default, for writers without settings (replay, gold).
#: Measured with DuckDB 2.0 at its 64 MB default limit: values up to 16 KB each checkpoint at
#: any volume; rows of 32 KB blobs or 48 KB lists make the checkpoint of a row group fail
#: (FATAL, the database invalidated) once it holds 80-220 MB of them.
DEFAULT_MAX_PAYLOAD = 16 * 1024

log = logging.getLogger(__name__)

# The writer builds many short-lived batches: the system allocator hands their memory back,
# where Arrow's default pool would keep it (a sidecar's RSS must stay small and flat).
pa.set_memory_pool(pa.system_memory_pool())


def warm_up() -> None:
    """pyarrow's first conversion of Python values looks for pandas and imports it when it
    is installed (statsmodels requires it): ~0.2 s. Called when the sink opens, before the
    sidecar serves, so the first write under traffic does not stall for it."""
    _timestamps([0.0])
    pa.array(["warm-up"], pa.string())

_TENSOR = pa.struct(
    [
        ("name", pa.string()),
        ("datatype", pa.string()),
        ("shape", pa.list_(pa.int64())),
        ("data", pa.list_(pa.float64())),
        ("text", pa.list_(pa.string())),
    ]
)
_TENSORS = pa.list_(_TENSOR)


_TS = pa.timestamp("us")


def _timestamps(values: Sequence[float]) -> pa.Array:
    micros = (np.asarray(values, dtype=np.float64) * 1e6).astype(np.int64)
    # An int64 array viewed as timestamps: zero-copy. pa.array(micros, type=_TS) converts
    # value by value with the GIL held (about 10 us a row, 2 ms a batch, measured).
    return pa.array(micros).view(_TS)


def _violations_json(found: Sequence[Any] | None) -> str | None:
    if not found:
        return None
    return json.dumps([{"field": v.field, "rule": v.rule, "detail": v.detail} for v in found])


def _json_text(dec: Decoding, doc: dict[str, Any]) -> str:
    """A decoded JSON message as recorded: its configured field paths redacted first."""
    if dec.redactor is not None and dec.redactor.fields:
        doc = dec.redactor.json(doc)
    return json.dumps(doc, separators=(",", ":"))


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _requests_table(
    rows: Sequence[RequestRecord], max_payload: int = DEFAULT_MAX_PAYLOAD
) -> pa.Table:
    if all(r.decoding.plain and r.violations is None and r.imputed is None for r in rows):
        return _plain_requests(rows)
    inputs: list[list[dict[str, Any]] | None] = []
    raw: list[bytes | None] = []
    contracts: list[str | None] = []
    violations: list[str | None] = []
    imputed: list[str | None] = []
    request_jsons: list[str | None] = []
    units: list[str | None] = []
    truncated_at: list[int] = []
    small = max_payload // 8
    for index, row in enumerate(rows):
        dec = row.decoding
        tensors = None
        contract = dec.contract
        found = row.violations
        request_json = None
        # A message over the cap is never decoded in full nor kept raw: its summary (tensor
        # names, datatypes and shapes, size, digest) takes its place, so one big record
        # cannot exhaust DuckDB's memory for the whole batch. The decoding budget is None
        # when even 8 decoded bytes a wire byte (one-byte numbers as doubles) fit the cap.
        size = len(row.request)
        budget = None if size <= small else (0 if size > max_payload else max_payload)
        big = budget == 0
        truncated = big and dec.record_bytes
        if hasattr(dec.codec, "decode_response_json"):  # a MethodCodec (cheap check)
            doc = None
            if big:
                truncated = True
            else:
                try:
                    # hasattr does not narrow to the protocol (isinstance would be slow)
                    doc = cast(MethodCodec, dec.codec).decode_request_json(
                        row.method, row.request
                    )
                except CodecError:
                    doc = None
            if doc is not None:
                request_json = _json_text(dec, doc)
                if len(request_json) > max_payload:
                    request_json, truncated = None, True
        elif dec.codec is not None:
            try:
                decoded = dec.codec.decode_request(row.request, budget)
            except CodecError:
                decoded = None
            if decoded is not None:
                tensors = [t.as_row() for t in decoded]
                if budget is not None:
                    truncated = truncated or big or any(t.truncated for t in decoded)
                if contract is not None and found is None and not truncated:
                    from sidecar.contracts import check_inputs

                    found = tuple(check_inputs(contract, decoded))
        contracts.append(f"{contract.name}@{contract.version}" if contract is not None else None)
        violations.append(_violations_json(found if dec.redactor is None
                                           else dec.redactor.violations(found)))
        imputed.append(json.dumps(list(row.imputed)) if row.imputed else None)
        request_jsons.append(request_json)
        unit = row.unit_id
        if dec.redactor is not None:
            tensors = dec.redactor.tensors(tensors)
            if dec.redactor.unit:
                unit = dec.redactor.value(unit)
        inputs.append(tensors)
        units.append(unit)
        raw.append(row.request if dec.record_bytes and not big else None)
        if truncated:
            truncated_at.append(index)
    columns = _request_columns(rows)
    if truncated_at:  # else both columns take their defaults (false, NULL): no cost per row
        columns["truncated"] = _flags(len(rows), truncated_at)
        hashes: list[str | None] = [None] * len(rows)
        for index in truncated_at:
            hashes[index] = _digest(rows[index].request)
        columns["request_hash"] = pa.array(hashes, pa.string())
    columns.update({
        "unit_id": pa.array(units, pa.string()),
        "request_bytes": pa.array(raw, pa.binary()),
        "inputs": pa.array(inputs, _TENSORS),
        "contract": pa.array(contracts, pa.string()),
        "violations": pa.array(violations, pa.string()),
        "imputed": pa.array(imputed, pa.string()),
        "request_json": pa.array(request_jsons, pa.string()),
    })
    return pa.table(columns)


_REQUEST_TEXT = ("request_id", "route", "method", "experiment", "variant", "config_version",
                 "trace_id", "span_id", "status")
_CALL_TEXT = ("request_id", "route", "method", "backend", "backend_version", "role", "status",
              "config_version")


def _request_columns(rows: Sequence[RequestRecord]) -> dict[str, pa.Array]:
    """The columns every requests batch has, straight from the records."""
    cols = dict(zip(RequestRecord._fields, zip(*rows, strict=True), strict=True))
    out: dict[str, pa.Array] = {name: pa.array(cols[name], pa.string()) for name in _REQUEST_TEXT}
    out["ts"] = _timestamps(cols["ts"])
    out["unit_id"] = pa.array(cols["unit_id"], pa.string())
    out["exposed"] = pa.array(cols["exposed"], pa.bool_())
    out["latency_ms"] = pa.array(cols["latency_ms"], pa.float64())
    out["request_size"] = pa.array([len(b) for b in cols["request"]], pa.int32())
    out["messages"] = pa.array(cols["messages"], pa.int32())
    return out


def _call_columns(rows: Sequence[CallRecord]) -> dict[str, pa.Array]:
    """The columns every calls batch has, straight from the records."""
    cols = dict(zip(CallRecord._fields, zip(*rows, strict=True), strict=True))
    responses = cols["response"]
    out: dict[str, pa.Array] = {name: pa.array(cols[name], pa.string()) for name in _CALL_TEXT}
    out["ts"] = _timestamps(cols["ts"])
    out["served"] = pa.array(cols["served"], pa.bool_())
    out["latency_ms"] = pa.array(cols["latency_ms"], pa.float64())
    out["request_size"] = pa.array(cols["request_size"], pa.int32())
    out["response_size"] = pa.array([None if r is None else len(r) for r in responses],
                                    pa.int32())
    out["error"] = pa.array(cols["error"], pa.string())
    out["response_hash"] = pa.array(
        [None if r is None else hashlib.blake2b(r, digest_size=8).hexdigest()
         for r in responses], pa.string())
    out["messages"] = pa.array(cols["messages"], pa.int32())
    out["first_message_ms"] = pa.array(cols["first_message_ms"], pa.float64())
    return out


def _plain_requests(rows: Sequence[RequestRecord]) -> pa.Table:
    """Raw routes with nothing to decode, check or keep: every column in bulk."""
    columns = _request_columns(rows)
    columns["inputs"] = pa.nulls(len(rows), _TENSORS)
    return pa.table(columns)


def _flags(n: int, true_at: list[int]) -> pa.Array:
    flags = [False] * n
    for index in true_at:
        flags[index] = True
    return pa.array(flags, pa.bool_())


def _calls_table(
    rows: Sequence[CallRecord], max_payload: int = DEFAULT_MAX_PAYLOAD
) -> tuple[pa.Table, Observed | None]:
    """The calls batch and what the call observer is told about each (None: nothing was
    decoded, each call is observed without score and label)."""
    if all(r.decoding.plain for r in rows):
        # Raw routes with nothing to decode, check or keep: every column in bulk.
        return pa.table(_call_columns(rows)), None
    outputs: list[list[dict[str, Any]] | None] = []
    output: list[list[float] | None] = []
    score: list[float | None] = []
    label: list[str | None] = []
    errors: list[str | None] = []
    raw: list[bytes | None] = []
    out_violations: list[str | None] = []
    response_jsons: list[str | None] = []
    truncated_at: list[int] = []
    small = max_payload // 8
    for index, row in enumerate(rows):
        dec = row.decoding
        error = row.error
        tensors = None
        found: Sequence[Any] | None = None
        response_json = None
        #: (compared output, score, label) of the answer
        summary: tuple[list[float] | None, float | None, str | None] = (None, None, None)
        # As for requests: an answer over the cap is recorded as its summary only.
        size = 0 if row.response is None else len(row.response)
        budget = None if size <= small else (0 if size > max_payload else max_payload)
        big = budget == 0
        truncated = big and dec.record_bytes
        if row.messages is not None and row.messages > 1:
            pass  # several stream messages are decoded one by one (stream_messages), never
            # merged into one (protobuf merging lets the last message's values win)
        elif hasattr(dec.codec, "decode_response_json"):  # a MethodCodec (cheap check)
            if big:
                truncated = True
            elif row.response is not None:
                try:
                    # hasattr does not narrow to the protocol (isinstance would be slow)
                    doc = cast(MethodCodec, dec.codec).decode_response_json(
                        row.method, row.response
                    )
                except CodecError as exc:
                    doc, error = None, f"undecodable response: {exc}"
                if doc is not None:
                    response_json = _json_text(dec, doc)
                    if len(response_json) > max_payload:
                        response_json, truncated = None, True
                    tensors = [t.as_row() for t in json_tensors(doc, dec.compare_fields)] or None
                    summary = summarize_json(doc, dec.compare_fields, dec.score_index)
        elif dec.codec is not None and row.response is not None:
            try:
                decoded = dec.codec.decode_response(row.response, budget)
            except CodecError as exc:
                decoded = None
                error = f"undecodable response: {exc}"
            if decoded is not None:
                tensors = [t.as_row() for t in decoded]
                if budget is not None:
                    truncated = truncated or big or any(t.truncated for t in decoded)
                try:
                    s = summarize(decoded, dec.compare_output, dec.score_index)
                except CodecError as exc:  # no compared output: this row says so, alone
                    error = error or f"undecodable response: {exc}"
                else:
                    summary = (s.output, s.score, s.label)
                if dec.contract is not None and dec.contract.outputs and not truncated:
                    from sidecar.contracts import check_outputs

                    found = check_outputs(dec.contract, decoded)
        out_violations.append(_violations_json(found if dec.redactor is None
                                               else dec.redactor.violations(found)))
        outputs.append(tensors)
        output.append(summary[0])
        score.append(summary[1])
        label.append(summary[2])
        response_jsons.append(response_json)
        errors.append(error if dec.redactor is None else dec.redactor.error(error))
        raw.append(row.response if dec.record_bytes and not big else None)
        if truncated:
            truncated_at.append(index)
    columns = _call_columns(rows)
    if truncated_at:
        columns["truncated"] = _flags(len(rows), truncated_at)
    columns.update({
        "response_bytes": pa.array(raw, pa.binary()),
        "error": pa.array(errors, pa.string()),
        "outputs": pa.array(outputs, _TENSORS),
        "output": pa.array(output, pa.list_(pa.float64())),
        "score": pa.array(score, pa.float64()),
        "label": pa.array(label, pa.string()),
        "violations": pa.array(out_violations, pa.string()),
        "response_json": pa.array(response_jsons, pa.string()),
    })
    return pa.table(columns), (score, label)


def _plain_table(rows: Sequence[Any]) -> pa.Table:
    fields = type(rows[0])._fields
    cols = list(zip(*rows, strict=True))
    data: dict[str, pa.Array] = {}
    for name, col in zip(fields, cols, strict=True):
        if name in ("ts", "received_at"):
            data[name] = _timestamps(col)
        elif name in ("value", "step_started"):
            data[name] = pa.array(col, pa.float64())
        elif name == "step_index":
            data[name] = pa.array(col, pa.int32())
        else:
            data[name] = pa.array(col, pa.string())
    return pa.table(data)


# event_id makes ingestion idempotent: a repeated id (in the batch or already stored) is
# skipped; the first one wins.
_OUTCOMES_INSERT = """
INSERT INTO outcomes BY NAME
SELECT b.* EXCLUDE (_n) FROM (
    SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY received_at) AS _n
    FROM _shadowcar_batch
) b
WHERE b._n = 1 AND NOT EXISTS (SELECT 1 FROM outcomes o WHERE o.event_id = b.event_id)
"""


def build_batch(
    table: str, rows: Sequence[Any], max_payload: int = DEFAULT_MAX_PAYLOAD
) -> tuple[pa.Table, Observed | None]:
    """``rows`` as one Arrow table for ``table``, decoded; for calls, what each observed."""
    if table == "calls":
        return _calls_table(rows, max_payload)
    if table == "requests":
        return _requests_table(rows, max_payload), None
    if table == "stream_messages":
        return stream_messages_table(rows, max_payload), None
    return _plain_table(rows), None


def insert_batch(con: duckdb.DuckDBPyConnection, table: str, batch: pa.Table) -> int:
    """Append an Arrow table built by :func:`build_batch`: one statement, one transaction.
    The rows inserted: fewer than the batch's for outcomes whose event id is stored."""
    # DuckDB finds the Arrow table by this local's name (a replacement scan): a third cheaper
    # than register() + unregister(), which cost 0.5 ms a batch with the GIL held (measured).
    _shadowcar_batch = batch  # read by name by the SQL below
    if table == "outcomes":
        result = con.execute(_OUTCOMES_INSERT).fetchall()
    else:
        result = con.execute(
            f"INSERT INTO {table} BY NAME SELECT * FROM _shadowcar_batch").fetchall()
    return int(result[0][0]) if result else batch.num_rows


def observe(on_call: CallObserver, rows: Sequence[Any], observed: Observed | None) -> None:
    """Tell ``on_call`` about written calls (``observed`` as :func:`build_batch` made it)."""
    if observed is None:
        for row in rows:
            on_call(row, None, None)
    else:
        for row, score, label in zip(rows, *observed, strict=True):
            on_call(row, score, label)


def write_batch(
    con: duckdb.DuckDBPyConnection,
    table: str,
    rows: Sequence[Any],
    on_call: CallObserver | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> None:
    """Append ``rows`` to ``table`` in one Arrow insert; ``on_call`` sees each decoded call
    once it is written. For writers of their own (replay, gold): the sink bisects instead."""
    batch, observed = build_batch(table, rows, max_payload)
    insert_batch(con, table, batch)
    if on_call is not None and table == "calls":
        observe(on_call, rows, observed)
