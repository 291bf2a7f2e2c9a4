"""Checking decoded tensors against a contract, and imputing declared defaults into requests.

Checks are vectorised per tensor with numpy; imputation re-encodes an OIP ``ModelInferRequest``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

import numpy as np
from google.protobuf.message import DecodeError

from sidecar._proto import inference_pb2
from sidecar.codecs.oip import LENGTH_PREFIX, TYPED_FIELD
from sidecar.codecs.tensor import BYTES_DATATYPE, NUMERIC_DTYPES, CodecError, Tensor
from sidecar.contracts.model import Contract, FeatureSpec, InputSpec, OutputSpec, Scalar

__all__ = ["Rule", "Violation", "check_inputs", "check_outputs", "hide_values", "impute"]

#: The closed vocabulary of contract rules a violation names.
Rule: TypeAlias = Literal["missing", "datatype", "shape", "range", "category", "null", "nan"]

_INT_DATATYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64",
                            "INT8", "INT16", "INT32", "INT64"})


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule of one tensor or feature; ``detail`` says how, for humans.

    ``sample`` is the part of ``detail`` that quotes the request's own values
    (``min 3, max 9``, ``e.g. a, b``); :func:`hide_values` removes it for redacted tensors.
    """

    field: str
    rule: Rule
    detail: str
    #: The tensor the field belongs to (a feature's label names it too).
    tensor: str = ""
    #: The values quoted in ``detail`` ("" when it quotes none).
    sample: str = ""

    def without_values(self) -> Violation:
        """This violation with the quoted values replaced (counts and bounds stay)."""
        if not self.sample:
            return self
        detail = self.detail.replace(f"({self.sample})", "(values redacted)")
        return replace(self, detail=detail, sample="")


def hide_values(found: Sequence[Violation], tensors: Collection[str]) -> tuple[Violation, ...]:
    """``found`` with the values of the named (redacted) tensors withheld from every text."""
    if not tensors:
        return tuple(found)
    return tuple(v.without_values() if v.tensor in tensors else v for v in found)


def check_inputs(contract: Contract, tensors: Sequence[Tensor]) -> list[Violation]:
    """Every rule the request's decoded inputs break, in contract order."""
    found = {t.name: t for t in tensors}
    out: list[Violation] = []
    for spec in contract.inputs:
        tensor = found.get(spec.name)
        if tensor is None:
            hint = " (a default is declared: imputation adds it)" if spec.default_row() else ""
            out.append(Violation(spec.name, "missing", f"input tensor is absent{hint}",
                                 spec.name))
            continue
        if not _header_ok(spec, tensor, out):
            continue
        if spec.features:
            out += _feature_violations(spec, tensor)
    return out


def check_outputs(contract: Contract, tensors: Sequence[Tensor]) -> list[Violation]:
    """Every rule the response's decoded outputs break, in contract order."""
    found = {t.name: t for t in tensors}
    out: list[Violation] = []
    for spec in contract.outputs:
        tensor = found.get(spec.name)
        if tensor is None:
            out.append(Violation(spec.name, "missing", "output tensor is absent", spec.name))
            continue
        if not _header_ok(spec, tensor, out) or tensor.data is None:
            continue
        values = np.asarray(tensor.data, dtype=np.float64)
        nan = np.isnan(values)
        if not spec.allow_nan and nan.any():
            out.append(Violation(spec.name, "nan", f"{int(nan.sum())} of {values.size} "
                                                   "values are NaN", spec.name))
        if spec.range is not None:
            bad = _outside(values[~nan], spec.range)
            if bad is not None:
                out.append(Violation(spec.name, "range", bad[0], spec.name, bad[1]))
    return out


def _header_ok(spec: InputSpec | OutputSpec, tensor: Tensor, out: list[Violation]) -> bool:
    """Check datatype and shape; True when the values can be checked too."""
    comparable = True
    if tensor.datatype != spec.datatype:
        out.append(Violation(spec.name, "datatype",
                             f"expected {spec.datatype}, got {tensor.datatype}", spec.name))
        comparable = (tensor.datatype == BYTES_DATATYPE) == (spec.datatype == BYTES_DATATYPE)
    shape_ok = len(spec.shape) == len(tensor.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, tensor.shape, strict=True)
    )
    if not shape_ok:
        want = "[" + ", ".join("*" if d == -1 else str(d) for d in spec.shape) + "]"
        out.append(Violation(spec.name, "shape", f"expected {want}, got {list(tensor.shape)}",
                             spec.name))
    return comparable and shape_ok


def _feature_violations(spec: InputSpec, tensor: Tensor) -> list[Violation]:
    width = tensor.shape[-1] if tensor.shape else 1
    values: np.ndarray = (np.asarray(tensor.data, dtype=np.float64) if tensor.data is not None
                          else np.asarray(tensor.text or [], dtype=object))
    if width == 0 or values.size % width:
        return []
    matrix = values.reshape(-1, width)
    out: list[Violation] = []
    for position, feature in enumerate(spec.features):
        label = spec.feature_label(position)
        index = spec.feature_index(position)
        if index >= width:
            out.append(Violation(label, "shape", f"feature index {index} is outside the last "
                                                  f"dimension ({width})", spec.name))
            continue
        column = matrix[:, index]
        if tensor.data is not None:
            found = _numeric_feature(label, feature, column)
        else:
            found = _text_feature(label, feature, column)
        out += [replace(v, tensor=spec.name) for v in found]
    return out


def _numeric_feature(label: str, feature: FeatureSpec, column: np.ndarray) -> list[Violation]:
    out: list[Violation] = []
    nan = np.isnan(column)
    if not feature.nullable and nan.any():
        out.append(Violation(label, "null", f"{int(nan.sum())} of {column.size} values are NaN "
                                            "and the feature is not nullable"))
    finite = column[~nan]
    if feature.range is not None:
        bad = _outside(finite, feature.range)
        if bad is not None:
            out.append(Violation(label, "range", bad[0], sample=bad[1]))
    if feature.categories is not None:
        allowed = np.asarray([float(c) for c in feature.categories if not isinstance(c, str)])
        unknown = finite[~np.isin(finite, allowed)]
        if unknown.size:
            detail, sample = _unknown(unknown, column.size)
            out.append(Violation(label, "category", detail, sample=sample))
    return out


def _text_feature(label: str, feature: FeatureSpec, column: np.ndarray) -> list[Violation]:
    out: list[Violation] = []
    text = column.astype(str)
    empty = text == ""
    if not feature.nullable and empty.any():
        out.append(Violation(label, "null", f"{int(empty.sum())} of {text.size} values are empty "
                                            "and the feature is not nullable"))
    if feature.categories is not None:
        allowed = np.asarray([str(c) for c in feature.categories])
        present = text[~empty]
        unknown = present[~np.isin(present, allowed)]
        if unknown.size:
            detail, sample = _unknown(unknown, text.size)
            out.append(Violation(label, "category", detail, sample=sample))
    return out


def _outside(values: np.ndarray, bounds: tuple[float, float]) -> tuple[str, str] | None:
    """(detail, sample) of the values outside ``bounds``; None when none are."""
    low, high = bounds
    bad = values[(values < low) | (values > high)]
    if not bad.size:
        return None
    sample = f"min {float(bad.min()):g}, max {float(bad.max()):g}"
    return f"{bad.size} of {values.size} values outside [{low:g}, {high:g}] ({sample})", sample


def _unknown(values: np.ndarray, total: int) -> tuple[str, str]:
    """(detail, sample) of the values outside the allowed categories."""
    shown = sorted({str(v) for v in values[:1000].tolist()})[:5]
    sample = f"e.g. {', '.join(shown)}"
    return f"{values.size} of {total} values not allowed ({sample})", sample


def impute(contract: Contract, request_bytes: bytes) -> tuple[bytes, list[str]] | None:
    """Add each missing declared input that has a default; None when nothing is imputed.

    The new tensors are appended in contract order, typed or raw like the request's other
    inputs, and a leading ``-1`` dimension takes the batch size of the request's first input.
    Raises CodecError when ``request_bytes`` is not a ``ModelInferRequest``.
    """
    request = inference_pb2.ModelInferRequest()
    try:
        request.ParseFromString(request_bytes)
    except DecodeError as exc:
        raise CodecError(f"not a ModelInferRequest: {exc}") from exc
    except Exception as exc:  # the protobuf backends differ in what else they raise
        raise CodecError(f"not a ModelInferRequest: {type(exc).__name__}: {exc}") from exc
    present = {tensor.name for tensor in request.inputs}
    first: list[int] = list(request.inputs[0].shape) if request.inputs else []
    batch = int(first[0]) if first else 1
    raw = len(request.raw_input_contents) > 0
    imputed: list[str] = []
    for spec in contract.inputs:
        if spec.name in present:  # the common case: no default row to build
            continue
        row = spec.default_row()
        if row is None:
            continue
        planned = _fill(spec, row, batch)
        if planned is None:
            continue
        shape, values = planned
        tensor = request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
        if raw:
            request.raw_input_contents.append(_raw_bytes(spec.datatype, values))
        else:
            _typed(tensor.contents, spec.datatype, values)
        imputed.append(spec.name)
    if not imputed:
        return None
    return request.SerializeToString(), imputed


def _fill(spec: InputSpec, row: tuple[Scalar, ...], batch: int
          ) -> tuple[list[int], list[Scalar]] | None:
    """The concrete shape and the flattened values of an imputed tensor (None: cannot)."""
    dims = list(spec.shape)
    if dims and dims[0] == -1:
        dims[0] = batch
    open_dims = [i for i, d in enumerate(dims) if d == -1]
    if len(open_dims) > 1:
        return None
    if open_dims:
        known = math.prod(d for d in dims[1:] if d != -1)
        if known == 0 or len(row) % known:
            return None
        dims[open_dims[0]] = len(row) // known
    total = math.prod(dims)
    per_row = math.prod(dims[1:]) if dims else 1
    if len(row) == total:
        values = list(row)
    elif len(row) == 1:
        values = list(row) * total
    elif dims and len(row) == per_row:
        values = list(row) * dims[0]
    else:
        return None
    return dims, values


def _typed(contents: inference_pb2.InferTensorContents, datatype: str,
           values: list[Scalar]) -> None:
    field = getattr(contents, TYPED_FIELD[datatype])
    if datatype == BYTES_DATATYPE:
        field.extend(str(v).encode() for v in values)
    elif datatype == "BOOL":
        field.extend(bool(float(v)) for v in values)
    elif datatype in _INT_DATATYPES:
        field.extend(int(float(v)) for v in values)
    else:
        field.extend(float(v) for v in values)


def _raw_bytes(datatype: str, values: list[Scalar]) -> bytes:
    if datatype == BYTES_DATATYPE:
        encoded = [str(v).encode() for v in values]
        return b"".join(LENGTH_PREFIX.pack(len(e)) + e for e in encoded)
    numbers = np.asarray([float(v) for v in values], dtype=np.float64)
    if datatype == "BF16":  # bfloat16 is the upper half of an IEEE float32
        packed = (numbers.astype("<f4").view("<u4") >> 16).astype("<u2")
    elif datatype == "BOOL":
        packed = (numbers != 0).astype("|u1")
    else:
        packed = numbers.astype(NUMERIC_DTYPES[datatype])
    return bytes(packed.tobytes())
