"""Built-in demo model servers speaking the Open Inference Protocol over real gRPC.

Used by the demo topology, the benchmarks and the integration tests as backends.
"""

from __future__ import annotations

from sidecar.demo.models import (
    INPUT_NAME,
    OUTPUT_NAME,
    InvalidInput,
    LogisticModel,
    ModelNotFound,
    ModelServerHandle,
    build_infer_request,
    make_demo_models,
    start_model_server,
)

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
