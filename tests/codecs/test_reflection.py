"""Descriptors read over gRPC server reflection from a real loopback backend.

The backend's service exists only as a descriptor set protoc writes at test time; it parses
and answers with classes from that set, and reflects a pool built from it.
"""

from __future__ import annotations

import asyncio
import importlib.resources
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection
from grpc_tools import protoc

from sidecar.codecs import CodecError
from sidecar.codecs.descriptor import DescriptorCodec
from sidecar.codecs.reflection import (
    ReflectionError,
    load_reflection_descriptors,
    reflection_codec,
    route_json_codec,
)

_WKT = str(importlib.resources.files("grpc_tools") / "_proto")
_PROTO = """
syntax = "proto3";
package rank.v2;
import "google/protobuf/wrappers.proto";
import "common.proto";
message RankRequest { string query = 1; google.protobuf.FloatValue boost = 2; }
message RankResponse { repeated common.v1.Hit hits = 1; string model = 2; }
service Ranker { rpc Rank(RankRequest) returns (RankResponse); }
"""
_COMMON = """
syntax = "proto3";
package common.v1;
message Hit { string doc = 1; double score = 2; }
"""
RANK = "/rank.v2.Ranker/Rank"


class _Backend:
    """A grpc.aio server for rank.v2.Ranker built from a descriptor set, with reflection."""

    def __init__(self, file_set: descriptor_pb2.FileDescriptorSet, *, reflect: bool) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        for file_proto in file_set.file:
            self.pool.Add(file_proto)
        self.request_cls = message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName("rank.v2.RankRequest"))
        self.response_cls = message_factory.GetMessageClass(
            self.pool.FindMessageTypeByName("rank.v2.RankResponse"))
        self.server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "rank.v2.Ranker",
            {"Rank": grpc.unary_unary_rpc_method_handler(
                self._rank,
                request_deserializer=self.request_cls.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )},
        )
        self.server.add_generic_rpc_handlers((handler,))
        if reflect:
            reflection.enable_server_reflection(
                ["rank.v2.Ranker", reflection.SERVICE_NAME], self.server, pool=self.pool)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _rank(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = self.response_cls(model="bm25")
        boost = request.boost.value if request.HasField("boost") else 1.0
        for i, word in enumerate(request.query.split()):
            response.hits.add(doc=word, score=boost / (i + 1))
        return response


@pytest.fixture
def file_set(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    (tmp_path / "rank.proto").write_text(_PROTO)
    (tmp_path / "common.proto").write_text(_COMMON)
    out = tmp_path / "rank.pb"
    assert protoc.main(["protoc", f"-I{tmp_path}", f"-I{_WKT}", f"--descriptor_set_out={out}",
                        "--include_imports", str(tmp_path / "rank.proto")]) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@pytest.fixture
async def backend(file_set: descriptor_pb2.FileDescriptorSet) -> AsyncIterator[_Backend]:
    server = _Backend(file_set, reflect=True)
    await server.server.start()
    yield server
    await server.server.stop(None)


async def test_reflection_gives_a_set_that_decodes_the_backends_messages(
    backend: _Backend,
) -> None:
    target = f"127.0.0.1:{backend.port}"
    found = await load_reflection_descriptors(target)
    names = [f.name for f in found.file]
    # Every import, each before the files that import it.
    assert set(names) == {"rank.proto", "common.proto", "google/protobuf/wrappers.proto"}
    assert names.index("rank.proto") > names.index("common.proto")
    assert names.index("rank.proto") > names.index("google/protobuf/wrappers.proto")

    codec = DescriptorCodec(found, RANK, compare=["hits[].score"])
    assert codec.methods == (RANK,)
    request = backend.request_cls(query="a b")
    request.boost.value = 2.0
    async with grpc.aio.insecure_channel(target) as channel:
        answer = await channel.unary_unary(RANK)(request.SerializeToString())
    assert codec.decode_request_json(RANK, request.SerializeToString()) == {
        "query": "a b", "boost": 2.0}
    assert codec.decode_response_json(RANK, answer) == {
        "hits": [{"doc": "a", "score": 2.0}, {"doc": "b", "score": 1.0}], "model": "bm25"}
    tensors = codec.decode_response(answer)
    assert tensors is not None and tensors[0].data == [2.0, 1.0]


async def test_named_services_and_the_codec_helper(backend: _Backend) -> None:
    target = f"127.0.0.1:{backend.port}"
    codec = await reflection_codec(target, RANK, services=["rank.v2.Ranker"], timeout=5)
    assert codec.decode_response_json(RANK, b"") == {"hits": [], "model": ""}
    with pytest.raises(ReflectionError, match=r"file_containing_symbol 'no\.Such'"):
        await load_reflection_descriptors(target, ["no.Such"])


async def test_route_json_codec_from_a_route_setting(backend: _Backend, tmp_path: Path) -> None:
    target = f"127.0.0.1:{backend.port}"
    exact = await route_json_codec("reflection", match=RANK, primary_target=target,
                                   compare=["hits[].score"])
    assert (exact.method, exact.compare) == (RANK, ("hits[].score",))
    wildcard = await route_json_codec("reflection", match="/rank.v2.Ranker/*",
                                      primary_target=target)
    everything = await route_json_codec("reflection", match="*", primary_target=target)
    assert wildcard.method is None and wildcard.methods == everything.methods == (RANK,)
    out = tmp_path / "set.pb"
    out.write_bytes((await load_reflection_descriptors(target)).SerializeToString())
    from_file = await route_json_codec(f"descriptor:{out}", match=RANK, primary_target="unused")
    assert from_file.method == RANK
    with pytest.raises(CodecError, match="neither"):
        await route_json_codec("oip", match=RANK, primary_target=target)


async def test_recorded_bytes_decode_with_the_reflected_set(
    backend: _Backend, start_sidecar: Any, channel_to: Any, tmp_path: Path
) -> None:
    """What the sink will do: raw bytes recorded through the sidecar, decoded afterwards."""
    db = tmp_path / "rank.duckdb"
    target = f"127.0.0.1:{backend.port}"
    sc = await start_sidecar(
        {"ranker": target}, [{"match": "/rank.v2.Ranker/*", "primary": "ranker"}],
        db_path=db, storage={"path": str(db), "flush_interval_ms": 50, "record_bytes": True},
    )
    stub = channel_to(sc.port).unary_unary(RANK)
    for query in ("x", "x y z"):
        await stub(backend.request_cls(query=query).SerializeToString())
    await sc.aclose()
    codec = DescriptorCodec(await load_reflection_descriptors(target))
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT method, response_bytes FROM calls ORDER BY response_size").fetchall()
    con.close()
    docs = [codec.decode_response_json(method, raw) for method, raw in rows]
    assert [len(d["hits"]) for d in docs] == [1, 3]


async def test_no_reflection_service_is_a_reflection_error(
    file_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    plain = _Backend(file_set, reflect=False)
    await plain.server.start()
    try:
        with pytest.raises(ReflectionError, match="UNIMPLEMENTED") as info:
            await load_reflection_descriptors(f"127.0.0.1:{plain.port}", timeout=5)
        assert isinstance(info.value, CodecError)
    finally:
        await plain.server.stop(None)


async def test_silent_server_times_out() -> None:
    stalled = asyncio.Event()

    async def never(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        await stalled.wait()
        yield b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "grpc.reflection.v1alpha.ServerReflection",
        {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(never)},
    ),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with pytest.raises(ReflectionError, match=r"no reflection answer within 0\.3 s"):
            await load_reflection_descriptors(f"127.0.0.1:{port}", timeout=0.3)
    finally:
        stalled.set()
        await server.stop(None)
