"""Issue 17 (per-backend model name in replay and gold runs): a gold run and a replay's
candidate given --model ask the target for that model name, like backends[].model."""

from __future__ import annotations

from typing import Any

from sidecar._proto import inference_pb2 as pb
from sidecar.cli import build_parser
from sidecar.gold.cases import Expected, GoldCase
from sidecar.gold.runner import run_cases
from sidecar.replay.cli import options_from_args
from sidecar.replay.runner import _candidate
from tests.server.oip_fake import start_fake

INFER = "/inference.GRPCInferenceService/ModelInfer"


async def test_a_gold_run_asks_for_its_model_name() -> None:
    fake = await start_fake({"fraud-gbm": ["2"]})
    try:
        request = pb.ModelInferRequest(model_name="fraud-lr", model_version="1")
        request.inputs.add(name="x", datatype="FP64", shape=[1, 1])
        request.raw_input_contents.append(b"\x00" * 8)
        case = GoldCase("c1", INFER, request.SerializeToString(), Expected(output=(8.0,)),
                        1e-9, 1e-9, 1)
        run = await run_cases([case], fake.target, gold_set="s", model="fraud-gbm")
        assert [r.verdict for r in run.results] == ["pass"]
        assert fake.names("ModelInfer") == [("fraud-gbm", "")]
        # Without --model the caller's recorded name goes as it was: NOT_FOUND there.
        run = await run_cases([case], fake.target, gold_set="s")
        assert run.results[0].status == "NOT_FOUND"
    finally:
        await fake.server.stop(0)


def test_replay_options_carry_the_model_name(tmp_path: Any) -> None:
    args = build_parser().parse_args([
        "replay", "--from", str(tmp_path / "a.duckdb"), "--route", INFER, "--to",
        "127.0.0.1:1", "--backend-name", "gbm", "--backend-version", "2",
        "--model", "fraud-gbm", "--model-version", "2"])
    config = _candidate(options_from_args(args))
    assert (config.model, config.model_version) == ("fraud-gbm", "2")


async def test_stream_messages_name_the_backends_model() -> None:
    """Issue 17.1 (streams): every request message of an OIP stream to a backend with a
    model name carries it; other methods' messages go as they came."""
    import grpc

    from sidecar.backends.channel import Backend
    from sidecar.codecs.oip_header import read_model
    from sidecar.config import BackendConfig

    async def echo(requests: Any, context: Any) -> Any:
        async for message in requests:
            yield message

    async def echo_one(request: bytes, context: Any) -> Any:
        yield request

    handlers = {
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(echo),
        "ServerStream": grpc.unary_stream_rpc_method_handler(echo_one),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    backend = Backend(BackendConfig(name="gbm", version="2", target=f"127.0.0.1:{port}",
                                    model="fraud-gbm"), max_message_bytes=1 << 20)
    try:
        sent = [pb.ModelInferRequest(model_name="fraud-lr", id=str(i)).SerializeToString()
                for i in range(3)]

        async def messages() -> Any:
            for message in sent:
                yield message

        stream = backend.stream("bidi", "/inference.GRPCInferenceService/ModelStreamInfer")
        got = [read_model(m).name async for m in stream(messages(), timeout=10)]
        assert got == ["fraud-gbm"] * 3
        other = backend.stream("server", "/inference.GRPCInferenceService/ServerStream")
        assert [m async for m in other(sent[0], timeout=10)] == [sent[0]]
    finally:
        await backend.aclose()
        await server.stop(0)


def _stream_answer(error: str = "", answer: bytes | None = None) -> bytes:
    """A Triton ModelStreamInferResponse (error_message = 1, infer_response = 2), written out
    (the KServe v2 protos we generate do not define it)."""
    out = b""
    for number, value in ((1, error.encode()), (2, answer)):
        if value:
            out += bytes([number << 3 | 2]) + _varint(len(value)) + value
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


def _read_stream_answer(data: bytes) -> tuple[str, bytes]:
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        tag = data[pos]
        pos += 1
        length = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        fields[tag >> 3] = data[pos:pos + length]
        pos += length
    return fields.get(1, b"").decode(), fields.get(2, b"")


async def test_stream_answers_name_the_callers_model_again(start_sidecar, channel_to) -> None:
    """Issue 17 (streams, the answer side): a ModelStreamInfer route whose backend serves
    another model name hands the caller answers that name the model the caller asked for,
    as ModelInfer answers do; a stream's error answer and the backend's other bytes go as
    they came."""
    import grpc

    async def model(requests: Any, context: Any) -> Any:
        async for message in requests:
            asked = pb.ModelInferRequest.FromString(message)
            if asked.id == "fail":
                yield _stream_answer(error="bad input")
                continue
            answer = pb.ModelInferResponse(model_name=asked.model_name, model_version="7",
                                           id=asked.id)
            answer.outputs.add(name="y", datatype="FP64", shape=[1])
            answer.raw_output_contents.append(b"\x01" * 200)  # a length past one byte
            yield _stream_answer(answer=answer.SerializeToString())

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelStreamInfer": grpc.stream_stream_rpc_method_handler(model)})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        sc = await start_sidecar(
            {}, [{"match": "/inference.GRPCInferenceService/ModelStreamInfer",
                  "primary": "gbm", "streaming": "bidi", "codec": "oip"}],
            backends_override=[{"name": "gbm", "version": "2", "target": f"127.0.0.1:{port}",
                                "model": "fraud-gbm"}])
        stub = channel_to(sc.port).stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer")
        ids = ["a", "fail", "b"]

        async def messages() -> Any:
            for i in ids:
                yield pb.ModelInferRequest(model_name="fraud-lr", id=i).SerializeToString()

        got = [_read_stream_answer(m) async for m in stub(messages(), timeout=10)]
        assert [error for error, _ in got] == ["", "bad input", ""]
        answers = [pb.ModelInferResponse.FromString(a) for error, a in got if not error]
        assert [(a.model_name, a.model_version, a.id) for a in answers] == [
            ("fraud-lr", "7", "a"), ("fraud-lr", "7", "b")]
        assert all(a.raw_output_contents == [b"\x01" * 200] for a in answers)
    finally:
        await server.stop(0)
