"""The descriptor codec: any method's messages as JSON, from a set protoc writes at test time.

Test messages are built with classes from a pool of the test's own, never the codec's.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_tools import protoc
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar._proto import inference_pb2
from sidecar.codecs import Codec, CodecError
from sidecar.codecs.descriptor import DescriptorCodec, MethodCodec, read_descriptor_set

_ROOT = Path(__file__).resolve().parents[2]
_WKT = str(importlib.resources.files("grpc_tools") / "_proto")

SCORER_PROTO = """
syntax = "proto3";
package demo.v1;
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";

enum Kind { KIND_UNSPECIFIED = 0; FRAUD = 1; }
message Item { string id = 1; double score = 2; repeated string tags = 3; }
message ScoreRequest {
  string user = 1;
  repeated float features = 2;
  google.protobuf.Struct extra = 3;
  int64 big = 4;
}
message ScoreResponse {
  repeated Item items = 1;
  Kind kind = 2;
  map<string, float> probs = 3;
  google.protobuf.Timestamp at = 4;
  int64 count = 5;
  bool ok = 6;
  oneof detail { string reason = 7; int32 code = 8; }
}
service Scorer {
  rpc Score(ScoreRequest) returns (ScoreResponse);
  rpc Watch(ScoreRequest) returns (stream ScoreResponse);
}
"""
SCORE = "/demo.v1.Scorer/Score"


def compile_set(tmp_path: Path, name: str, text: str, *, include_imports: bool = True) -> Path:
    """Write ``name`` with ``text`` and compile it into a descriptor set beside it."""
    (tmp_path / name).write_text(text)
    out = tmp_path / (name + ".pb")
    args = ["protoc", f"-I{tmp_path}", f"-I{_WKT}", f"--descriptor_set_out={out}"]
    if include_imports:
        args.append("--include_imports")
    assert protoc.main([*args, str(tmp_path / name)]) == 0
    return out


def message_classes(path: Path) -> dict[str, type[Message]]:
    """Every message class of the set, by full name, from a pool of the test's own."""
    pool = descriptor_pool.DescriptorPool()
    file_set = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    for file_proto in file_set.file:
        pool.Add(file_proto)
    return {
        f"{fp.package}.{m.name}": message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{fp.package}.{m.name}")
        )
        for fp in file_set.file
        for m in fp.message_type
    }


@pytest.fixture
def scorer_set(tmp_path: Path) -> Path:
    return compile_set(tmp_path, "scorer.proto", SCORER_PROTO)


def _response(classes: dict[str, type[Message]]) -> Message:
    response: Any = classes["demo.v1.ScoreResponse"](kind=1, count=42, reason="high")
    response.items.add(id="a", score=0.5, tags=["x", "y"])
    response.items.add(id="b", score=0.25)
    response.probs["cat"] = 0.75
    response.at.seconds = 1_700_000_000
    return response  # type: ignore[no-any-return]


def test_response_decodes_to_json_with_proto_names_defaults_and_wkt(scorer_set: Path) -> None:
    classes = message_classes(scorer_set)
    codec = DescriptorCodec(str(scorer_set))
    doc = codec.decode_response_json(SCORE, _response(classes).SerializeToString())
    assert doc == {
        "items": [
            {"id": "a", "score": 0.5, "tags": ["x", "y"]},
            {"id": "b", "score": 0.25, "tags": []},
        ],
        "kind": "FRAUD",
        "probs": {"cat": 0.75},
        "at": "2023-11-14T22:13:20Z",
        "count": 42,
        "ok": False,
        "reason": "high",
    }


def test_request_decodes_struct_float32_and_int64(scorer_set: Path) -> None:
    classes = message_classes(scorer_set)
    request: Any = classes["demo.v1.ScoreRequest"](user="u1", features=[0.1, 2.0], big=7)
    request.extra.update({"country": "NZ", "n": 3})
    codec = DescriptorCodec(scorer_set)
    doc = codec.decode_request_json("demo.v1.Scorer/Score", request.SerializeToString())
    # float32 0.1 prints as its shortest round-tripping form, not 0.10000000149011612.
    assert doc == {"user": "u1", "features": [0.1, 2.0], "extra": {"country": "NZ", "n": 3.0},
                   "big": 7}


def test_empty_message_gives_every_default(scorer_set: Path) -> None:
    doc = DescriptorCodec(scorer_set).decode_response_json(SCORE, b"")
    assert doc == {"items": [], "kind": "KIND_UNSPECIFIED", "probs": {}, "count": 0,
                   "ok": False}


def test_methods_streaming_and_repr(scorer_set: Path) -> None:
    codec = DescriptorCodec(scorer_set, SCORE, compare=["items[].score"])
    assert codec.methods == ("/demo.v1.Scorer/Score", "/demo.v1.Scorer/Watch")
    assert codec.method == SCORE
    assert not codec.is_streaming(SCORE)
    assert codec.is_streaming("/demo.v1.Scorer/Watch")
    assert "scorer.proto.pb" in repr(codec)
    assert isinstance(codec, Codec)
    assert isinstance(codec, MethodCodec)


def test_plain_entries_return_compare_fields_as_tensors(scorer_set: Path) -> None:
    data = _response(message_classes(scorer_set)).SerializeToString()
    assert DescriptorCodec(scorer_set).decode_response(data) is None
    assert DescriptorCodec(scorer_set, SCORE).decode_response(data) is None
    codec = DescriptorCodec(scorer_set, SCORE, compare=["items[].score", "kind", "ok", "nope"])
    tensors = codec.decode_response(data)
    assert tensors is not None
    assert [(t.name, t.datatype, t.shape, t.data, t.text) for t in tensors] == [
        ("items[].score", "FP64", (2,), [0.5, 0.25], None),
        ("kind", "BYTES", (1,), None, ["FRAUD"]),
        ("ok", "BYTES", (1,), None, ["false"]),
    ]
    request = codec.decode_request(b"")
    assert request == []


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("/demo.v1.Scorer/Nope", "is not in"),
        ("/demo.v1.Other/Score", "is not in"),
        ("Score", "is not '/package.Service/Method'"),
        ("/a/b/c", "is not '/package.Service/Method'"),
    ],
)
def test_unknown_or_malformed_method_is_a_codec_error(
    scorer_set: Path, method: str, message: str
) -> None:
    codec = DescriptorCodec(scorer_set)
    with pytest.raises(CodecError, match=message):
        codec.decode_request_json(method, b"")
    with pytest.raises(CodecError, match=message):
        DescriptorCodec(scorer_set, method)


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x08"])
def test_bad_bytes_are_a_codec_error(scorer_set: Path, data: bytes) -> None:
    with pytest.raises(CodecError, match=r"not a demo\.v1\.ScoreResponse"):
        DescriptorCodec(scorer_set).decode_response_json(SCORE, data)


@pytest.fixture(scope="module")
def fuzz_codec(tmp_path_factory: pytest.TempPathFactory) -> DescriptorCodec:
    return DescriptorCodec(compile_set(tmp_path_factory.mktemp("fuzz"), "f.proto", SCORER_PROTO))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_codec_error(
    fuzz_codec: DescriptorCodec, data: bytes
) -> None:
    codec = fuzz_codec
    for decode in (codec.decode_request_json, codec.decode_response_json):
        try:
            doc = decode(SCORE, data)
        except CodecError:
            continue
        assert isinstance(doc, dict)


def test_bad_descriptor_sets_are_codec_errors(tmp_path: Path) -> None:
    with pytest.raises(CodecError, match="cannot read descriptor set"):
        DescriptorCodec(tmp_path / "missing.pb")
    (tmp_path / "junk.pb").write_bytes(b"\xff\x00junk")
    with pytest.raises(CodecError, match="is not a FileDescriptorSet"):
        read_descriptor_set(tmp_path / "junk.pb")
    (tmp_path / "empty.pb").write_bytes(b"")
    with pytest.raises(CodecError, match="holds no proto files"):
        DescriptorCodec(str(tmp_path / "empty.pb"))
    lacking = compile_set(tmp_path, "lacking.proto", SCORER_PROTO, include_imports=False)
    with pytest.raises(CodecError, match="--include_imports"):
        DescriptorCodec(lacking)
    with pytest.raises(CodecError, match="bad segment"):
        DescriptorCodec(compile_set(tmp_path, "ok.proto", SCORER_PROTO), compare=["a..b"])


def test_oip_messages_decode_like_the_oip_codec(tmp_path: Path) -> None:
    """The project's inference.proto through the descriptor codec, beside the generated one.

    The codec's own pool keeps ``inference.*`` from clashing with ``sidecar._proto``.
    """
    out = tmp_path / "inference.pb"
    assert protoc.main([
        "protoc", f"-I{_ROOT / 'protos'}", f"-I{_WKT}", f"--descriptor_set_out={out}",
        "--include_imports", str(_ROOT / "protos" / "inference.proto"),
    ]) == 0
    method = "/inference.GRPCInferenceService/ModelInfer"
    codec = DescriptorCodec(out, method, compare=["outputs[].contents.fp32_contents"])
    response = inference_pb2.ModelInferResponse(model_name="iris", id="r1")
    tensor = response.outputs.add(name="probs", datatype="FP32", shape=[1, 3])
    tensor.contents.fp32_contents.extend([0.25, 0.5, 0.25])
    doc = codec.decode_response_json(method, response.SerializeToString())
    assert doc["model_name"] == "iris"
    assert doc["outputs"][0]["shape"] == [1, 3]
    tensors = codec.decode_response(response.SerializeToString())
    assert tensors is not None and tensors[0].data == [0.25, 0.5, 0.25]

