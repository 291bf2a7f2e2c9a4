"""A test service of our own (not OIP): unary, server, client and bidi methods over messages
built from a descriptor set protoc writes at test time, served by a real grpc.aio server
with reflection. ``bump`` changes the score of chosen message indexes, so two servers'
streams differ exactly where a test says.
"""

from __future__ import annotations

import asyncio
import importlib.resources
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection
from grpc_tools import protoc

PROTO = """
syntax = "proto3";
package gen.v1;
message Prompt { string text = 1; int32 n = 2; }
message Token { int32 index = 1; string text = 2; double score = 3; repeated double probs = 4;
                string model = 5; }
service Gen {
  rpc Score(Prompt) returns (Token);
  rpc Generate(Prompt) returns (stream Token);
  rpc Collect(stream Prompt) returns (Token);
  rpc Chat(stream Prompt) returns (stream Token);
}
"""
SERVICE = "gen.v1.Gen"
SCORE, GENERATE = f"/{SERVICE}/Score", f"/{SERVICE}/Generate"
COLLECT, CHAT = f"/{SERVICE}/Collect", f"/{SERVICE}/Chat"
KINDS = {SCORE: "unary", GENERATE: "server", COLLECT: "client", CHAT: "bidi"}
_WKT = str(importlib.resources.files("grpc_tools") / "_proto")


def build_file_set(directory: Path) -> tuple[descriptor_pb2.FileDescriptorSet, Path]:
    """The service's descriptor set, and the file protoc wrote it to."""
    (directory / "gen.proto").write_text(PROTO)
    out = directory / "gen.pb"
    assert protoc.main(["protoc", f"-I{directory}", f"-I{_WKT}",
                        f"--descriptor_set_out={out}", "--include_imports",
                        str(directory / "gen.proto")]) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()), out


class GenServer:
    """gen.v1.Gen on a free loopback port. Token i of a stream has score ``i / 10`` plus
    ``bump.get(i, 0)`` (and ``bump_for[prompt text].get(i, 0)``); ``extra_for[text]`` more
    tokens than asked for, ``lead_for[text]`` tokens of negative index before them;
    ``fail`` makes every call UNAVAILABLE; ``delay_s`` paces a stream; ``options`` are the
    grpc server's."""

    def __init__(self, file_set: descriptor_pb2.FileDescriptorSet, *, reflect: bool = True,
                 bump: dict[int, float] | None = None, model: str = "gen-1",
                 delay_s: float = 0.0, bump_for: dict[str, dict[int, float]] | None = None,
                 extra_for: dict[str, int] | None = None,
                 lead_for: dict[str, int] | None = None,
                 options: list[tuple[str, Any]] | None = None) -> None:
        pool = descriptor_pool.DescriptorPool()
        for file_proto in file_set.file:
            pool.Add(file_proto)
        self.prompt = message_factory.GetMessageClass(pool.FindMessageTypeByName("gen.v1.Prompt"))
        self.token = message_factory.GetMessageClass(pool.FindMessageTypeByName("gen.v1.Token"))
        self.bump = dict(bump or {})
        self.bump_for = dict(bump_for or {})
        self.extra_for = dict(extra_for or {})
        self.lead_for = dict(lead_for or {})
        self.model = model
        self.delay_s = delay_s
        self.fail = False
        self.calls = 0
        self.written = 0
        self.ended = asyncio.Event()  # set when a streaming call ends (cancelled or not)
        ser = {"request_deserializer": self.prompt.FromString,
               "response_serializer": lambda m: m.SerializeToString()}
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Score": grpc.unary_unary_rpc_method_handler(self._score, **ser),
            "Generate": grpc.unary_stream_rpc_method_handler(self._generate, **ser),
            "Collect": grpc.stream_unary_rpc_method_handler(self._collect, **ser),
            "Chat": grpc.stream_stream_rpc_method_handler(self._chat, **ser),
        })
        self.server = grpc.aio.server(options=options)
        self.server.add_generic_rpc_handlers((handler,))
        if reflect:
            reflection.enable_server_reflection([SERVICE, reflection.SERVICE_NAME], self.server,
                                                pool=pool)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    def make(self, index: int, text: str, prompt: str = "") -> Any:
        score = (index / 10 + self.bump.get(index, 0.0)
                 + self.bump_for.get(prompt, {}).get(index, 0.0))
        return self.token(index=index, text=text, score=score, probs=[score, 1 - score],
                          model=self.model)

    async def _enter(self, context: Any) -> None:
        self.calls += 1
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")

    async def _score(self, request: Any, context: Any) -> Any:
        await self._enter(context)
        return self.make(request.n, request.text)

    async def _generate(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            await self._enter(context)
            for j in range(self.lead_for.get(request.text, 0), 0, -1):
                yield self.make(-j, f"lead{j}", request.text)
            for i in range(request.n + self.extra_for.get(request.text, 0)):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                self.written += 1
                yield self.make(i, f"{request.text}{i}", request.text)
        finally:
            self.ended.set()

    async def _collect(self, requests: Any, context: Any) -> Any:
        await self._enter(context)
        texts = [r.text async for r in requests]
        return self.make(len(texts), "|".join(texts))

    async def _chat(self, requests: Any, context: Any) -> AsyncIterator[Any]:
        try:
            await self._enter(context)
            i = 0
            async for request in requests:
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                self.written += 1
                yield self.make(i, request.text.upper(), request.text)
                i += 1
        finally:
            self.ended.set()

    async def start(self) -> GenServer:
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop(None)


def routes(codec: str, methods: Iterable[str] = (SCORE, GENERATE, COLLECT, CHAT),
           **extra: Any) -> list[dict[str, Any]]:
    """One route per method, with its streaming kind, codec and compared fields."""
    return [{"match": m, "primary": "p", "codec": codec, "streaming": KINDS[m],
             "compare_fields": ["score", "text"], **extra} for m in methods]


def codec_spec(kind: str, pb_path: Path) -> str:
    """``reflection`` or ``descriptor:FILE`` for the parametrized codec ``kind``."""
    return "reflection" if kind == "reflection" else f"descriptor:{pb_path}"


async def shadow_copy_done(sidecar: Any, shadow: GenServer, timeout: float = 20) -> None:
    """Wait until the sidecar's copy of a cut stream is over: its shadow read has ended
    (``mirror_in_flight`` back to 0) and, if the copy reached the shadow, the shadow's
    handler has ended too. A copy that starts after the caller is already gone is cancelled
    before it is sent (under load the fire-and-forget copy can start that late), so the
    shadow may never see it: waiting on the shadow alone hung for the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sidecar.mirror_in_flight:
        assert loop.time() < deadline, "the shadow's copy is still in flight"
        await asyncio.sleep(0.01)
    if shadow.calls:
        await asyncio.wait_for(shadow.ended.wait(), max(deadline - loop.time(), 0.1))
