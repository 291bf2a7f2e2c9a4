"""Issue 17 (per-backend model name, routes per model): the model name and version read and
rewritten in ModelInferRequest bytes agree with protobuf's own parser, whatever the field
order, duplicates, unknown fields or missing names; the rest of the bytes stay as they came."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar._proto import inference_pb2
from sidecar.codecs import CodecError
from sidecar.codecs.oip_header import ModelRef, ModelRewrite, read_model, rewrite_model

Request = inference_pb2.ModelInferRequest

names = st.text(max_size=40)
small = st.text(max_size=8)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@st.composite
def unknown_field(draw: st.DrawFn) -> bytes:
    """A field the message does not declare (numbers 8 and up), of any wire type."""
    number = draw(st.integers(8, 5000))
    wire = draw(st.sampled_from([0, 1, 2, 5]))
    tag = _varint(number << 3 | wire)
    if wire == 0:
        return tag + _varint(draw(st.integers(0, 2**64 - 1)))
    if wire == 1:
        return tag + draw(st.binary(min_size=8, max_size=8))
    if wire == 5:
        return tag + draw(st.binary(min_size=4, max_size=4))
    payload = draw(st.binary(max_size=64))
    return tag + _varint(len(payload)) + payload


@st.composite
def other_field(draw: st.DrawFn) -> bytes:
    """One declared field other than the name and version, serialized by protobuf."""
    kind = draw(st.sampled_from(["id", "param", "input", "output", "raw"]))
    msg = Request()
    if kind == "id":
        msg.id = draw(small) or "x"
    elif kind == "param":
        msg.parameters[draw(small)].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "input":
        tensor = msg.inputs.add(name=draw(small), datatype="FP32")
        tensor.shape.extend(draw(st.lists(st.integers(0, 9), max_size=3)))
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=8)))
    elif kind == "output":
        msg.outputs.add(name=draw(small))
    else:
        msg.raw_input_contents.append(draw(st.binary(max_size=256)))
    return msg.SerializeToString()


def _named(name: str | None = None, version: str | None = None) -> bytes:
    msg = Request()
    if name is not None:
        msg.model_name = name
    if version is not None:
        msg.model_version = version
    return msg.SerializeToString()


# Pieces of a message in any order: each name or version piece is one field-1 or field-2
# span (or nothing, for an empty string); concatenated serializations merge as protobuf says.
piece = st.one_of(
    st.tuples(st.just("name"), names.map(lambda n: _named(name=n))),
    st.tuples(st.just("version"), small.map(lambda v: _named(version=v))),
    st.tuples(st.just("other"), other_field()),
    st.tuples(st.just("other"), unknown_field()),
)
messages = st.lists(piece, max_size=12)


def _parse(data: bytes) -> Request:
    msg = Request()
    msg.ParseFromString(data)
    return msg


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_reader_equals_the_parser(pieces: list[tuple[str, bytes]]) -> None:
    data = b"".join(p for _, p in pieces)
    msg = _parse(data)
    assert read_model(data) == ModelRef(msg.model_name, msg.model_version)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(messages, names, small)
def test_rewrite_changes_only_name_and_version(pieces: list[tuple[str, bytes]], name: str,
                                               version: str) -> None:
    data = b"".join(p for _, p in pieces)
    out = rewrite_model(data, name, version)
    before = _parse(data)
    if (before.model_name, before.model_version) == (name, version):
        assert out is data
        return
    # Byte for byte: the new name and version in front, every other piece as it came.
    rest = b"".join(p for kind, p in pieces if kind == "other")
    assert out == _named(name, version) + rest
    after = _parse(out)
    before.model_name, before.model_version = name, version
    assert after.SerializeToString(deterministic=True) == \
        before.SerializeToString(deterministic=True)
    assert read_model(out) == ModelRef(name, version)


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_the_parsers_answer_or_a_codec_error(data: bytes) -> None:
    try:
        ours = read_model(data)
    except CodecError:
        return
    try:
        msg = _parse(data)
    except DecodeError:
        return  # we skip what we need not read (a broken tensor); the parser does not
    assert ours == ModelRef(msg.model_name, msg.model_version)


def test_a_real_request_keeps_its_tensor_bytes() -> None:
    msg = Request(model_name="fraud-lr", model_version="3", id="r1")
    tensor = msg.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    msg.raw_input_contents.append(bytes(range(16)))
    tensor.parameters["p"].bool_param = True
    data = msg.SerializeToString()
    assert read_model(data) == ModelRef("fraud-lr", "3")
    out = rewrite_model(data, "fraud-gbm", "")
    assert out.endswith(data[len(_named("fraud-lr", "3")):])
    assert _parse(out).model_name == "fraud-gbm" and _parse(out).model_version == ""
    assert rewrite_model(data, "fraud-lr", "3") is data


def test_model_rewrite_policy() -> None:
    """A renamed model gets the backend's version or none; an unchanged name keeps the
    caller's version (and bytes) unless the backend sets one."""
    data = _named("fraud", "2")
    assert ModelRewrite("fraud").apply(data) is data
    assert read_model(ModelRewrite("fraud-gbm").apply(data)) == ModelRef("fraud-gbm", "")
    assert read_model(ModelRewrite("fraud-gbm", "7").apply(data)) == ModelRef("fraud-gbm", "7")
    assert read_model(ModelRewrite("fraud", "1").apply(data)) == ModelRef("fraud", "1")
    response = _named("fraud-gbm", "7")
    restored = ModelRewrite("fraud-gbm").restore(response, ModelRef("fraud", "2"))
    assert read_model(restored) == ModelRef("fraud", "7")
    other = _named("else", "1")
    assert ModelRewrite("fraud-gbm").restore(other, ModelRef("fraud", "")) is other
    # Only the version: the caller's name stays.
    assert read_model(ModelRewrite(None, "9").apply(data)) == ModelRef("fraud", "9")
    assert ModelRewrite.of(None, None) is None


def test_a_metadata_response_is_renamed_with_all_its_versions() -> None:
    """ModelMetadataResponse: field 1 the name, field 2 *repeated* versions (all kept)."""
    meta = inference_pb2.ModelMetadataResponse(name="fraud-gbm", versions=["1", "2"],
                                               platform="sklearn")
    meta.inputs.add(name="x", datatype="FP64", shape=[-1, 4])
    data = meta.SerializeToString()
    out = ModelRewrite("fraud-gbm").restore(data, ModelRef("fraud", ""))
    back = inference_pb2.ModelMetadataResponse.FromString(out)
    meta.name = "fraud"
    assert back == meta


@pytest.mark.parametrize("data", [
    b"\x0a\x05abc",              # length past the end
    b"\x08\x01",                 # field 1 as a varint
    b"\x0a\x02\xff\xfe",         # a name that is not UTF-8
    b"\x00\x01",                 # field number 0
    b"\x2a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint past 10 bytes
    b"\x0c",                     # an end group never started
    b"\x0b" * 40,                # groups nested without end
])
def test_malformed_bytes_are_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        read_model(data)
    with pytest.raises(CodecError):
        rewrite_model(data, "m", "")
