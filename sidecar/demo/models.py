"""Small built-in Open Inference Protocol model servers for the demo, benchmarks and tests.

A :class:`LogisticModel` answers ``ModelInfer`` in-process; :func:`start_model_server` serves it
as a real ``inference.GRPCInferenceService`` on a loopback port, with optional injected faults.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import math
import random
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

import grpc
import numpy as np
import numpy.typing as npt

from sidecar._proto import inference_pb2 as pb
from sidecar._proto import inference_pb2_grpc as pb_grpc

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "InvalidInput",
    "LogisticModel",
    "ModelNotFound",
    "ModelServerHandle",
    "build_infer_request",
    "make_demo_models",
    "start_model_server",
]

#: The demo model's only input: FP32, shape [batch, features].
INPUT_NAME: Final = "features"
#: The demo model's only output: FP32, shape [batch, 2] holding [1 - p, p].
OUTPUT_NAME: Final = "probabilities"
#: How many recent invocation metadata tuples a server keeps for tests to inspect.
SEEN_METADATA_LIMIT: Final = 64

_SERVER_NAME: Final = "shadowcar-demo"
_PLATFORM: Final = "numpy_logistic"
# Angle between the primary's and the retrained model's weight vectors. For standard-normal
# features two linear classifiers through the origin disagree with probability angle / pi.
_RETRAIN_ANGLE: Final = 0.06 * math.pi
_RETRAIN_SCALE: Final = 1.05
_DEMO_BIAS: Final = 0.1


class InvalidInput(ValueError):
    """The request does not fit the model's inputs (answered INVALID_ARGUMENT)."""


class ModelNotFound(LookupError):
    """The request names a model this server does not serve (answered NOT_FOUND)."""


FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, eq=False)
class LogisticModel:
    """Binary logistic regression: ``p = sigmoid(x . weights + bias)``, answered as [1-p, p]."""

    name: str
    version: str
    weights: FloatArray
    bias: float

    def __post_init__(self) -> None:
        weights = np.asarray(self.weights, dtype=np.float64)
        if weights.ndim != 1 or weights.size == 0:
            raise ValueError(f"weights must have shape (F,) with F >= 1, got {weights.shape}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "bias", float(self.bias))

    @property
    def n_features(self) -> int:
        """F, the number of features per row."""
        return int(self.weights.shape[0])

    def predict_proba(self, features: npt.ArrayLike) -> FloatArray:
        """Class probabilities [1 - p, p] for each row of ``features`` (shape [B, F])."""
        x = np.asarray(features, dtype=np.float64)
        z = x @ self.weights + self.bias
        # log-space sigmoid: no overflow for large |z| (warnings are errors in tests)
        positive = np.exp(-np.logaddexp(0.0, -z))
        negative = np.exp(-np.logaddexp(0.0, z))
        return np.stack([negative, positive], axis=-1)

    def metadata(self) -> pb.ModelMetadataResponse:
        """This model's OIP metadata: one FP32 input [-1, F], one FP32 output [-1, 2]."""
        return pb.ModelMetadataResponse(
            name=self.name,
            versions=[self.version],
            platform=_PLATFORM,
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=INPUT_NAME, datatype="FP32", shape=[-1, self.n_features]
                )
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=OUTPUT_NAME, datatype="FP32", shape=[-1, 2]
                )
            ],
        )

    def serves(self, name: str, version: str = "") -> bool:
        """Whether this model answers to ``name`` (and ``version``, when one is given)."""
        return name == self.name and version in ("", self.version)

    def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Answer one ModelInfer; raw inputs get raw outputs, typed inputs typed outputs.

        An empty ``model_name`` means this model. ``model_version`` is not checked: a shadow
        given the primary's request bytes must still answer, as its own version.
        """
        if request.model_name and request.model_name != self.name:
            raise ModelNotFound(
                f"model {request.model_name!r} is not served here ({self.name!r} is)"
            )
        for requested in request.outputs:
            if requested.name != OUTPUT_NAME:
                raise InvalidInput(
                    f"unknown requested output {requested.name!r}; the model has {OUTPUT_NAME!r}"
                )
        features, raw = self._features(request)
        probabilities = self.predict_proba(features).astype(np.float32)
        response = pb.ModelInferResponse(
            model_name=self.name, model_version=self.version, id=request.id
        )
        output = response.outputs.add(
            name=OUTPUT_NAME, datatype="FP32", shape=list(probabilities.shape)
        )
        if raw:
            response.raw_output_contents.append(probabilities.astype("<f4").tobytes())
        else:
            output.contents.fp32_contents.extend(probabilities.ravel().tolist())
        return response

    def _features(self, request: pb.ModelInferRequest) -> tuple[npt.NDArray[np.float32], bool]:
        if len(request.inputs) != 1 or request.inputs[0].name != INPUT_NAME:
            names = [t.name for t in request.inputs]
            raise InvalidInput(f"expected exactly one input {INPUT_NAME!r}, got {names}")
        tensor = request.inputs[0]
        if tensor.datatype != "FP32":
            raise InvalidInput(f"input {INPUT_NAME!r} must be FP32, got {tensor.datatype!r}")
        shape = list(tensor.shape)
        if len(shape) != 2 or shape[0] < 0 or shape[1] != self.n_features:
            raise InvalidInput(
                f"input {INPUT_NAME!r} must have shape [batch, {self.n_features}], got {shape}"
            )
        count = shape[0] * shape[1]
        raw = len(request.raw_input_contents) > 0
        if raw:
            if len(request.raw_input_contents) != 1:
                raise InvalidInput(
                    f"expected 1 raw_input_contents entry, got {len(request.raw_input_contents)}"
                )
            if tensor.HasField("contents"):
                raise InvalidInput("use either raw_input_contents or contents, not both")
            data = request.raw_input_contents[0]
            if len(data) != count * 4:
                raise InvalidInput(
                    f"input {INPUT_NAME!r} shape {shape} needs {count * 4} raw bytes, "
                    f"got {len(data)}"
                )
            flat = np.frombuffer(data, dtype="<f4")
        else:
            values = tensor.contents.fp32_contents
            if len(values) != count:
                raise InvalidInput(
                    f"input {INPUT_NAME!r} shape {shape} needs {count} fp32_contents, "
                    f"got {len(values)}"
                )
            flat = np.asarray(values, dtype=np.float32)
        return flat.reshape(shape[0], shape[1]), raw


def make_demo_models(n_features: int = 8, seed: int = 7) -> tuple[LogisticModel, LogisticModel]:
    """A primary model and a retrained one that agree on most but not all decisions.

    The retrained weights are the primary's rotated by a small fixed angle (and rescaled), so
    on standard-normal features the argmax decisions agree about 94% of the time. Both serve
    the same model name, versions "1" and "2", so one request's bytes suit either.
    """
    if n_features < 2:
        raise ValueError(f"n_features must be at least 2, got {n_features}")
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=n_features)
    direction = rng.normal(size=n_features)
    direction -= (direction @ weights) / (weights @ weights) * weights
    direction *= np.linalg.norm(weights) / np.linalg.norm(direction)
    rotated = math.cos(_RETRAIN_ANGLE) * weights + math.sin(_RETRAIN_ANGLE) * direction
    primary = LogisticModel(name="demo", version="1", weights=weights, bias=_DEMO_BIAS)
    retrained = LogisticModel(
        name="demo", version="2", weights=_RETRAIN_SCALE * rotated, bias=_DEMO_BIAS
    )
    return primary, retrained


def build_infer_request(
    model_name: str, features: npt.ArrayLike, *, raw: bool = False, request_id: str = ""
) -> bytes:
    """A serialized ModelInferRequest carrying ``features`` ([B, F], or [F] for one row)."""
    array = np.asarray(features, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise ValueError(f"features must have shape [B, F] or [F], got {array.shape}")
    request = pb.ModelInferRequest(model_name=model_name, id=request_id)
    tensor = request.inputs.add(name=INPUT_NAME, datatype="FP32", shape=list(array.shape))
    if raw:
        request.raw_input_contents.append(np.ascontiguousarray(array, dtype="<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return request.SerializeToString()


@dataclass(slots=True)
class _Faults:
    """Injected latency and failures, drawn from one seeded generator."""

    delay_ms: float
    jitter_ms: float
    fail_rate: float
    rng: random.Random

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, got {self.fail_rate}")

    def draw(self) -> tuple[float, bool]:
        """Seconds to wait (uniform in delay +/- jitter, floored at 0) and whether to fail."""
        delay_ms = self.delay_ms + self.rng.uniform(-self.jitter_ms, self.jitter_ms)
        fail = self.rng.random() < self.fail_rate
        return max(0.0, delay_ms) / 1000.0, fail


@dataclass(slots=True)
class _ServerState:
    calls: int = 0
    seen_metadata: deque[tuple[tuple[str, str | bytes], ...]] = field(
        default_factory=lambda: deque(maxlen=SEEN_METADATA_LIMIT)
    )


_ERROR_STATUS: Final[dict[type[Exception], grpc.StatusCode]] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFound: grpc.StatusCode.NOT_FOUND,
}


class _ModelServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Translates gRPC calls to the model; the only logic here is fault injection."""

    def __init__(self, model: LogisticModel, faults: _Faults, state: _ServerState) -> None:
        self._model = model
        self._faults = faults
        self._state = state

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._model.serves(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=_SERVER_NAME, version=_package_version())

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        if not self._model.serves(request.name, request.version):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {request.name!r} version {request.version!r} is not served here",
            )
        return self._model.metadata()

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        self._state.calls += 1
        metadata = context.invocation_metadata() or ()
        self._state.seen_metadata.append(tuple((key, value) for key, value in metadata))
        delay_s, fail = self._faults.draw()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure")
        try:
            return self._model.infer(request)
        except (InvalidInput, ModelNotFound) as exc:
            await context.abort(_ERROR_STATUS[type(exc)], str(exc))
            raise  # abort raises; this keeps the type checker sure nothing is returned


def _package_version() -> str:
    try:
        return importlib.metadata.version("shadowcar")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class ModelServerHandle:
    """A running demo model server: its address, what it saw, and its shutdown."""

    def __init__(
        self, server: grpc.aio.Server, port: int, model: LogisticModel, state: _ServerState
    ) -> None:
        self._server = server
        self._state = state
        self._closed = False
        self.port = port
        self.model = model

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT``, ready for ``grpc.aio.insecure_channel``."""
        return f"127.0.0.1:{self.port}"

    @property
    def calls(self) -> int:
        """ModelInfer calls received, including those answered with an error."""
        return self._state.calls

    @property
    def seen_metadata(self) -> list[tuple[tuple[str, str | bytes], ...]]:
        """Invocation metadata of the most recent ModelInfer calls, oldest first (bounded)."""
        return list(self._state.seen_metadata)

    async def aclose(self, grace_s: float | None = None) -> None:
        """Stop serving; in-flight calls get ``grace_s`` to finish (None: cancel). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._server.stop(grace_s)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def start_model_server(
    model: LogisticModel,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    delay_ms: float = 0.0,
    jitter_ms: float = 0.0,
    fail_rate: float = 0.0,
    seed: int = 0,
) -> ModelServerHandle:
    """Serve ``model`` as ``inference.GRPCInferenceService`` on ``host:port`` (0: a free port).

    ModelInfer first waits ``delay_ms`` +/- ``jitter_ms`` (uniform), then answers UNAVAILABLE
    "injected failure" with probability ``fail_rate``; draws come from ``random.Random(seed)``.
    """
    faults = _Faults(delay_ms, jitter_ms, fail_rate, random.Random(seed))
    state = _ServerState()
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_ModelServicer(model, faults, state), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise OSError(f"could not bind a model server to {host}:{port}: {exc}") from exc
    if bound == 0:
        raise OSError(f"could not bind a model server to {host}:{port}")
    await server.start()
    return ModelServerHandle(server, bound, model, state)
