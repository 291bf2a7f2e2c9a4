"""Gold cases: reading a set (JSON lines or Parquet), building requests, judging answers.

A bad file is a :class:`GoldFileError` naming the line (or Parquet row) and the problem.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from sidecar._proto import inference_pb2 as pb
from sidecar.codecs import Codec, CodecError, codec_for, summarize
from sidecar.codecs.descriptor import MethodCodec
from sidecar.codecs.fieldpath import JsonScalar
from sidecar.errors import ShadowcarError
from sidecar.exit_codes import EXIT_DATA, EXIT_USAGE
from sidecar.gold.fields import FieldTolerance, compare_fields, parse_fields, parse_tolerances

__all__ = [
    "DEFAULT_METHOD",
    "CaseResult",
    "Expected",
    "GoldCase",
    "GoldFileError",
    "GoldSourceError",
    "Verdict",
    "judge",
    "load_cases",
    "oip_request",
]

DEFAULT_METHOD: Final = "/inference.GRPCInferenceService/ModelInfer"
Verdict = Literal["pass", "regression", "error"]

_KEYS: Final = {"id", "method", "request_b64", "request_json", "expected", "atol", "rtol", "meta",
                "tolerances", "codec"}
_EXPECTED_KEYS: Final = {"output", "label", "response_b64", "fields"}
#: OIP datatype -> the InferTensorContents field that carries it.
_CONTENTS: Final = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


class GoldFileError(ShadowcarError):
    """A gold set file cannot be read; the message names the file and the line (exit 2)."""

    exit_code = EXIT_USAGE


class GoldSourceError(GoldFileError):
    """The recorded source a capture reads cannot be read: missing, locked, corrupt (exit 3)."""

    exit_code = EXIT_DATA


@dataclass(frozen=True)
class Expected:
    """What the model must answer: numbers within tolerance, a label, exact bytes, or
    decoded fields (any proto, by field path)."""

    output: tuple[float, ...] | None = None
    label: str | None = None
    response: bytes | None = None
    fields: dict[str, tuple[JsonScalar, ...]] | None = None


@dataclass(frozen=True)
class GoldCase:
    id: str
    method: str
    request: bytes
    expected: Expected
    atol: float
    rtol: float
    line: int
    #: per-field tolerances of ``expected.fields`` (others use atol and rtol)
    tolerances: dict[str, FieldTolerance] = field(default_factory=dict)
    #: the codec its answers decode with (capture writes the route's), None: the run's
    codec: str | None = None


@dataclass(frozen=True)
class CaseResult:
    case: GoldCase
    verdict: Verdict
    status: str
    output: tuple[float, ...] | None
    label: str | None
    max_abs_diff: float | None
    detail: str


def _flatten(value: Any) -> Iterator[Any]:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _numbers(value: Any, what: str) -> tuple[float, ...]:
    out = []
    for item in _flatten(value):
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise ValueError(f"{what} must hold numbers only, got {item!r}")
        out.append(float(item))
    return tuple(out)


def oip_request(spec: Any) -> bytes:
    """A serialized ModelInferRequest from ``{"inputs": [{name, datatype, shape, data}]}``."""
    if not isinstance(spec, dict) or not isinstance(spec.get("inputs"), list):
        raise ValueError('request_json must be {"inputs": [{"name", "datatype", "shape", "data"}]}')
    unknown = set(spec) - {"inputs", "model_name", "model_version", "id", "outputs"}
    if unknown:
        raise ValueError(f"request_json has unknown key(s) {sorted(unknown)}")
    request = pb.ModelInferRequest(model_name=str(spec.get("model_name", "")),
                                   model_version=str(spec.get("model_version", "")),
                                   id=str(spec.get("id", "")))
    for out in spec.get("outputs") or []:
        request.outputs.add(name=str(out["name"]) if isinstance(out, dict) else str(out))
    for i, tensor in enumerate(spec["inputs"]):
        if not isinstance(tensor, dict) or {"name", "datatype", "shape", "data"} - set(tensor):
            raise ValueError(f"inputs[{i}] needs name, datatype, shape and data")
        datatype = str(tensor["datatype"]).upper()
        if datatype not in _CONTENTS:
            raise ValueError(f"inputs[{i}].datatype {datatype!r} is not one of "
                             f"{', '.join(sorted(_CONTENTS))}")
        shape = [int(d) for d in tensor["shape"]]
        data = list(_flatten(tensor["data"]))
        if len(data) != math.prod(shape):
            raise ValueError(f"inputs[{i}]: shape {shape} needs {math.prod(shape)} values, "
                             f"got {len(data)}")
        entry = request.inputs.add(name=str(tensor["name"]), datatype=datatype, shape=shape)
        field = getattr(entry.contents, _CONTENTS[datatype])
        if datatype == "BYTES":
            field.extend(d.encode() if isinstance(d, str) else bytes(d) for d in data)
        elif datatype == "BOOL":
            field.extend(bool(d) for d in data)
        elif datatype in ("FP32", "FP64"):
            field.extend(float(d) for d in data)
        else:
            field.extend(int(d) for d in data)
    return request.SerializeToString()


def _case(raw: Any, line: int, method: str, atol: float, rtol: float) -> GoldCase:
    if not isinstance(raw, dict):
        raise ValueError("a case must be a JSON object")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} (allowed: {sorted(_KEYS)})")
    case_id = raw.get("id")
    if not isinstance(case_id, str | int) or str(case_id) == "":
        raise ValueError('"id" is required (a non-empty string)')
    has_b64, has_json = raw.get("request_b64") is not None, raw.get("request_json") is not None
    if has_b64 == has_json:
        raise ValueError('give exactly one of "request_b64" and "request_json"')
    if has_b64:
        try:
            request = base64.b64decode(str(raw["request_b64"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f'"request_b64" is not base64: {exc}') from exc
    else:
        request = oip_request(raw["request_json"])
    exp = raw.get("expected")
    if not isinstance(exp, dict) or not exp or set(exp) - _EXPECTED_KEYS:
        raise ValueError('"expected" must be {"output": [...]}, {"label": "..."}, '
                         '{"fields": {...}} and/or {"response_b64": "..."}')
    expected = Expected(
        output=_numbers(exp["output"], "expected.output") if exp.get("output") is not None
        else None,
        label=None if exp.get("label") is None else str(exp["label"]),
        response=base64.b64decode(str(exp["response_b64"])) if exp.get("response_b64")
        else None,
        fields=parse_fields(exp["fields"]) if exp.get("fields") is not None else None,
    )
    if expected == Expected():
        raise ValueError('"expected" names no output, label, fields or response_b64')
    codec = raw.get("codec")
    if codec is not None:
        from sidecar.replay.codecs import check_spec

        codec = check_spec(str(codec))
    tol = {}
    for key, default in (("atol", atol), ("rtol", rtol)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f'"{key}" must be a number >= 0, got {value!r}')
        tol[key] = float(value)
    return GoldCase(str(case_id), str(raw.get("method") or method), request, expected,
                    tol["atol"], tol["rtol"], line,
                    parse_tolerances(raw.get("tolerances"), tol["atol"], tol["rtol"]), codec)


def _records(path: Path) -> Iterator[tuple[int, str, Any]]:
    """(line or row number, how to name it, parsed record)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:
            raise GoldFileError(f"{path}: not a readable Parquet file: {exc}") from exc
        for i, row in enumerate(rows, start=1):
            clean = {k: v for k, v in row.items() if v is not None}
            if isinstance(clean.get("expected"), str):
                try:
                    clean["expected"] = json.loads(clean["expected"])
                except ValueError as exc:
                    raise GoldFileError(f"{path}: row {i}: expected is not JSON: {exc}") from exc
            if isinstance(clean.get("request_json"), str):
                clean["request_json"] = json.loads(clean["request_json"])
            yield i, f"row {i}", clean
        return
    with open(path, encoding="utf-8") as fh:
        for n, text in enumerate(fh, start=1):
            if not text.strip() or text.lstrip().startswith("//"):
                continue
            try:
                yield n, f"line {n}", json.loads(text)
            except ValueError as exc:
                raise GoldFileError(f"{path}: line {n}: not valid JSON: {exc}") from exc


def load_cases(path: str, *, method: str = DEFAULT_METHOD, atol: float = 1e-6,
               rtol: float = 1e-3) -> list[GoldCase]:
    """Read and check every case of a ``.jsonl`` or ``.parquet`` gold set."""
    file = Path(path)
    if not file.is_file():
        raise GoldFileError(f"{path}: no such gold set file")
    cases: list[GoldCase] = []
    seen: dict[str, str] = {}
    for number, where, raw in _records(file):
        try:
            case = _case(raw, number, method, atol, rtol)
        except (ValueError, TypeError, KeyError) as exc:
            raise GoldFileError(f"{path}: {where}: {exc}") from exc
        if case.id in seen:
            raise GoldFileError(f"{path}: {where}: duplicate id {case.id!r} "
                                f"(first at {seen[case.id]})")
        seen[case.id] = where
        cases.append(case)
    if not cases:
        raise GoldFileError(f"{path}: the gold set holds no cases")
    return cases


def judge(case: GoldCase, status: str, response: bytes | None, details: str | None,
          codec: str | Codec, compare_output: str | None = None,
          score_index: int = -1) -> CaseResult:
    """Compare one answer with the case: numbers within atol + rtol * |expected| (a field's
    own tolerances where the case names them), labels, strings and bytes exactly. A failed
    call or an undecodable answer is an ``error``."""
    if status != "OK" or response is None:
        return CaseResult(case, "error", status, None, None, None, details or status)
    exp = case.expected
    problems: list[str] = []
    if exp.response is not None and response != exp.response:
        problems.append("response bytes differ")
    output: tuple[float, ...] | None = None
    label: str | None = None
    diff: float | None = None
    built = codec_for(codec) if isinstance(codec, str) else codec
    if exp.fields is not None:
        if not isinstance(built, MethodCodec):
            return CaseResult(case, "error", status, None, None, None,
                              f"expected fields need a descriptor or reflection codec, not "
                              f"{codec!r}")
        try:
            doc = built.decode_response_json(case.method, response) or {}
        except CodecError as exc:
            return CaseResult(case, "error", status, None, None, None, f"undecodable: {exc}")
        found, diff = compare_fields(doc, exp.fields, case.tolerances,
                                     FieldTolerance(case.atol, case.rtol))
        problems.extend(found)
    if exp.output is not None or exp.label is not None:
        try:
            tensors = built.decode_response(response)
            if tensors is None:
                raise CodecError(f"codec {codec!r} does not decode; expect response_b64")
            summary = summarize(tensors, compare_output, score_index)
        except CodecError as exc:
            return CaseResult(case, "error", status, None, None, None, f"undecodable: {exc}")
        output = tuple(summary.output) if summary.output is not None else None
        label = summary.label
        if exp.output is not None:
            if output is None or len(output) != len(exp.output):
                got = "no output" if output is None else f"{len(output)} values"
                problems.append(f"expected {len(exp.output)} values, got {got}")
            else:
                actual, want = np.asarray(output), np.asarray(exp.output)
                worst = float(np.max(np.abs(actual - want))) if want.size else 0.0
                diff = worst if diff is None else max(diff, worst)
                if not np.allclose(actual, want, atol=case.atol, rtol=case.rtol):
                    problems.append(f"max |diff| {worst:.3g} beyond atol {case.atol:g} + "
                                    f"rtol {case.rtol:g}")
        if exp.label is not None and label != exp.label:
            problems.append(f"label {label!r} != expected {exp.label!r}")
    verdict: Verdict = "regression" if problems else "pass"
    return CaseResult(case, verdict, status, output, label, diff, "; ".join(problems))
