"""Round trips and error cases of the Open Inference Protocol codec, every datatype both ways.

The encoder here is written independently of the decoder, from the spec's wire layout.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sidecar._proto import inference_pb2 as pb
from sidecar.codecs import (
    DATATYPES,
    Codec,
    CodecError,
    OipCodec,
    RawCodec,
    Tensor,
    codec_for,
    decode_infer_request,
    decode_infer_response,
)
from sidecar.sink.schema import TENSOR_TYPE

_NUMPY = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def _length_prefixed(elements: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _request(tensors: Sequence[tuple[str, str, Sequence[int], Any]], *, raw: bool) -> bytes:
    """Serialize a ModelInferRequest; values are numpy arrays or lists of bytes."""
    request = pb.ModelInferRequest(model_name="m", id="r-1")
    for name, datatype, shape, values in tensors:
        wire = request.inputs.add(name=name, datatype=datatype, shape=list(shape))
        if raw:
            if datatype == "BYTES":
                request.raw_input_contents.append(_length_prefixed(values))
            else:
                request.raw_input_contents.append(np.ascontiguousarray(values).tobytes())
        elif datatype == "BYTES":
            wire.contents.bytes_contents.extend(values)
        else:
            getattr(wire.contents, _TYPED_FIELD[datatype]).extend(values.ravel().tolist())
    return request.SerializeToString()


def _response(tensors: Sequence[tuple[str, str, Sequence[int], Any]], *, raw: bool) -> bytes:
    """The same tensors as a ModelInferResponse, reusing the request encoder's layout."""
    request = pb.ModelInferRequest.FromString(_request(tensors, raw=raw))
    response = pb.ModelInferResponse(model_name="m", id="r-1")
    for wire in request.inputs:
        out = response.outputs.add(name=wire.name, datatype=wire.datatype, shape=wire.shape)
        if wire.HasField("contents"):
            out.contents.CopyFrom(wire.contents)
    response.raw_output_contents.extend(request.raw_input_contents)
    return response.SerializeToString()


def _decode_both(tensors: Sequence[tuple[str, str, Sequence[int], Any]], *, raw: bool) -> None:
    """Decode as request and response and check both against numpy's view of the values."""
    for decoded in (
        decode_infer_request(_request(tensors, raw=raw)),
        decode_infer_response(_response(tensors, raw=raw)),
    ):
        assert [t.name for t in decoded] == [t[0] for t in tensors]
        for tensor, (_, datatype, shape, values) in zip(decoded, tensors, strict=True):
            assert tensor.datatype == datatype
            assert tensor.shape == tuple(shape)
            if datatype == "BYTES":
                assert tensor.data is None
                assert tensor.text == [v.decode("utf-8", errors="replace") for v in values]
            else:
                assert tensor.text is None
                assert tensor.data is not None
                expected = np.asarray(values).astype(np.float64).ravel()
                np.testing.assert_array_equal(np.asarray(tensor.data), expected)


@pytest.mark.parametrize("datatype", sorted(_NUMPY))
@_SETTINGS
@given(data=st.data())
def test_numeric_raw_round_trip(datatype: str, data: st.DataObject) -> None:
    array = data.draw(hnp.arrays(_NUMPY[datatype], _shapes))
    _decode_both([("x", datatype, array.shape, array)], raw=True)


@pytest.mark.parametrize("datatype", sorted(_TYPED_FIELD))
@_SETTINGS
@given(data=st.data())
def test_numeric_typed_round_trip(datatype: str, data: st.DataObject) -> None:
    array = data.draw(hnp.arrays(_NUMPY[datatype], _shapes))
    _decode_both([("x", datatype, array.shape, array)], raw=False)


@pytest.mark.parametrize("raw", [True, False])
@_SETTINGS
@given(values=st.lists(st.binary(max_size=12), max_size=6))
def test_bytes_round_trip(raw: bool, values: list[bytes]) -> None:
    _decode_both([("s", "BYTES", [len(values)], values)], raw=raw)


def test_bool_is_zero_or_one() -> None:
    raw = pb.ModelInferRequest()
    raw.inputs.add(name="b", datatype="BOOL", shape=[3])
    raw.raw_input_contents.append(bytes([0, 1, 7]))
    assert decode_infer_request(raw.SerializeToString())[0].data == [0.0, 1.0, 1.0]
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="b", datatype="BOOL", shape=[2]).contents.bool_contents.extend(
        [True, False]
    )
    assert decode_infer_request(typed.SerializeToString())[0].data == [1.0, 0.0]


def test_bf16_raw_is_the_upper_half_of_fp32() -> None:
    values = np.array([1.5, -2.0, 0.0, np.inf], dtype=np.float32)
    upper = (values.view(np.uint32) >> 16).astype("<u2")
    request = pb.ModelInferRequest()
    request.inputs.add(name="h", datatype="BF16", shape=[4])
    request.raw_input_contents.append(upper.tobytes())
    assert decode_infer_request(request.SerializeToString())[0].data == values.tolist()


def test_fp16_sent_as_fp32_contents_is_accepted() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="h", datatype="FP16", shape=[2]).contents.fp32_contents.extend(
        [0.5, -1.0]
    )
    assert decode_infer_request(request.SerializeToString())[0].data == [0.5, -1.0]


def test_invalid_utf8_is_replaced() -> None:
    (tensor,) = decode_infer_request(
        _request([("s", "BYTES", [2], [b"ok", b"\xff\xfe"])], raw=True)
    )
    assert tensor.text == ["ok", "\ufffd\ufffd"]


def test_several_tensors_keep_order_and_shapes() -> None:
    features = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[7], [9]], dtype=np.int64)
    tensors = [
        ("features", "FP32", [2, 3], features),
        ("ids", "INT64", [2, 1], ids),
        ("tags", "BYTES", [2], [b"a", b"bc"]),
        ("scalar", "FP64", [], np.array(2.5)),
        ("empty", "INT32", [0, 5], np.zeros((0, 5), dtype=np.int32)),
    ]
    _decode_both(tensors, raw=True)
    _decode_both(tensors, raw=False)
    decoded = decode_infer_request(_request(tensors, raw=True))
    assert decoded[0].shape == (2, 3) and decoded[0].size == 6
    assert decoded[3] == Tensor("scalar", "FP64", (), [2.5], None)
    assert decoded[4].data == [] and decoded[4].size == 0


def test_empty_messages_decode_to_no_tensors() -> None:
    assert decode_infer_request(b"") == []
    assert decode_infer_response(b"") == []


def _bad_requests() -> dict[str, bytes]:
    cases: dict[str, pb.ModelInferRequest] = {}
    short = cases["typed count below shape"] = pb.ModelInferRequest()
    short.inputs.add(name="x", datatype="FP32", shape=[3]).contents.fp32_contents.extend([1, 2])
    missing = cases["no data for a non-empty shape"] = pb.ModelInferRequest()
    missing.inputs.add(name="x", datatype="INT32", shape=[1])
    ragged = cases["raw bytes not whole elements"] = pb.ModelInferRequest()
    ragged.inputs.add(name="x", datatype="FP32", shape=[1])
    ragged.raw_input_contents.append(b"\x00" * 5)
    long = cases["raw element count above shape"] = pb.ModelInferRequest()
    long.inputs.add(name="x", datatype="INT16", shape=[1])
    long.raw_input_contents.append(b"\x00" * 4)
    count = cases["raw entries differ from tensors"] = pb.ModelInferRequest()
    count.inputs.add(name="x", datatype="UINT8", shape=[1])
    count.inputs.add(name="y", datatype="UINT8", shape=[1])
    count.raw_input_contents.append(b"\x01")
    unknown = cases["unknown datatype"] = pb.ModelInferRequest()
    unknown.inputs.add(name="x", datatype="FLOAT", shape=[1])
    unknown.raw_input_contents.append(b"\x00" * 4)
    negative = cases["negative dimension"] = pb.ModelInferRequest()
    negative.inputs.add(name="x", datatype="UINT8", shape=[-1])
    negative.raw_input_contents.append(b"\x01")
    both = cases["typed and raw contents"] = pb.ModelInferRequest()
    both.inputs.add(name="x", datatype="UINT8", shape=[1]).contents.uint_contents.append(1)
    both.raw_input_contents.append(b"\x01")
    prefix = cases["truncated BYTES prefix"] = pb.ModelInferRequest()
    prefix.inputs.add(name="s", datatype="BYTES", shape=[1])
    prefix.raw_input_contents.append(b"\x01\x00")
    overrun = cases["BYTES element overruns"] = pb.ModelInferRequest()
    overrun.inputs.add(name="s", datatype="BYTES", shape=[1])
    overrun.raw_input_contents.append(struct.pack("<I", 9) + b"abc")
    extra = cases["more BYTES elements than the shape"] = pb.ModelInferRequest()
    extra.inputs.add(name="s", datatype="BYTES", shape=[1])
    extra.raw_input_contents.append(_length_prefixed([b"a", b"b"]))
    huge = cases["huge shape"] = pb.ModelInferRequest()
    huge.inputs.add(name="x", datatype="FP64", shape=[2**62, 2**62])
    huge.raw_input_contents.append(b"\x00" * 8)
    encoded = {name: message.SerializeToString() for name, message in cases.items()}
    encoded["garbage"] = b"\xff\xff\xff\xff\x0f"
    encoded["truncated field"] = pb.ModelInferRequest(model_name="abcdef").SerializeToString()[:-2]
    return encoded


@pytest.mark.parametrize(("case", "data"), sorted(_bad_requests().items()))
def test_bad_bytes_raise_codec_error(case: str, data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_infer_request(data)


def test_codec_error_is_a_value_error_naming_the_tensor() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name="features", datatype="FP32", shape=[2])
    request.raw_input_contents.append(b"\x00" * 4)
    with pytest.raises(ValueError, match=r"'features'.*needs 2 FP32 elements, found 1"):
        decode_infer_request(request.SerializeToString())


def test_response_errors_mention_outputs() -> None:
    response = pb.ModelInferResponse()
    response.outputs.add(name="p", datatype="FP32", shape=[1])
    response.raw_output_contents.extend([b"\x00" * 4, b"\x00" * 4])
    with pytest.raises(CodecError, match="2 raw output contents for 1 output tensors"):
        decode_infer_response(response.SerializeToString())


def test_as_row_fits_the_duckdb_tensor_type() -> None:
    tensors = [
        Tensor("p", "FP32", (1, 2), [0.25, 0.75], None),
        Tensor("s", "BYTES", (1,), None, ["yes"]),
    ]
    row = tensors[0].as_row()
    assert row == {
        "name": "p",
        "datatype": "FP32",
        "shape": [1, 2],
        "data": [0.25, 0.75],
        "text": None,
    }
    con = duckdb.connect()
    try:
        con.execute(f"CREATE TABLE t (inputs {TENSOR_TYPE}[])")
        con.execute("INSERT INTO t VALUES (?)", [[t.as_row() for t in tensors]])
        stored = con.execute("SELECT inputs FROM t").fetchone()
    finally:
        con.close()
    assert stored is not None
    assert stored[0] == [t.as_row() for t in tensors]


def test_every_datatype_is_known() -> None:
    assert set(_NUMPY) | {"BYTES", "BF16"} == set(DATATYPES)


def test_codec_for_names_the_codecs() -> None:
    oip = codec_for("oip")
    raw = codec_for("raw")
    assert isinstance(oip, OipCodec) and isinstance(oip, Codec)
    assert isinstance(raw, RawCodec) and isinstance(raw, Codec)
    data = _request([("x", "INT8", [1], np.array([3], dtype=np.int8))], raw=True)
    assert oip.decode_request(data) == [Tensor("x", "INT8", (1,), [3.0], None)]
    assert oip.decode_response(b"") == []
    assert raw.decode_request(data) is None
    assert raw.decode_response(b"\xff") is None
    with pytest.raises(ValueError, match="'protobuf'"):
        codec_for("protobuf")


def test_empty_typed_contents_beside_raw_contents_decode() -> None:
    """MLServer answers raw requests with raw contents and an empty `contents` message."""
    import numpy as np

    from sidecar._proto import inference_pb2 as pb
    from sidecar.codecs.oip import decode_infer_response

    resp = pb.ModelInferResponse(model_name="iris")
    out = resp.outputs.add(name="predict_proba", datatype="FP64", shape=[1, 3])
    out.contents.SetInParent()  # present but empty
    resp.raw_output_contents.append(np.array([0.1, 0.2, 0.7], "<f8").tobytes())
    (tensor,) = decode_infer_response(resp.SerializeToString())
    assert tensor.data == [0.1, 0.2, 0.7]
