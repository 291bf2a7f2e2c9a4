"""Fallbacks: what a route answers when its serving backend fails.

``{backend: NAME}`` calls another backend inside what is left of the caller's deadline;
``{static: FILE}`` answers a fixed response, written as JSON for the route's message type
(an OIP ``ModelInferResponse`` for ``codec: oip``; ``{"base64": "..."}`` raw bytes for
``codec: raw``), encoded once at load and rejected at load when invalid.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["FALLBACK_CODES", "FallbackConfig", "load_static_fallback"]

#: Status codes that mean "the backend failed", the only ones a fallback may cover.
FALLBACK_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED", "INTERNAL",
     "UNKNOWN", "ABORTED"}
)
StatusName = Literal[
    "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED", "INTERNAL",
    "UNKNOWN", "ABORTED",
]


class FallbackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str | None = Field(None, description="backend that answers instead")
    static: str | None = Field(None, description="file with a fixed response (JSON)")
    timeout_ms: int = Field(
        200, gt=0, le=600_000, description="the fallback backend's deadline, kept in reserve"
    )
    codes: tuple[StatusName, ...] = Field(
        # CANCELLED here is the backend's doing (a caller that cancels is gone before
        # any fallback could run).
        ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"),
        description="serving statuses that trigger it (caller errors never do)",
    )

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.backend is None) == (self.static is None):
            raise ValueError("give exactly one of backend or static")
        return self


def load_static_fallback(path: Path, codec: str) -> bytes:
    """Encode a static fallback file once; ValueError says what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from exc
    if codec == "oip":
        from google.protobuf import json_format

        from sidecar._proto import inference_pb2

        try:
            msg = json_format.ParseDict(data, inference_pb2.ModelInferResponse())
        except json_format.ParseError as exc:
            raise ValueError(f"{path} is not a ModelInferResponse: {exc}") from exc
        return msg.SerializeToString(deterministic=True)
    if not isinstance(data, dict) or set(data) != {"base64"}:
        raise ValueError(f'{path}: a raw route\'s fallback is {{"base64": "..."}}')
    try:
        return base64.b64decode(data["base64"], validate=True)
    except (binascii.Error, TypeError) as exc:
        raise ValueError(f"{path}: base64: {exc}") from exc
