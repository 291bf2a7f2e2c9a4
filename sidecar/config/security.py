"""Configuration of TLS (listener, backends, admin) and of redaction before recording.

Certificate and key files are read once at load; an unreadable file is a config error
naming the field. Redaction hashes with HMAC-SHA256 under a key taken from the environment,
so the key never appears in the config, logs, errors or ``GET /v1/config``.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["RedactConfig", "TlsClientConfig", "TlsServerConfig", "check_url", "mask_url"]

_MASK = "***"


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
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]{0,127}", value):
            raise ValueError("must be an environment variable name")
        return value


def check_url(value: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """``value`` when it is an absolute URL with one of ``schemes`` and a host.

    The message never quotes the URL: it may carry credentials.
    """
    if any(ord(c) < 33 or ord(c) == 127 for c in value):
        raise ValueError("must be a URL without spaces or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise ValueError(f"must be a {' or '.join(schemes)} URL with a host")
    return value


def mask_url(url: str) -> str:
    """``url`` safe to show, log or store: scheme, host and port only; credentials, path,
    query and fragment (where webhook secrets live: user:pass@, /services/T0/B0/XXXX,
    ?token=) become ``***``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return _MASK
    if not parts.scheme or not host:
        return _MASK
    if ":" in host:
        host = f"[{host}]"
    user = f"{_MASK}@" if "@" in parts.netloc else ""
    path = f"/{_MASK}" if parts.path.strip("/") else parts.path
    query = f"?{_MASK}" if parts.query else ""
    fragment = f"#{_MASK}" if parts.fragment else ""
    return f"{parts.scheme}://{user}{host}{port}{path}{query}{fragment}"
