"""Recorded DuckDB files for the export tests, filled through the real sink and codecs.

Imported by the test modules here (not a conftest: test folders are not packages)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from sidecar._proto import inference_pb2 as pb
from sidecar.codecs import codec_for
from sidecar.config import StorageConfig
from sidecar.demo import build_infer_request, make_demo_models
from sidecar.sink import AuditRecord, CallRecord, Decoding, DuckDBSink, RequestRecord

ROUTE = "/inference.GRPCInferenceService/ModelInfer"
DAY = 86_400.0



def _config_json() -> str:
    return json.dumps({"routes": [{"match": ROUTE, "primary": "p", "codec": "oip",
                                   "shadows": [{"backend": "s", "replica": False}]}]})


def fill_db(path: Path, prefix: str, n: int, *, seed: int = 0, start: float | None = None,
            spread_days: int = 2) -> Path:
    """Record ``n`` primary/shadow pairs (ids ``PREFIX-i``) over ``spread_days`` dates."""
    primary, shadow = make_demo_models()
    rng = np.random.default_rng(seed)
    decoding = Decoding(codec_for("oip"), None, -1, True)
    sink = DuckDBSink(StorageConfig(path=str(path), flush_interval_ms=20))
    sink.open()
    base = start if start is not None else time.time() - DAY * spread_days
    sink.record_config("cfg1", _config_json())
    for i in range(n):
        rid = f"{prefix}-{i}"
        ts = base + (i % spread_days) * DAY + i * 0.001
        features = rng.standard_normal(8)
        req = build_infer_request("demo", features)
        parsed = pb.ModelInferRequest.FromString(req)
        sink.record_request(RequestRecord(rid, ts, ROUTE, ROUTE, None, None, None, False, "cfg1",
                                          None, None, "OK", 1.0, req, decoding))
        for role, model, name in (("primary", primary, "p"), ("shadow", shadow, "s")):
            resp = model.infer(parsed).SerializeToString()
            sink.record_call(CallRecord(rid, ts, ROUTE, ROUTE, name, f"{name}-v1", role,
                                        role == "primary", "OK", 1.0 + i % 7, len(req), resp,
                                        None, "cfg1", decoding))
    sink.record_audit(AuditRecord(base, "test", "fill", ROUTE, prefix, "cfg1", None))
    sink.close()
    return path

