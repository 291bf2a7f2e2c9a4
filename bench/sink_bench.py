"""How many rows a second the recorder sustains on its own, without the proxy in front.

Request and call records of the shapes the hot path builds (a raw route: nothing to
decode, the writer's bulk path; ``--codec oip``: real ModelInfer bytes decoded into tensors,
the slow path) are built first, then appended from one thread as fast as the sink takes
them; the writer thread turns them into Arrow batches and inserts them into a fresh DuckDB
file. Rows (both tables) per second of wall time, until the last one is on disk. By hand:
    .venv/bin/python bench/sink_bench.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from sidecar.config.models import StorageConfig
from sidecar.sink import CallRecord, DuckDBSink, RequestRecord
from sidecar.sink.records import Decoding


def _decoding(codec: str) -> Decoding:
    if codec == "raw":
        return Decoding(None, None, 0, False, plain=True)
    from sidecar.codecs import codec_for

    return Decoding(codec_for("oip"), None, 0, False)


def _payloads(codec: str) -> tuple[bytes, bytes]:
    if codec == "raw":
        return bytes(range(256)), bytes(range(256))
    from sidecar._proto import inference_pb2 as pb

    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    t.contents.fp32_contents.extend([0.1, 0.2, 0.3, 0.4])
    resp = pb.ModelInferResponse(model_name="m", model_version="1")
    o = resp.outputs.add(name="score", datatype="FP32", shape=[1, 1])
    o.contents.fp32_contents.append(0.7)
    return req.SerializeToString(), resp.SerializeToString()


def _records(pairs: int, codec: str) -> list[tuple[RequestRecord, CallRecord]]:
    dec = _decoding(codec)
    request, response = _payloads(codec)
    ts = time.time()
    return [
        (RequestRecord(f"{i:032x}", ts, "*", "/bench.Echo/Call", None, None, None, False, "v1",
                       None, None, "OK", 0.5, request, dec),
         CallRecord(f"{i:032x}", ts, "*", "/bench.Echo/Call", "primary", "1", "primary", True,
                    "OK", 0.4, len(request), response, None, "v1", dec))
        for i in range(pairs)
    ]


def run(rows: int, codec: str, batch_rows: int, db: Path) -> dict[str, float]:
    """Records are built first (the hot path's share, not timed); then they are appended
    as fast as the sink takes them and the clock runs until the last one is on disk."""
    settings = StorageConfig(path=str(db), flush_interval_ms=200, buffer_rows=rows,
                             batch_rows=batch_rows)
    records = _records(rows // 2, codec)
    sink = DuckDBSink(settings)
    sink.open()
    started = time.perf_counter()

    def produce() -> None:
        for request, call in records:
            sink.record_request(request)
            sink.record_call(call)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()
    appended = time.perf_counter() - started
    sink.close(timeout=600)
    elapsed = time.perf_counter() - started
    written = sum(sink.stats.written.values())
    dropped = sum(sink.stats.dropped.values())
    return {"rows": written, "dropped": dropped, "seconds": round(elapsed, 2),
            "append_seconds": round(appended, 2), "rows_per_s": round(written / elapsed),
            "flushes": sink.stats.flushes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="requests + calls rows")
    parser.add_argument("--codec", choices=("raw", "oip"), default="raw")
    parser.add_argument("--batch-rows", type=int, default=5000, help="storage.batch_rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sink-bench-") as tmp:
        result = run(args.rows, args.codec, args.batch_rows, Path(tmp) / "sink.duckdb")
    print(json.dumps({"codec": args.codec, "batch_rows": args.batch_rows, **result}))
    return 0 if result["dropped"] == 0 and result["rows"] == args.rows // 2 * 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
