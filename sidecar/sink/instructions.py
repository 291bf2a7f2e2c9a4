"""Recording instructions: how a route's records are decoded, redacted and kept.

Built here, by the sink's own code, once per config version; the routing table only holds
the result (a frozen :class:`Decoding`) and hands it to every record of the route.
"""

from __future__ import annotations

from typing import Any

from sidecar.codecs import codec_for
from sidecar.config import Config, RouteConfig
from sidecar.sink.records import Decoding
from sidecar.sink.redaction import Redactor

__all__ = ["decoding_for"]


def decoding_for(
    route: RouteConfig,
    config: Config,
    *,
    codecs: dict[str, Any] | None = None,
    redaction_keys: dict[str, bytes] | None = None,
    contracts: dict[str, Any] | None = None,
) -> Decoding:
    """The recording instructions of one route under ``config``."""
    return Decoding(
        codec=_codec(route, codecs),
        compare_fields=route.compare_fields,
        compare_output=route.compare_output,
        score_index=route.score_index,
        # A redacted route never keeps raw bytes: they would hold the secret.
        record_bytes=config.storage.record_bytes and route.redact is None,
        redactor=_redactor(route, redaction_keys),
        contract=(contracts or {}).get(route.match),
        plain=(route.codec == "raw" and route.redact is None
               and route.contract is None and not config.storage.record_bytes),
    )


def _codec(route: RouteConfig, built: dict[str, Any] | None) -> Any:
    """raw: nothing to decode (the writer skips the work); oip: the tensor codec;
    descriptor/reflection: the JSON codec built at load or start (None if it failed)."""
    if route.codec == "raw":
        return None
    if route.codec == "oip":
        return codec_for("oip")
    return (built or {}).get(route.match)


def _redactor(route: RouteConfig, keys: dict[str, bytes] | None) -> Redactor | None:
    red = route.redact
    if red is None:
        return None
    return Redactor(
        inputs=frozenset(red.inputs), fields=red.fields, unit=red.unit, mode=red.mode,
        key=(keys or {}).get(route.match),
    )
