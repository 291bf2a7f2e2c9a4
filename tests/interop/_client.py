"""Call an Open Inference Protocol server with the Triton gRPC client; print JSON results.

Run with ``.venv-interop/bin/python tests/interop/_client.py TARGET MODEL SAMPLES.json
[PREFIX]`` (the Triton client lives in the interop virtualenv only). Each row of SAMPLES is
one ModelInfer call asking for ``predict_proba``, its x-request-id ``PREFIX-<row>``. Prints
one JSON object: live, ready, model_ready, metadata, per-row probabilities and each answer's
bytes (the ModelInferResponse as the client received it, base64).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

OUTPUT = "predict_proba"


def run(target: str, model: str, samples: list[list[float]], prefix: str) -> dict[str, Any]:
    client = grpcclient.InferenceServerClient(url=target)
    try:
        metadata = client.get_model_metadata(model, as_json=True)
        result: dict[str, Any] = {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
            "missing_model_ready": _missing_model_ready(client),
            "metadata": {k: metadata.get(k) for k in ("name", "versions", "platform")},
            "probabilities": [],
            "responses": [],
        }
        for index, row in enumerate(samples):
            features = grpcclient.InferInput("input-0", [1, len(row)], "FP64")
            features.set_data_from_numpy(np.asarray([row], dtype=np.float64))
            answer = client.infer(
                model,
                [features],
                outputs=[grpcclient.InferRequestedOutput(OUTPUT)],
                request_id=f"row-{index}",
                headers={"x-request-id": f"{prefix}-{index}"},
                client_timeout=10,
            )
            probabilities = answer.as_numpy(OUTPUT)
            result["probabilities"].append(np.asarray(probabilities).reshape(-1).tolist())
            raw = answer.get_response().SerializeToString(deterministic=True)
            result["responses"].append(base64.b64encode(raw).decode())
        return result
    finally:
        client.close()


def _missing_model_ready(client: grpcclient.InferenceServerClient) -> str:
    """The error (status code) a server gives for a model it does not have, or 'ok'."""
    try:
        return "ok" if client.is_model_ready("no-such-model") else "not ready"
    except grpcclient.InferenceServerException as exc:
        return str(exc.status())


if __name__ == "__main__":
    target, model, samples_path = sys.argv[1:4]
    prefix = sys.argv[4] if len(sys.argv) > 4 else "row"
    rows = json.loads(Path(samples_path).read_text())
    print(json.dumps(run(target, model, rows, prefix)))
