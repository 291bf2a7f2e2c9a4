"""The recorded-data contract: DuckDB tables written by the sink and read by analysis.

Forward-only migrations keyed by ``schema_version``; columns may grow, renames are migrations.
"""

from __future__ import annotations

import duckdb

__all__ = ["SCHEMA_VERSION", "TENSOR_TYPE", "migrate"]

SCHEMA_VERSION = 3

#: One decoded tensor (OIP input or output). Numbers go to ``data``, BYTES to ``text``.
TENSOR_TYPE = (
    "STRUCT(name VARCHAR, datatype VARCHAR, shape BIGINT[], data DOUBLE[], text VARCHAR[])"
)

_V1 = f"""
CREATE TABLE IF NOT EXISTS configs (
    config_version VARCHAR,      -- sha256 prefix of the canonical config
    ts TIMESTAMP,                -- UTC, when it was accepted
    config_json VARCHAR          -- canonical config (secrets removed)
);
CREATE TABLE IF NOT EXISTS requests (
    request_id VARCHAR,
    ts TIMESTAMP,                -- UTC, when the call arrived
    route VARCHAR,               -- the route's match pattern
    method VARCHAR,              -- full gRPC method, /pkg.Svc/Method
    unit_id VARCHAR,
    experiment VARCHAR,
    variant VARCHAR,
    exposed BOOLEAN,
    config_version VARCHAR,
    trace_id VARCHAR,
    span_id VARCHAR,
    status VARCHAR,              -- gRPC status code name returned to the caller
    latency_ms DOUBLE,           -- as seen by the sidecar, arrival to answer
    request_size INTEGER,
    request_bytes BLOB,          -- only when storage.record_bytes
    inputs {TENSOR_TYPE}[],      -- decoded inputs (codec oip), else NULL
    contract VARCHAR,            -- name@version of the route's data contract
    violations VARCHAR,          -- JSON [{{field, rule, detail}}] of the inputs, NULL if none
    imputed VARCHAR,             -- JSON [fields] filled from the contract's defaults
    request_json VARCHAR         -- decoded request (reflection/descriptor codecs)
);
CREATE TABLE IF NOT EXISTS calls (
    request_id VARCHAR,
    ts TIMESTAMP,                -- UTC, when the backend call started
    route VARCHAR,
    method VARCHAR,
    backend VARCHAR,
    backend_version VARCHAR,
    role VARCHAR,                -- primary|shadow|variant|stable|canary|fallback|replay
    served BOOLEAN,              -- this call's answer went to the caller
    status VARCHAR,              -- gRPC status code name, or DROPPED (mirror full)
    latency_ms DOUBLE,
    request_size INTEGER,
    response_size INTEGER,
    response_bytes BLOB,         -- only when storage.record_bytes
    error VARCHAR,               -- status details or the reason it was dropped
    outputs {TENSOR_TYPE}[],     -- decoded outputs (codec oip), else NULL
    output DOUBLE[],             -- the compared output tensor, flattened
    score DOUBLE,                -- scalar summary: the value, or output[score_index]
    label VARCHAR,               -- class: argmax index of a vector, or a BYTES value
    config_version VARCHAR,
    violations VARCHAR,          -- JSON [{{field, rule, detail}}] of the outputs, NULL if none
    response_json VARCHAR,       -- decoded response (reflection/descriptor codecs)
    response_hash VARCHAR,       -- BLAKE2b-64 of the answer's bytes: identical-answer rates
    messages INTEGER,            -- streaming calls: messages received (NULL for unary)
    first_message_ms DOUBLE      -- streaming calls: time to the first message
);
CREATE TABLE IF NOT EXISTS outcomes (
    event_id VARCHAR,
    unit_id VARCHAR,
    request_id VARCHAR,
    metric VARCHAR,
    value DOUBLE,
    ts TIMESTAMP,
    received_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS canary_state (
    ts TIMESTAMP,
    route VARCHAR,
    canary_key VARCHAR,          -- PAIR.STEPS.ALL hashes (canary/supervisor.py: what carries over)
    state VARCHAR,               -- running|paused|awaiting_approval|rolled_back|promoted|removed
    step_index INTEGER,
    step_started DOUBLE,         -- epoch seconds
    last_decision VARCHAR,       -- JSON
    config_version VARCHAR
);
CREATE TABLE IF NOT EXISTS audit (
    ts TIMESTAMP,
    actor VARCHAR,
    action VARCHAR,
    route VARCHAR,
    reason VARCHAR,
    config_version VARCHAR,
    detail VARCHAR               -- JSON
);
"""

# Version 2: a message over storage.max_payload_bytes is recorded as a summary, and the sink
# has a row of its own to check that it can write (its readiness probe).
_V2 = """
-- true: the request passed max_payload_bytes: inputs keep name, datatype and shape only,
-- request_bytes and request_json are NULL, request_size and request_hash describe it
ALTER TABLE requests ADD COLUMN IF NOT EXISTS truncated BOOLEAN DEFAULT false;
-- BLAKE2b-64 of the request's bytes, set when truncated
ALTER TABLE requests ADD COLUMN IF NOT EXISTS request_hash VARCHAR;
-- true: the answer passed max_payload_bytes: outputs keep name, datatype and shape only,
-- output, score, label, response_bytes and response_json are NULL (response_hash is set)
ALTER TABLE calls ADD COLUMN IF NOT EXISTS truncated BOOLEAN DEFAULT false;
-- one row, rewritten by the sink's probe while it cannot write
CREATE TABLE IF NOT EXISTS sink_health (id INTEGER PRIMARY KEY, ts TIMESTAMP)
"""

# Version 3 (issue 20.1): streams recorded message by message (docs/streams.md).
_V3 = """
CREATE TABLE IF NOT EXISTS stream_messages (
    request_id VARCHAR,
    ts TIMESTAMP,                -- UTC, when the message passed the sidecar
    route VARCHAR,
    method VARCHAR,
    backend VARCHAR,             -- the call's backend, NULL for the caller's messages
    role VARCHAR,                -- the call's role, or caller for the caller's own messages
    direction VARCHAR,           -- request (the caller's stream) or response (a backend's)
    idx INTEGER,                 -- 0-based position in its stream
    offset_ms DOUBLE,            -- since the call started
    size INTEGER,
    message_bytes BLOB,          -- only when storage.record_bytes
    message_json VARCHAR,        -- decoded alone (reflection/descriptor codecs)
    output DOUBLE[],             -- as calls.output, of this message
    score DOUBLE,
    label VARCHAR,
    key VARCHAR,                 -- the value of the route's stream_key field
    truncated BOOLEAN DEFAULT false  -- over max_payload_bytes: its size only
);
-- the caller's messages seen in a client or bidi stream (NULL otherwise)
ALTER TABLE requests ADD COLUMN IF NOT EXISTS messages INTEGER
"""

_MIGRATIONS: dict[int, str] = {1: _V1, 2: _V2, 3: _V3}


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring ``con`` forward to :data:`SCHEMA_VERSION`; return the version found before."""
    # Every execute() is read to its end: DuckDB 2 refuses new work on a connection
    # that still holds an unfinished result.
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)"
    ).fetchall()
    rows = con.execute("SELECT max(version) FROM schema_version").fetchall()
    found = int(rows[0][0]) if rows and rows[0][0] is not None else 0
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {found} is newer than this shadowcar ({SCHEMA_VERSION})"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        con.execute("BEGIN TRANSACTION").fetchall()
        for statement in _MIGRATIONS[version].split(";"):
            if statement.strip():
                con.execute(statement).fetchall()
        con.execute(
            "INSERT INTO schema_version VALUES (?, now()::TIMESTAMP)", [version]
        ).fetchall()
        con.execute("COMMIT").fetchall()
    return found
