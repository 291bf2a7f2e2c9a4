"""The checked-in ``sidecar/_proto/`` matches what ``scripts/gen_protos.py`` produces.

Also pins the Open Inference Protocol wire contract (names and field numbers) interop relies on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from sidecar._proto import inference_pb2, inference_pb2_grpc

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gen_protos.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_gen_protos_under_test", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_code_matches_regeneration() -> None:
    differing = _load_script().check()
    assert differing == [], f"run .venv/bin/python scripts/gen_protos.py; stale: {differing}"


def test_check_reports_drift(tmp_path: Path) -> None:
    script = _load_script()
    script.generate(tmp_path)
    (tmp_path / "inference_pb2.py").write_text("# edited by hand\n", encoding="utf-8")
    (tmp_path / "orphan_pb2.py").write_text("", encoding="utf-8")
    (tmp_path / "inference_pb2_grpc.pyi").unlink()
    assert script.check(tmp_path) == [
        "inference_pb2.py",
        "inference_pb2_grpc.pyi",
        "orphan_pb2.py",
    ]


def _numbers(message: type) -> dict[str, int]:
    descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
    return {f.name: f.number for f in descriptor.fields}


def test_wire_contract_matches_the_open_inference_protocol() -> None:
    pb = inference_pb2
    assert pb.DESCRIPTOR.package == "inference"
    assert _numbers(pb.InferParameter) == {
        "bool_param": 1,
        "int64_param": 2,
        "string_param": 3,
        "double_param": 4,
        "uint64_param": 5,
    }
    assert _numbers(pb.InferTensorContents) == {
        "bool_contents": 1,
        "int_contents": 2,
        "int64_contents": 3,
        "uint_contents": 4,
        "uint64_contents": 5,
        "fp32_contents": 6,
        "fp64_contents": 7,
        "bytes_contents": 8,
    }
    tensor = {"name": 1, "datatype": 2, "shape": 3, "parameters": 4, "contents": 5}
    assert _numbers(pb.ModelInferRequest.InferInputTensor) == tensor
    assert _numbers(pb.ModelInferResponse.InferOutputTensor) == tensor
    assert _numbers(pb.ModelInferRequest.InferRequestedOutputTensor) == {
        "name": 1,
        "parameters": 2,
    }
    assert _numbers(pb.ModelInferRequest) == {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "inputs": 5,
        "outputs": 6,
        "raw_input_contents": 7,
    }
    assert _numbers(pb.ModelInferResponse) == {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "outputs": 5,
        "raw_output_contents": 6,
    }
    assert _numbers(pb.ModelMetadataResponse) == {
        "name": 1,
        "versions": 2,
        "platform": 3,
        "inputs": 4,
        "outputs": 5,
    }
    assert _numbers(pb.ModelMetadataResponse.TensorMetadata) == {
        "name": 1,
        "datatype": 2,
        "shape": 3,
    }
    assert _numbers(pb.ServerMetadataResponse) == {"name": 1, "version": 2, "extensions": 3}
    assert _numbers(pb.ModelReadyRequest) == {"name": 1, "version": 2}
    assert _numbers(pb.ModelMetadataRequest) == {"name": 1, "version": 2}


def test_service_methods() -> None:
    service = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    ]
    assert hasattr(inference_pb2_grpc, "GRPCInferenceServiceStub")
    assert hasattr(inference_pb2_grpc, "add_GRPCInferenceServiceServicer_to_server")
