"""Decode recorded Open Inference Protocol (KServe v2) messages into :class:`Tensor` lists.

Runs in the sink's writer thread, never on the caller's path; every failure is a CodecError.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from google.protobuf.message import DecodeError

from sidecar._proto import inference_pb2
from sidecar.codecs.tensor import BYTES_DATATYPE, DATATYPES, NUMERIC_DTYPES, CodecError, Tensor

__all__ = [
    "LENGTH_PREFIX",
    "TYPED_FIELD",
    "OutputSummary",
    "decode_infer_request",
    "decode_infer_response",
    "decoded_size",
    "summarize",
]

# Which InferTensorContents field carries each datatype. FP16/BF16 have no typed field in the
# spec; some clients put them in fp32_contents, so that is accepted when present.
TYPED_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP16": "fp32_contents",
    "BF16": "fp32_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

LENGTH_PREFIX = struct.Struct("<I")


class _WireTensor(Protocol):
    """What InferInputTensor and InferOutputTensor have in common."""

    @property
    def name(self) -> str: ...
    @property
    def datatype(self) -> str: ...
    @property
    def shape(self) -> Sequence[int]: ...
    @property
    def contents(self) -> inference_pb2.InferTensorContents: ...
    def HasField(self, field_name: Literal["contents"]) -> bool: ...


@dataclass(frozen=True, slots=True)
class OutputSummary:
    """The compared output of one call, as the ``calls`` table's output/score/label columns."""

    output: list[float] | None
    score: float | None
    label: str | None


def decode_infer_request(data: bytes, max_bytes: int | None = None) -> list[Tensor]:
    """Decode a serialized ``ModelInferRequest`` into its input tensors.

    With ``max_bytes``, inputs whose decoded values would take more (8 bytes a number, the
    bytes of each BYTES element) come back as truncated summaries, never materialized.
    """
    request = inference_pb2.ModelInferRequest()
    _parse(request, data, "ModelInferRequest")
    return _decode_tensors(request.inputs, request.raw_input_contents, "input", max_bytes)


def decode_infer_response(data: bytes, max_bytes: int | None = None) -> list[Tensor]:
    """Decode a serialized ``ModelInferResponse`` into its output tensors (``max_bytes`` as
    for :func:`decode_infer_request`)."""
    response = inference_pb2.ModelInferResponse()
    _parse(response, data, "ModelInferResponse")
    return _decode_tensors(response.outputs, response.raw_output_contents, "output", max_bytes)


def summarize(
    outputs: Sequence[Tensor], output_name: str | None, score_index: int = -1
) -> OutputSummary:
    """Reduce decoded outputs to the compared output, a scalar score and a class label.

    Picks ``output_name`` (default: the first output). Numbers: ``output`` is the flattened
    data, ``score`` the only element of a scalar or ``output[score_index]`` of a vector (None
    when the index is out of range), ``label`` the argmax index of a vector with more than one
    element. BYTES: ``label`` is the first text element, ``output`` and ``score`` are None.
    """
    if output_name is None:
        if not outputs:
            return OutputSummary(output=None, score=None, label=None)
        chosen = outputs[0]
    else:
        found = [t for t in outputs if t.name == output_name]
        if not found:
            names = ", ".join(repr(t.name) for t in outputs) or "none"
            raise CodecError(f"output {output_name!r} not in the response (outputs: {names})")
        chosen = found[0]
    if chosen.data is None:
        text = chosen.text or []
        return OutputSummary(output=None, score=None, label=text[0] if text else None)
    values = list(chosen.data)
    if not values:
        return OutputSummary(output=values, score=None, label=None)
    if len(values) == 1:
        return OutputSummary(output=values, score=values[0], label=None)
    score = values[score_index] if -len(values) <= score_index < len(values) else None
    label = str(int(np.argmax(np.asarray(values, dtype=np.float64))))
    return OutputSummary(output=values, score=score, label=label)


def _parse(
    message: inference_pb2.ModelInferRequest | inference_pb2.ModelInferResponse,
    data: bytes,
    kind: str,
) -> None:
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise CodecError(f"not a {kind}: {exc}") from exc
    except Exception as exc:  # the protobuf backends differ in what else they raise
        raise CodecError(f"not a {kind}: {type(exc).__name__}: {exc}") from exc


def _decode_tensors(
    tensors: Sequence[_WireTensor], raw: Sequence[bytes], role: str, max_bytes: int | None
) -> list[Tensor]:
    if raw and len(raw) != len(tensors):
        raise CodecError(f"{len(raw)} raw {role} contents for {len(tensors)} {role} tensors")
    if max_bytes is not None and decoded_size(tensors, raw) > max_bytes:
        # Checked before any value becomes a Python float: a 16 MB message would otherwise
        # take ~30x its size in the writer before the sink could refuse it.
        return [Tensor(w.name, w.datatype, _shape(w), None, None, truncated=True)
                for w in tensors]
    decoded: list[Tensor] = []
    for index, wire in enumerate(tensors):
        shape = _shape(wire)
        if raw:
            # MLServer sends an empty `contents` beside raw contents: empty means absent.
            if wire.HasField("contents") and wire.contents.ByteSize():
                raise CodecError(
                    f"{role} {wire.name!r} has typed contents but raw {role} contents are used"
                )
            data, text = _from_raw(wire, shape, raw[index])
        else:
            data, text = _from_typed(wire, shape)
        decoded.append(Tensor(wire.name, wire.datatype, shape, data, text))
    return decoded


def decoded_size(tensors: Sequence[_WireTensor], raw: Sequence[bytes]) -> int:
    """Bytes the decoded values of ``tensors`` take: 8 a number (recorded as doubles), the
    length of each BYTES element; from the wire sizes, without decoding anything."""
    total = 0
    for index, wire in enumerate(tensors):
        if raw:
            size = len(raw[index])
            dtype = NUMERIC_DTYPES.get(wire.datatype)
            total += size if dtype is None else size // dtype.itemsize * 8
        elif wire.datatype == BYTES_DATATYPE:
            total += wire.contents.ByteSize()  # the elements plus a few bytes of framing each
        elif wire.datatype in TYPED_FIELD:  # an unknown datatype is refused by _shape
            total += len(getattr(wire.contents, TYPED_FIELD[wire.datatype])) * 8
    return total


def _shape(wire: _WireTensor) -> tuple[int, ...]:
    if wire.datatype not in DATATYPES:
        raise CodecError(f"tensor {wire.name!r}: unknown datatype {wire.datatype!r}")
    shape = tuple(int(dim) for dim in wire.shape)
    if any(dim < 0 for dim in shape):
        raise CodecError(f"tensor {wire.name!r}: negative dimension in shape {list(shape)}")
    return shape


def _element_count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _check_count(wire: _WireTensor, shape: tuple[int, ...], found: int) -> None:
    expected = _element_count(shape)
    if found != expected:
        raise CodecError(
            f"tensor {wire.name!r}: shape {list(shape)} needs {expected} {wire.datatype} "
            f"elements, found {found}"
        )


def _from_typed(
    wire: _WireTensor, shape: tuple[int, ...]
) -> tuple[list[float] | None, list[str] | None]:
    values: Sequence[object] = getattr(wire.contents, TYPED_FIELD[wire.datatype])
    _check_count(wire, shape, len(values))
    if wire.datatype == BYTES_DATATYPE:
        return None, _texts(values)  # type: ignore[arg-type]  # bytes_contents holds bytes
    if wire.datatype == "BOOL":
        return [1.0 if v else 0.0 for v in values], None
    return [float(v) for v in values], None  # type: ignore[arg-type]  # numeric fields


def _from_raw(
    wire: _WireTensor, shape: tuple[int, ...], raw: bytes
) -> tuple[list[float] | None, list[str] | None]:
    if wire.datatype == BYTES_DATATYPE:
        elements = _split_length_prefixed(wire, raw, _element_count(shape))
        _check_count(wire, shape, len(elements))
        return None, _texts(elements)
    dtype = NUMERIC_DTYPES[wire.datatype]
    if len(raw) % dtype.itemsize:
        raise CodecError(
            f"tensor {wire.name!r}: {len(raw)} raw bytes is not a whole number of "
            f"{dtype.itemsize}-byte {wire.datatype} elements"
        )
    _check_count(wire, shape, len(raw) // dtype.itemsize)
    array = np.frombuffer(raw, dtype=dtype)
    if wire.datatype == "BOOL":
        return (array != 0).astype(np.float64).tolist(), None
    if wire.datatype == "BF16":
        # bfloat16 is the upper half of an IEEE float32.
        array = (array.astype(np.uint32) << 16).view(np.float32)
    result: list[float] = array.astype(np.float64).tolist()
    return result, None


def _split_length_prefixed(wire: _WireTensor, raw: bytes, expected: int) -> list[bytes]:
    """Split 4-byte little-endian length-prefixed elements; more than ``expected`` is an error."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(elements) == expected:
            raise CodecError(
                f"tensor {wire.name!r}: more than the {expected} BYTES elements its shape allows"
            )
        if offset + LENGTH_PREFIX.size > len(raw):
            raise CodecError(f"tensor {wire.name!r}: truncated BYTES length prefix")
        (length,) = LENGTH_PREFIX.unpack_from(raw, offset)
        offset += LENGTH_PREFIX.size
        if offset + length > len(raw):
            raise CodecError(
                f"tensor {wire.name!r}: BYTES element of {length} bytes overruns the raw contents"
            )
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _texts(values: Iterable[bytes]) -> list[str]:
    return [bytes(v).decode("utf-8", errors="replace") for v in values]
