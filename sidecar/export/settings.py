"""Settings of the fleet Parquet export (mounted as ``storage.export`` in the config).

A replica's name defaults to its host plus a short hash of its DuckDB path, so a restart of
the same replica keeps writing under the same name.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ExportConfig", "default_replica"]

_REPLICA = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]{0,62}\Z")
_UNSAFE = re.compile(r"[^A-Za-z0-9._]+")
#: Hex digits of the DuckDB path's hash in a default replica name.
_PATH_HASH_DIGITS = 8
_HOST_CHARS = 40


class ExportConfig(BaseModel):
    """Where and how often recorded rows are exported as hive-partitioned Parquet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: str | None = Field(
        None, description="directory of the Parquet tree (shared by replicas); null disables"
    )
    every_s: float = Field(
        300.0, gt=0, le=86_400, description="seconds between two exports of new rows"
    )
    replica: str | None = Field(
        None,
        description="this replica's name in file names (default: host + hash of storage.path)",
    )
    include_bytes: bool = Field(
        False, description="also export raw request_bytes and response_bytes columns"
    )
    segment_rows: int = Field(
        500_000, ge=1, le=50_000_000, description="most rows of one table in one segment file"
    )

    @field_validator("replica")
    @classmethod
    def _replica(cls, value: str | None) -> str | None:
        if value is not None and not _REPLICA.match(value):
            raise ValueError(
                "must be 1-63 letters, digits, '.' or '_' (no '-': it separates the segment)"
            )
        return value


def default_replica(db_path: str) -> str:
    """``HOST_HASH``: the host name plus a short hash of the absolute DuckDB path.

    The same replica restarted on the same host with the same file keeps its name; two
    sidecars on one host writing different files get different names.
    """
    host = _UNSAFE.sub("_", socket.gethostname()).strip("._")[:_HOST_CHARS] or "host"
    digest = hashlib.sha256(os.path.abspath(db_path).encode()).hexdigest()
    return f"{host}_{digest[:_PATH_HASH_DIGITS]}"
