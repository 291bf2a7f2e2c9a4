"""Configuration of TLS (listener, backends, admin) and of redaction before recording.

Certificate and key files are read once at load; an unreadable file is a config error
naming the field. Redaction hashes with HMAC-SHA256 under a key taken from the environment,
so the key never appears in the config, logs, errors or ``GET /v1/config``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["RedactConfig", "TlsClientConfig", "TlsServerConfig"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsServerConfig(_Model):
    cert: str = Field(description="PEM certificate chain file")
    key: str = Field(description="PEM private key file")
    client_ca: str | None = Field(
        None, description="PEM CA file; when set, clients must present a certificate (mTLS)"
    )


class TlsClientConfig(_Model):
    ca: str | None = Field(None, description="PEM CA that signed the backend (default: system)")
    cert: str | None = Field(None, description="client certificate for mTLS")
    key: str | None = Field(None, description="client key for mTLS")
    server_name: str | None = Field(None, description="expected name in the backend's cert")


class RedactConfig(_Model):
    inputs: tuple[str, ...] = Field((), description="OIP input tensors redacted by name")
    fields: tuple[str, ...] = Field((), description="JSON field paths redacted (decoded JSON)")
    unit: bool = Field(False, description="also redact the recorded unit id")
    mode: Literal["hash", "drop"] = Field("hash", description="keyed hash, or drop the value")
    key_env: str = Field(
        "SHADOWCAR_REDACTION_KEY", description="environment variable holding the HMAC key"
    )

    @field_validator("key_env")
    @classmethod
    def _env(cls, value: str) -> str:
        if not re.match(r"^[A-Z_][A-Z0-9_]{0,127}$", value):
            raise ValueError("must be an environment variable name")
        return value
