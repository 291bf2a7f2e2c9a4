"""Streams recorded message by message: one ``stream_messages`` row per message kept, each
decoded alone (index, time, size, bytes when ``record_bytes``, decoded fields, the route's
``stream_key``). Bounds: ``storage.stream_max_messages`` and ``stream_max_bytes`` per stream;
the call's row counts every message seen (docs/streams.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Protocol, cast

import numpy as np
import pyarrow as pa

from sidecar.codecs import CodecError, summarize
from sidecar.codecs.descriptor import MethodCodec
from sidecar.codecs.fieldpath import extract, summarize_json
from sidecar.sink.records import Decoding

__all__ = [
    "Direction",
    "StreamMessageRecord",
    "StreamRecorder",
    "message_records",
    "stream_messages_table",
]

#: ``request``: the caller's stream; ``response``: a backend's.
Direction = Literal["request", "response"]

_TS = pa.timestamp("us")


class StreamMessageRecord(NamedTuple):
    """One message of a stream, as the hot path hands it over (decoded in the writer)."""

    request_id: str
    ts: float
    route: str
    method: str
    backend: str | None
    role: str
    direction: str
    idx: int
    offset_ms: float
    message: bytes
    decoding: Decoding
    stream_key: str | None = None


class StreamRecorder(Protocol):
    """Where a stream's messages go (the sink): its bounds and its door."""

    @property
    def stream_bounds(self) -> tuple[int, int]:
        """(messages, bytes) of one stream kept one by one."""
        ...

    def record_messages(self, rows: Sequence[StreamMessageRecord]) -> None:
        """Accept one stream's kept messages (dropped and counted when the buffer is full)."""
        ...


def message_records(
    request_id: str, started: float, route: str, method: str, decoding: Decoding,
    stream_key: str | None, kept: Sequence[tuple[float, bytes]], backend: str | None,
    role: str, direction: Direction,
) -> list[StreamMessageRecord]:
    """Kept (offset ms, bytes) messages of one side of one call as records; ``started`` is
    the call's wall-clock start."""
    return [StreamMessageRecord(request_id, started + offset / 1000, route, method, backend,
                                role, direction, i, offset, body, decoding, stream_key)
            for i, (offset, body) in enumerate(kept)]


def _decode(row: StreamMessageRecord, max_payload: int) -> dict[str, Any]:
    """One message's decoded columns (message_json, output, score, label, key, truncated)."""
    dec = row.decoding
    out: dict[str, Any] = {"message_json": None, "output": None, "score": None,
                           "label": None, "key": None, "truncated": False}
    if len(row.message) > max_payload:
        out["truncated"] = dec.codec is not None
        return out
    if hasattr(dec.codec, "decode_response_json"):
        codec = cast(MethodCodec, dec.codec)
        try:
            doc = (codec.decode_response_json(row.method, row.message)
                   if row.direction == "response"
                   else codec.decode_request_json(row.method, row.message))
        except CodecError:
            return out
        if doc is None:
            return out
        if row.stream_key:
            found = extract(doc, row.stream_key)
            out["key"] = None if not found else str(found[0])
        if row.direction == "response":
            out["output"], out["score"], out["label"] = summarize_json(
                doc, dec.compare_fields, dec.score_index)
        if dec.redactor is not None and dec.redactor.fields:
            doc = dec.redactor.json(doc)
        text = json.dumps(doc, separators=(",", ":"))
        if len(text) > max_payload:
            out["truncated"] = True
        else:
            out["message_json"] = text
    elif dec.codec is not None and row.direction == "response":
        try:
            tensors = dec.codec.decode_response(row.message)
            if tensors is not None:
                s = summarize(tensors, dec.compare_output, dec.score_index)
                out["output"], out["score"], out["label"] = s.output, s.score, s.label
        except CodecError:
            pass
    return out


def stream_messages_table(rows: Sequence[StreamMessageRecord], max_payload: int) -> pa.Table:
    """The ``stream_messages`` batch of ``rows``, each message decoded alone."""
    decoded = [_decode(r, max_payload) for r in rows]
    micros = (np.asarray([r.ts for r in rows], dtype=np.float64) * 1e6).astype(np.int64)

    def text(name: str) -> pa.Array:
        return pa.array([getattr(r, name) for r in rows], pa.string())

    def col(name: str, kind: pa.DataType) -> pa.Array:
        return pa.array([d[name] for d in decoded], kind)

    return pa.table({
        "request_id": text("request_id"),
        "ts": pa.array(micros).view(_TS),
        "route": text("route"),
        "method": text("method"),
        "backend": text("backend"),
        "role": text("role"),
        "direction": text("direction"),
        "idx": pa.array([r.idx for r in rows], pa.int32()),
        "offset_ms": pa.array([r.offset_ms for r in rows], pa.float64()),
        "size": pa.array([len(r.message) for r in rows], pa.int32()),
        "message_bytes": pa.array(
            [r.message if r.decoding.record_bytes and r.decoding.redactor is None
             and len(r.message) <= max_payload else None for r in rows], pa.binary()),
        "message_json": col("message_json", pa.string()),
        "output": col("output", pa.list_(pa.float64())),
        "score": col("score", pa.float64()),
        "label": col("label", pa.string()),
        "key": col("key", pa.string()),
        "truncated": col("truncated", pa.bool_()),
    })
