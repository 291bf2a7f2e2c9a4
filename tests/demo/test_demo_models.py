"""The demo model servers over real gRPC: inference, errors, injected faults and metadata."""

from __future__ import annotations

import re
import time

import grpc
import numpy as np
import pytest

from sidecar._proto import inference_pb2 as pb
from sidecar._proto import inference_pb2_grpc as pb_grpc
from sidecar.codecs import OipCodec
from sidecar.demo import (
    LogisticModel,
    ModelServerHandle,
    build_infer_request,
    make_demo_models,
    start_model_server,
)

_TIMEOUT_S = 5.0


def _expected(model: LogisticModel, features: np.ndarray) -> np.ndarray:
    z = features.astype(np.float64) @ model.weights + model.bias
    p = 1.0 / (1.0 + np.exp(-z))
    return np.stack([1.0 - p, p], axis=1)


def _features(rows: int, n_features: int = 8, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, n_features)).astype(np.float32)


async def _infer(
    stub: pb_grpc.GRPCInferenceServiceStub, data: bytes, **kwargs: object
) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest.FromString(data)
    response: pb.ModelInferResponse = await stub.ModelInfer(request, timeout=_TIMEOUT_S, **kwargs)
    return response


async def test_typed_infer_matches_numpy(
    stub: pb_grpc.GRPCInferenceServiceStub, primary: LogisticModel
) -> None:
    features = _features(5)
    response = await _infer(stub, build_infer_request("demo", features, request_id="r-7"))
    assert (response.model_name, response.model_version, response.id) == ("demo", "1", "r-7")
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("probabilities", "FP32", [5, 2])
    assert not response.raw_output_contents
    got = np.asarray(output.contents.fp32_contents).reshape(5, 2)
    np.testing.assert_allclose(got, _expected(primary, features), rtol=1e-6, atol=1e-7)


async def test_raw_infer_answers_raw(
    stub: pb_grpc.GRPCInferenceServiceStub, primary: LogisticModel
) -> None:
    features = _features(3)
    response = await _infer(stub, build_infer_request("demo", features, raw=True))
    (output,) = response.outputs
    assert not output.HasField("contents")
    (raw,) = response.raw_output_contents
    got = np.frombuffer(raw, dtype="<f4").reshape(3, 2)
    np.testing.assert_allclose(got, _expected(primary, features), rtol=1e-6, atol=1e-7)


async def test_raw_bytes_round_trip_through_the_codec(
    channel: grpc.aio.Channel, primary: LogisticModel, model_server: ModelServerHandle
) -> None:
    # Bytes in, bytes out: the way the sidecar forwards calls without parsing them.
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    features = _features(1)
    answer = await call(build_infer_request("demo", features[0], raw=True), timeout=_TIMEOUT_S)
    (tensor,) = OipCodec().decode_response(answer) or []
    assert tensor.shape == (1, 2)
    np.testing.assert_allclose(tensor.data or [], _expected(primary, features)[0], rtol=1e-6)
    assert model_server.calls == 1


def _bad_requests() -> dict[str, pb.ModelInferRequest]:
    good = pb.ModelInferRequest.FromString(build_infer_request("demo", _features(2)))
    cases = {}
    renamed = cases["'features'"] = pb.ModelInferRequest()
    renamed.CopyFrom(good)
    renamed.inputs[0].name = "x"
    fp64 = cases["must be FP32"] = pb.ModelInferRequest()
    fp64.CopyFrom(good)
    fp64.inputs[0].datatype = "FP64"
    narrow = cases[r"shape \[batch, 8\], got \[2, 3\]"] = pb.ModelInferRequest()
    narrow.CopyFrom(good)
    del narrow.inputs[0].shape[:]
    narrow.inputs[0].shape.extend([2, 3])
    short = cases["needs 16 fp32_contents, got 15"] = pb.ModelInferRequest()
    short.CopyFrom(good)
    del short.inputs[0].contents.fp32_contents[-1]
    raw = cases["needs 64 raw bytes, got 60"] = pb.ModelInferRequest.FromString(
        build_infer_request("demo", _features(2), raw=True)
    )
    raw.raw_input_contents[0] = raw.raw_input_contents[0][:-4]
    output = cases["unknown requested output 'logits'"] = pb.ModelInferRequest()
    output.CopyFrom(good)
    output.outputs.add(name="logits")
    return cases


@pytest.mark.parametrize(("message", "request_"), sorted(_bad_requests().items()))
async def test_bad_input_is_invalid_argument(
    stub: pb_grpc.GRPCInferenceServiceStub, message: str, request_: pb.ModelInferRequest
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request_, timeout=_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() is not None
    assert re.search(message, info.value.details())


async def test_unknown_model_is_not_found(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _infer(stub, build_infer_request("other", _features(1)))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as meta:
        await stub.ModelMetadata(pb.ModelMetadataRequest(name="other"), timeout=_TIMEOUT_S)
    assert meta.value.code() == grpc.StatusCode.NOT_FOUND


async def test_fail_rate_one_is_unavailable(primary: LogisticModel) -> None:
    async with await start_model_server(primary, fail_rate=1.0) as handle:
        async with grpc.aio.insecure_channel(handle.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _infer(stub, build_infer_request("demo", _features(1)))
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert info.value.details() == "injected failure"
        assert handle.calls == 3


async def test_partial_fail_rate_is_seeded(primary: LogisticModel) -> None:
    outcomes: list[list[bool]] = []
    for _ in range(2):
        async with await start_model_server(primary, fail_rate=0.5, seed=11) as handle:
            async with grpc.aio.insecure_channel(handle.target) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                run = []
                for _ in range(20):
                    try:
                        await _infer(stub, build_infer_request("demo", _features(1)))
                        run.append(True)
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE
                        run.append(False)
                outcomes.append(run)
    assert outcomes[0] == outcomes[1]
    assert 0 < sum(outcomes[0]) < 20


async def test_delay_is_applied(primary: LogisticModel) -> None:
    async with await start_model_server(primary, delay_ms=150.0, jitter_ms=20.0, seed=1) as h:
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            await stub.ServerReady(pb.ServerReadyRequest(), timeout=_TIMEOUT_S)  # connect first
            started = time.perf_counter()
            await _infer(stub, build_infer_request("demo", _features(1)))
            elapsed = time.perf_counter() - started
    assert elapsed >= 0.125


async def test_metadata_methods(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    live = await stub.ServerLive(pb.ServerLiveRequest(), timeout=_TIMEOUT_S)
    ready = await stub.ServerReady(pb.ServerReadyRequest(), timeout=_TIMEOUT_S)
    assert live.live and ready.ready
    for name, version, expected in [
        ("demo", "", True),
        ("demo", "1", True),
        ("demo", "2", False),
        ("other", "", False),
    ]:
        answer = await stub.ModelReady(
            pb.ModelReadyRequest(name=name, version=version), timeout=_TIMEOUT_S
        )
        assert answer.ready is expected, (name, version)
    server = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=_TIMEOUT_S)
    assert server.name == "shadowcar-demo" and server.version
    model = await stub.ModelMetadata(pb.ModelMetadataRequest(name="demo"), timeout=_TIMEOUT_S)
    assert (model.name, list(model.versions)) == ("demo", ["1"])
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("features", "FP32", [-1, 8])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
        ("probabilities", "FP32", [-1, 2])
    ]


async def test_seen_metadata_is_recorded_and_bounded(
    stub: pb_grpc.GRPCInferenceServiceStub, model_server: ModelServerHandle
) -> None:
    data = build_infer_request("demo", _features(1))
    await _infer(stub, data, metadata=(("x-user-id", "u-1"),))
    assert ("x-user-id", "u-1") in model_server.seen_metadata[-1]
    for i in range(70):
        await _infer(stub, data, metadata=(("x-n", str(i)),))
    assert model_server.calls == 71
    assert len(model_server.seen_metadata) == 64
    assert ("x-n", "69") in model_server.seen_metadata[-1]


async def test_aclose_is_idempotent(primary: LogisticModel) -> None:
    handle = await start_model_server(primary)
    await handle.aclose()
    await handle.aclose()
    async with grpc.aio.insecure_channel(handle.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ServerLive(pb.ServerLiveRequest(), timeout=_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_demo_models_mostly_agree() -> None:
    primary, retrained = make_demo_models()
    assert (primary.name, primary.version) == ("demo", "1")
    assert (retrained.name, retrained.version) == ("demo", "2")
    assert not np.array_equal(primary.weights, retrained.weights)
    features = np.random.default_rng(0).standard_normal((20_000, 8))
    agree = np.mean(
        primary.predict_proba(features).argmax(axis=1)
        == retrained.predict_proba(features).argmax(axis=1)
    )
    assert 0.90 <= agree <= 0.97
    other = make_demo_models(n_features=3, seed=1)
    assert other[0].n_features == 3


def test_argument_validation(primary: LogisticModel) -> None:
    with pytest.raises(ValueError, match="n_features"):
        make_demo_models(n_features=1)
    with pytest.raises(ValueError, match="shape"):
        LogisticModel("m", "1", np.zeros((2, 2)), 0.0)
    with pytest.raises(ValueError, match=r"\[B, F\]"):
        build_infer_request("demo", np.zeros((1, 2, 3)))
    one_row = pb.ModelInferRequest.FromString(build_infer_request("demo", np.zeros(8)))
    assert list(one_row.inputs[0].shape) == [1, 8]


async def test_fault_options_are_validated(primary: LogisticModel) -> None:
    with pytest.raises(ValueError, match="fail_rate"):
        await start_model_server(primary, fail_rate=1.5)
    with pytest.raises(ValueError, match="delay_ms"):
        await start_model_server(primary, delay_ms=-1.0)


def test_extreme_logits_do_not_overflow(primary: LogisticModel) -> None:
    huge = np.full((2, 8), 1e6) * np.sign(primary.weights)
    huge[1] *= -1
    np.testing.assert_allclose(primary.predict_proba(huge), [[0.0, 1.0], [1.0, 0.0]])
