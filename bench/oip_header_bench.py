"""Time reading and rewriting the model name of a ModelInferRequest (issue 17), per call.

The hot path reads the name when a method has per-model routes and rewrites it for every
backend whose ``model`` differs from the caller's. Both walk the top-level fields only;
this measures them on requests of about 1 KB and 1 MB (one FP32 input in
``raw_input_contents``, as tritonclient sends it), against protobuf's full parse. By hand:
    .venv/bin/python bench/oip_header_bench.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar._proto import inference_pb2
from sidecar.codecs.oip_header import ModelRewrite, read_model, rewrite_model


def request(size: int) -> bytes:
    """A ModelInferRequest of about ``size`` bytes: one FP32 input, raw contents."""
    msg = inference_pb2.ModelInferRequest(model_name="fraud-lr", model_version="1", id="r-1")
    msg.inputs.add(name="input-0", datatype="FP32", shape=[1, size // 4])
    msg.raw_input_contents.append(bytes(size // 4 * 4))
    return msg.SerializeToString()


def ns_per_call(fn: Callable[[], object], budget_s: float = 0.5) -> float:
    """The best of five timed loops, each about ``budget_s / 5`` long."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    number = max(1, int(number * budget_s / 5 / 0.2))
    return min(timer.repeat(5, number)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    args = parser.parse_args()
    rows = []
    gbm = ModelRewrite("fraud-gbm")
    same = ModelRewrite("fraud-lr")
    for label, size in (("1 KB", 1024), ("1 MB", 1024 * 1024)):
        data = request(size)
        rows.append({
            "request": label, "bytes": len(data),
            "read_model": ns_per_call(lambda d=data: read_model(d)),
            "rewrite (other name)": ns_per_call(lambda d=data: gbm.apply(d)),
            "rewrite (same name)": ns_per_call(lambda d=data: same.apply(d)),
            "rewrite_model": ns_per_call(lambda d=data: rewrite_model(d, "fraud-gbm", "")),
            "protobuf parse": ns_per_call(
                lambda d=data: inference_pb2.ModelInferRequest.FromString(d)),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    keys = [k for k in rows[0] if k not in ("request", "bytes")]
    print("| request | " + " | ".join(f"{k} ns" for k in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for row in rows:
        print(f"| {row['request']} ({row['bytes']} B) | "
              + " | ".join(f"{row[k]:,.0f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
