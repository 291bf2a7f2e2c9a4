"""Legal-size messages and DuckDB failures never cost other records (issue 14.3).

Real DuckDB files throughout; a fatal DuckDB state is provoked the way it happens in
production: rows too big for the memory limit make DuckDB's autocheckpoint fail after a
durable COMMIT, which invalidates the database instance.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import time
from pathlib import Path

import duckdb
import grpc
import numpy as np

from sidecar._proto import inference_pb2 as pb
from sidecar.codecs import codec_for
from sidecar.config import StorageConfig
from sidecar.sink import CallRecord, Decoding, DuckDBSink, OutcomeRecord, RequestRecord

MB = 1024 * 1024
OIP = Decoding(codec_for("oip"), None, -1, False)
OIP_BYTES = Decoding(codec_for("oip"), None, -1, True)
METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _request(floats: int, seed: int = 0) -> bytes:
    """A ModelInferRequest with one FP32 input of ``floats`` values (typed contents)."""
    req = pb.ModelInferRequest(model_name="m")
    values = np.random.default_rng(seed).random(floats, dtype=np.float32)
    req.inputs.add(name="x", datatype="FP32", shape=[1, floats]).contents.fp32_contents.extend(
        values.tolist())
    return req.SerializeToString()


def _raw_request(megabytes: float, seed: int = 0) -> bytes:
    """A ModelInferRequest of about ``megabytes`` MB: one FP32 input in raw contents."""
    n = int(megabytes * MB) // 4
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="FP32", shape=[n])
    req.raw_input_contents.append(
        np.random.default_rng(seed).random(n, dtype=np.float32).tobytes())
    return req.SerializeToString()


def _raw_response(megabytes: float) -> bytes:
    """A ModelInferResponse of about ``megabytes`` MB: one FP32 output in raw contents."""
    n = int(megabytes * MB) // 4
    resp = pb.ModelInferResponse(model_name="m")
    resp.outputs.add(name="y", datatype="FP32", shape=[n])
    resp.raw_output_contents.append(np.zeros(n, dtype="<f4").tobytes())
    return resp.SerializeToString()


def _response(floats: int) -> bytes:
    resp = pb.ModelInferResponse(model_name="m")
    out = resp.outputs.add(name="y", datatype="FP32", shape=[floats])
    out.contents.fp32_contents.extend([0.25] * floats)
    return resp.SerializeToString()


def _req_row(rid: str, body: bytes, dec: Decoding = OIP) -> RequestRecord:
    return RequestRecord(rid, time.time(), "*", METHOD, None, None, None, False, "v1", None,
                         None, "OK", 1.0, body, dec)


def _call_row(rid: str, body: bytes, dec: Decoding = OIP) -> CallRecord:
    return CallRecord(rid, time.time(), "*", METHOD, "p", "1", "primary", True, "OK", 1.0,
                      len(body), body, None, "v1", dec)


async def _settled(sink: DuckDBSink, timeout: float = 60) -> None:
    """Until everything accepted is written or dropped and the sink can write again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(sink.wait_flushed, 5) and sink.writable:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"sink did not settle: {sink.stats.as_dict()}")


def _count(paths: list[str], table: str) -> int:
    total = 0
    for path in paths:
        con = duckdb.connect(path, read_only=True)
        total += con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        con.close()
    return total


async def test_four_big_messages_cost_none_of_200_small_ones(tmp_path) -> None:
    """Issue 14.3: four OIP requests of 12-16 MB (under max_message_bytes) beside 200 small
    ones, with the default memory limit and raw bytes kept: every row is written, the big
    ones as summaries (shape, dtype, size, digest, truncated), and counters equal the file."""
    db = tmp_path / "big.duckdb"
    sink = DuckDBSink(StorageConfig(path=str(db), flush_interval_ms=60_000,
                                    batch_rows=1_000_000, record_bytes=True))
    sink.open()
    sizes = dict(enumerate((12, 13, 14, 15.9)))
    big = {f"big-{i}": _raw_request(mb, seed=i) for i, mb in sizes.items()}
    small = _request(4)
    for i in range(200):
        sink.record_request(_req_row(f"small-{i}", small, OIP_BYTES))
        sink.record_call(_call_row(f"small-{i}", _response(3), OIP_BYTES))
        if i % 50 == 49:
            rid = f"big-{i // 50}"
            sink.record_request(_req_row(rid, big[rid], OIP_BYTES))
            sink.record_call(_call_row(rid, _raw_response(sizes[i // 50]), OIP_BYTES))
    await sink.aclose()  # one flush: the big rows share a batch with the small ones

    assert sink.stats.written["requests"] == 204
    assert sink.stats.written["calls"] == 204
    assert sum(sink.stats.dropped.values()) == 0
    assert sink.stats.lost_at_close == 0
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM requests").fetchone() == (204,)
    assert con.execute("SELECT count(*) FROM calls").fetchone() == (204,)
    rows = con.execute(
        "SELECT request_id, truncated, request_size, request_hash, request_bytes IS NULL, "
        "inputs[1].name, inputs[1].datatype, inputs[1].shape, inputs[1].data IS NULL "
        "FROM requests WHERE request_id LIKE 'big-%' ORDER BY request_id").fetchall()
    assert len(rows) == 4
    for rid, truncated, size, digest, no_bytes, name, dtype, shape, no_data in rows:
        body = big[rid]
        assert truncated is True and no_bytes and no_data
        assert size == len(body)
        assert digest == hashlib.blake2b(body, digest_size=8).hexdigest()
        assert (name, dtype, shape) == ("x", "FP32", [int(sizes[int(rid[4:])] * MB) // 4])
    # The small ones are recorded in full: values and raw bytes.
    kept = con.execute(
        "SELECT count(*) FROM requests WHERE request_id LIKE 'small-%' AND NOT truncated "
        "AND len(inputs[1].data) = 4 AND request_bytes IS NOT NULL").fetchone()
    assert kept == (200,)
    calls = con.execute(
        "SELECT count(*) FILTER (WHERE truncated AND outputs IS NOT NULL AND "
        "response_bytes IS NULL AND response_hash IS NOT NULL), "
        "count(*) FILTER (WHERE NOT truncated AND score = 0.25 AND response_bytes IS NOT NULL) "
        "FROM calls").fetchone()
    assert calls == (4, 200)
    con.close()


async def test_a_refused_row_is_dropped_alone_and_counted(tmp_path) -> None:
    """Issue 14.3: a batch DuckDB refuses is split until only the row it refuses alone is
    left; that one is dropped with its reason, the 100 beside it are written."""
    db = tmp_path / "bisect.duckdb"
    # The cap is lifted on purpose: one record decodes to ~48 MB, past DuckDB's 16 MB.
    sink = DuckDBSink(StorageConfig(path=str(db), flush_interval_ms=60_000,
                                    batch_rows=1_000_000, duckdb_memory_limit="16MB",
                                    max_payload_bytes=1024**3))
    sink.open()
    small = _request(4)
    for i in range(100):
        sink.record_request(_req_row(f"small-{i}", small))
        if i == 37:
            sink.record_request(_req_row("huge", _raw_request(24)))
    await sink.aclose()
    assert sink.stats.written["requests"] == 100
    assert sink.stats.dropped["requests"] == 1
    assert sink.stats.as_dict()["dropped_by_reason"]["rejected"] == 1
    assert sink.stats.lost_at_close == 1  # the final flush lost it: serve exits 3
    con = duckdb.connect(str(db), read_only=True)
    ids = {r[0] for r in con.execute("SELECT request_id FROM requests").fetchall()}
    con.close()
    assert ids == {f"small-{i}" for i in range(100)}


async def test_a_row_that_cannot_be_built_is_dropped_alone(tmp_path) -> None:
    """Issue 14.3 (sibling): a record the writer cannot turn into Arrow columns costs only
    itself, not the batch it came in."""
    db = tmp_path / "build.duckdb"
    sink = DuckDBSink(StorageConfig(path=str(db), flush_interval_ms=60_000,
                                    batch_rows=1_000_000))
    sink.open()
    for i in range(50):
        sink.record_call(_call_row(f"c-{i}", _response(2)))
    sink.record_call(_call_row("bad", _response(2))._replace(latency_ms="slow"))
    await sink.aclose()
    assert (sink.stats.written["calls"], sink.stats.dropped["calls"]) == (50, 1)
    assert _count([str(db)], "calls") == 50


async def test_a_compared_output_missing_from_one_answer_costs_only_that_row(tmp_path) -> None:
    """Issue 14.3 (sibling): an answer without the route's compare_output is recorded with
    the error; it used to fail the whole calls batch."""
    db = tmp_path / "compare.duckdb"
    sink = DuckDBSink(StorageConfig(path=str(db), flush_interval_ms=60_000,
                                    batch_rows=1_000_000))
    sink.open()
    dec = Decoding(codec_for("oip"), "y", -1, False)
    other = pb.ModelInferResponse(model_name="m")
    other.outputs.add(name="z", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    for i in range(20):
        sink.record_call(_call_row(f"c-{i}", _response(2), dec))
    sink.record_call(_call_row("other", other.SerializeToString(), dec))
    await sink.aclose()
    assert sink.stats.written["calls"] == 21
    con = duckdb.connect(str(db), read_only=True)
    error = con.execute("SELECT error FROM calls WHERE request_id = 'other'").fetchone()
    con.close()
    assert error is not None and "'y' not in the response" in error[0]


async def test_a_fatal_duckdb_error_is_recovered_and_counters_match_the_files(
        tmp_path) -> None:
    """Issue 14.3: rows too big for the memory limit make DuckDB's autocheckpoint fail after
    a durable COMMIT ("FATAL ... database has been invalidated"). The sink recovers with a
    fresh connection (a new segment when the file cannot be reopened), records again, says
    so in its counters, and its written counters equal the rows in the files."""
    db = tmp_path / "fatal.duckdb"
    sink = DuckDBSink(StorageConfig(path=str(db), flush_interval_ms=20,
                                    duckdb_memory_limit="16MB", max_payload_bytes=1024**3,
                                    probe_interval_ms=100))
    sink.open()
    big = _raw_request(2)
    for i in range(16):  # the WAL passes the checkpoint threshold after a few of these
        sink.record_request(_req_row(f"big-{i}", big))
        sink.record_request(_req_row(f"small-{i}", _request(4)))
        await _settled(sink)
    # Recording goes on: 50 more small rows are written, and the sink says it is writable.
    for j in range(50):
        sink.record_request(_req_row(f"after-{j}", _request(4)))
    await _settled(sink)
    assert sink.writable and sink.problem is None
    assert sink.stats.recoveries >= 1, sink.stats.as_dict()
    await sink.aclose()
    files = sorted(glob.glob(str(tmp_path / "fatal*.duckdb")))
    assert files[0] == str(db)
    assert len(files) == 1 + sink.stats.segments
    written = sink.stats.written["requests"]
    assert written == _count(files, "requests")
    assert written + sink.stats.dropped["requests"] == sink.stats.accepted["requests"]
    con = duckdb.connect(sink.path, read_only=True)
    after = con.execute("SELECT count(*) FROM requests WHERE request_id LIKE 'after-%'")
    assert after.fetchone() == (50,)
    con.close()
    assert Path(sink.path).exists()


class _BigEcho(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A model that answers each request with its own bytes (OIP fields 5 = tensors)."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return request

        return grpc.unary_unary_rpc_method_handler(echo)


async def test_big_messages_through_a_sidecar_cost_no_small_request(
        start_sidecar, tmp_path) -> None:
    """Issue 14.3, as a caller sees it: four 12-16 MB OIP calls among 200 small ones on a
    sidecar with default storage settings (raw bytes kept); every call is answered and every
    request recorded, the big ones as truncated summaries; /readyz stays ready."""
    limit = 16 * MB
    options = [("grpc.max_receive_message_length", limit),
               ("grpc.max_send_message_length", limit)]
    model = grpc.aio.server(options=options)
    model.add_generic_rpc_handlers([_BigEcho()])
    port = model.add_insecure_port("127.0.0.1:0")
    await model.start()
    db = tmp_path / "e2e.duckdb"
    try:
        sc = await start_sidecar(
            {"m": f"127.0.0.1:{port}"},
            [{"match": METHOD, "primary": "m", "codec": "oip"}],
            db_path=db, storage={"path": str(db), "record_bytes": True},
        )
        big = [_request(n) for n in (3_200_000, 3_500_000, 3_800_000, 4_100_000)]
        assert all(12 * MB <= len(b) < limit for b in big)
        small = _request(4)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}", options=options) as ch:
            stub = ch.unary_unary(METHOD)
            calls = [stub(small, metadata=(("x-request-id", f"small-{i}"),), timeout=60)
                     for i in range(200)]
            calls[50:50] = [stub(b, metadata=(("x-request-id", f"big-{i}"),), timeout=60)
                            for i, b in enumerate(big)]
            answers = await asyncio.gather(*calls)
        assert len(answers) == 204
        assert sorted(map(len, answers))[-4:] == sorted(map(len, big))
        assert await asyncio.to_thread(sc.sink.wait_flushed, 60)
        writable = sc.sink.writable  # /readyz's view of the sink
        await sc.aclose()
        con = duckdb.connect(str(db), read_only=True)
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (204,)
        rows = dict(con.execute(
            "SELECT request_id, truncated FROM requests").fetchall())
        calls_truncated = con.execute(
            "SELECT count(*) FROM calls WHERE truncated AND request_id LIKE 'big-%'").fetchone()
        con.close()
        assert len(rows) == 204
        assert sorted(r for r, t in rows.items() if t) == [f"big-{i}" for i in range(4)]
        assert calls_truncated == (4,)
        assert sc.sink.stats.written["requests"] == 204
        assert writable
    finally:
        await model.stop(None)


async def test_written_counts_what_the_file_holds_with_duplicate_outcomes(tmp_path) -> None:
    """Issue 14.3 (counters equal the file): outcome events already stored are skipped by
    the insert; they are counted as duplicates, not as written rows nor as losses."""
    db = tmp_path / "outcomes.duckdb"
    sink = DuckDBSink(StorageConfig(path=str(db), flush_interval_ms=20))
    sink.open()

    def outcome(i: int) -> OutcomeRecord:
        return OutcomeRecord(f"e-{i}", f"u-{i}", None, "converted", 1.0, 1.0, 2.0)

    for i in range(10):
        sink.record_outcome(outcome(i))
    assert await asyncio.to_thread(sink.wait_flushed, 30)
    for i in range(15):  # ten again (a client retry after a restart), five new
        sink.record_outcome(outcome(i))
    assert await asyncio.to_thread(sink.wait_flushed, 30)
    await sink.aclose()
    assert sink.stats.written["outcomes"] == _count([str(db)], "outcomes") == 15
    assert sink.stats.duplicates["outcomes"] == 10
    assert sink.stats.lost_at_close == 0
